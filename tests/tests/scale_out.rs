//! Several hosts on one machine (issue #17): `scripts/scale-out --smoke` with this build's
//! debug binaries. Three gateway replicas, Postgres, Redis, three workers and a client, each in
//! its own network namespace on a private subnet that the script creates and removes; where
//! namespaces cannot be made (no root, no CAP_NET_ADMIN) the script says so and runs the same
//! topology on loopback ports, so this test passes either way and says which one ran.
//!
//! The script's namespaces are named after its pid (`cso<pid>-…`) and each run has its own
//! bridge in its own hub namespace, so runs in parallel (other tests, other checkouts) never
//! meet; its Postgres and Redis are its own, and in the loopback fallback their ports are
//! picked free.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

/// `cocoon-bench`, next to the `cocoon` binary (the workspace build makes both).
fn bench_bin(cocoon: &std::path::Path) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("COCOON_BENCH_BIN") {
        return p.into();
    }
    let bin = cocoon.with_file_name("cocoon-bench");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cocoon-bench` or set COCOON_BENCH_BIN",
        bin.display()
    );
    bin
}

/// One `scripts/scale-out --smoke` run.
struct Run {
    status: std::process::ExitStatus,
    stderr: String,
    /// The results JSON (`--json`).
    v: serde_json::Value,
    /// The script's pid: it names the run's namespaces (`cso<pid>-…`).
    pid: u32,
    secs: f64,
}

/// Runs `scripts/scale-out --smoke` with `args`, and `path` first on PATH if given.
fn smoke(dir: &std::path::Path, args: &[&str], path: Option<&std::path::Path>) -> Run {
    let json_path = dir.join("scale-out.json");
    let cocoon = common::cocoon_bin();
    let mut cmd = Command::new(common::repo_root().join("scripts/scale-out"));
    cmd.arg("--smoke").arg("--json").arg(&json_path).args(args);
    cmd.env("COCOON_BIN", &cocoon)
        .env("COCOON_BENCH_BIN", bench_bin(&cocoon));
    if let Some(p) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(p.to_path_buf()).chain(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(paths).unwrap());
    }
    let t0 = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // scripts/scale-out execs the Python harness, so this is the harness's pid.
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&json_path).unwrap_or_else(|e| {
        panic!(
            "no results JSON ({e}); exit {:?}; stderr:\n{stderr}",
            out.status.code()
        )
    });
    Run {
        status: out.status,
        stderr,
        v: serde_json::from_str(&text).unwrap(),
        pid,
        secs,
    }
}

/// Each pass (one per number of accounts) measured 1, 2 and 3 replicas closed-loop and at one
/// fixed offered rate; every row answered and charged everything, round-robin over its replicas.
fn assert_passes(v: &serde_json::Value, accounts: &[u64]) {
    let passes = v["passes"].as_array().unwrap();
    let got: Vec<u64> = passes
        .iter()
        .map(|p| p["accounts"].as_u64().unwrap())
        .collect();
    assert_eq!(got, accounts, "{v}");
    for pass in passes {
        let rows = |k: &str| pass[k].as_array().cloned().unwrap_or_default();
        for kind in ["closed", "open"] {
            let ks: Vec<u64> = rows(kind)
                .iter()
                .map(|r| r["replicas"].as_u64().unwrap())
                .collect();
            assert_eq!(ks, vec![1, 2, 3], "{kind}: {pass}");
        }
        let rate = pass["fixed_rate"].as_f64().unwrap();
        for r in rows("open") {
            assert_eq!(
                r["load"]["offered_rps"].as_f64(),
                Some(rate),
                "one fixed rate for every replica count: {r}"
            );
        }
        for r in rows("closed").iter().chain(rows("open").iter()) {
            let load = &r["load"];
            assert!(
                load["ok"].as_u64().unwrap() > 0 && load["ok"] == load["sent"],
                "{r}"
            );
            assert!(load["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r}");
            // Round-robin: every replica in the balancer got its turn, none outside it
            // (within a request or two: the window is cut by due time, the turn taken at send).
            let k = r["replicas"].as_u64().unwrap() as usize;
            let per_url = load["per_url"].as_array().unwrap();
            assert_eq!(per_url.len(), k, "{r}");
            let sent: Vec<u64> = per_url
                .iter()
                .map(|u| u["sent"].as_u64().unwrap())
                .collect();
            let (max, min) = (*sent.iter().max().unwrap(), *sent.iter().min().unwrap());
            assert!(
                min > 0 && max - min <= 2 + max / 100,
                "round-robin is uneven: {sent:?}"
            );
            // Every job of the measurement was charged to one of the three workers.
            assert_eq!(r["charged"], r["answered"], "{r}");
            assert_eq!(r["workers"]["total"], r["charged"], "{r}");
            assert!(
                r["cpu"]["ms_per_request"]["gateways"].as_f64().unwrap() > 0.0,
                "{r}"
            );
        }
    }
}

fn namespaces() -> String {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn three_replicas_three_workers_and_a_client_each_in_a_namespace_serve_and_bill_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let Run {
        status,
        stderr,
        v,
        pid,
        secs,
    } = smoke(dir.path(), &[], None);
    let prefix = format!("cso{pid}-");
    let checks = &v["checks"];
    assert!(
        status.success() && v["passed"] == true,
        "scale-out smoke failed (exit {:?}): error {} checks {checks}\nstderr:\n{stderr}",
        status.code(),
        v["error"]
    );
    eprintln!(
        "scale-out smoke: mode {} in {secs:.0} s{}",
        v["mode"],
        v["fallback_reason"]
            .as_str()
            .map(|r| format!(" (namespaces unavailable: {r})"))
            .unwrap_or_default()
    );

    match v["mode"].as_str() {
        Some("netns") => assert_eq!(v["prefix"].as_str(), Some(prefix.trim_end_matches('-'))),
        Some("loopback") => {
            // The fallback is announced, with its reason, on stderr and in the JSON.
            assert!(
                stderr.contains("namespaces unavailable: ")
                    && stderr.contains("falling back to loopback ports"),
                "{stderr}"
            );
            assert!(v["fallback_reason"].is_string(), "{v}");
        }
        other => panic!("unknown mode {other:?}"),
    }
    for c in [
        "all_ok",
        "all_charged",
        "every_worker_ran_jobs",
        "every_replica_served",
        "ledger_check",
        "no_namespace_left",
    ] {
        assert_eq!(checks[c], true, "{c}: {checks}");
    }

    assert_passes(&v, &[1]);
    assert!(
        v["ledger_check"]
            .as_str()
            .unwrap()
            .contains("every invariant holds"),
        "{v}"
    );

    // Nothing of the run is left: no namespace named after it, no work folder.
    assert_eq!(v["work_dir_removed"], true);
    let left: Vec<String> = namespaces()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Where namespaces cannot be made (here: an `ip` that fails as it does without CAP_NET_ADMIN),
/// the script says so and runs the same topology on loopback ports, and still passes.
#[test]
fn without_namespaces_the_smoke_says_so_and_runs_on_loopback_ports() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ip = bin.join("ip");
    std::fs::write(&ip, "#!/bin/sh\necho 'mount --make-shared /run/netns failed: Operation not permitted' >&2\nexit 1\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ip, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Short measurements: this checks the fallback; the test above checks the measurements.
    let Run {
        status,
        stderr,
        v,
        secs,
        ..
    } = smoke(dir.path(), &["--secs", "1", "--accounts", "3"], Some(&bin));
    assert!(
        stderr.contains("namespaces unavailable: ip netns add cso")
            && stderr.contains("Operation not permitted; falling back to loopback ports"),
        "{stderr}"
    );
    assert!(
        status.success() && v["passed"] == true,
        "fallback run failed: {} {}\nstderr:\n{stderr}",
        v["error"],
        v["checks"]
    );
    assert_eq!(v["mode"], "loopback");
    assert!(
        v["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{v}"
    );
    for g in v["addresses"]["gateways"].as_array().unwrap() {
        assert!(g.as_str().unwrap().starts_with("http://127.0.0.1:"), "{g}");
    }
    // Three accounts, keys taken in turn: the several-keys path of the load generator.
    assert_passes(&v, &[3]);
    eprintln!("scale-out smoke without namespaces: loopback in {secs:.0} s");
}
