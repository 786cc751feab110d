//! `cocoon policy import-rim` as an operator runs it: a verified RIM's golden values land in
//! cocoon.toml (comments kept) and the configuration then loads them; a RIM with a broken
//! signature changes nothing. Needs xmlsec1 (scripts/test installs it); skips saying so without.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn rim(p: &str) -> String {
    format!("{}/../attestation/testdata/nvidia/rim/{p}", env!("CARGO_MANIFEST_DIR"))
}

fn have_xmlsec1() -> bool {
    let ok = Command::new("xmlsec1").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: xmlsec1 is not installed (apt-get install xmlsec1)");
    }
    ok
}

#[test]
fn import_rim_writes_golden_values_and_refuses_a_broken_signature() {
    if !have_xmlsec1() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cocoon.toml");
    std::fs::write(&cfg, "# operator's comment\n[attestation.policy.gpu]\nrequire = true\n").unwrap();
    let run = |rim_file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .args(["policy", "import-rim", "--rim"])
            .arg(rim_file)
            .arg("--rim-root")
            .arg(rim("test-rim-root.pem"))
            .arg("--write")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run(Path::new(&rim("test-rim.swidtag")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.starts_with("# operator's comment\n"), "{text}");
    let loaded = cocoon::config::Config::load_for(Some(&cfg), Vec::<(String, String)>::new(), cocoon::config::Role::Tool).unwrap();
    let gpu = &loaded.attestation.policy.gpu;
    assert!(gpu.require);
    assert_eq!(gpu.measurements.len(), 64);
    assert!(gpu.measurements[1].source.as_deref().unwrap().contains("RIM 96.00.9f.00.01"));

    // One value changed after signing: refused, the file untouched.
    let xml = std::fs::read_to_string(rim("test-rim.swidtag")).unwrap();
    let bad = dir.path().join("bad.swidtag");
    std::fs::write(&bad, xml.replacen("8048dfd18fe229bf", "8048dfd18fe229be", 1)).unwrap();
    let out = run(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("MUST-FAIL {stderr}");
    assert!(!out.status.success());
    assert!(stderr.contains("RIM signature does not verify"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    // No xmlsec1 on PATH: the command says so.
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(["policy", "import-rim", "--rim", &rim("test-rim.swidtag")])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("MUST-FAIL {stderr}");
    assert!(!out.status.success() && stderr.contains("apt-get install xmlsec1"), "{stderr}");
}
