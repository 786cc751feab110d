//! Starts the real dev network in-process on loopback ports for one test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cocoon::config::Config;
use cocoon::dev::DevNetwork;
use serde_json::Value;

pub struct Net {
    pub net: DevNetwork,
    pub _dir: tempfile::TempDir,
}

impl std::ops::Deref for Net {
    type Target = DevNetwork;
    fn deref(&self) -> &DevNetwork {
        &self.net
    }
}

/// Writes a `keys.json` in the format gateways before the key database used (an array of
/// `{id, sha256, name, account, created_at, limits, revoked}`, gateway/src/keys.rs of that
/// time) holding one new key, and returns the key. A gateway started with
/// `gateway.keys_file` pointing at it imports it into its database: the way replicas with
/// separate databases get the same key in these tests.
pub fn legacy_keys_file(path: &std::path::Path, account: &str, limits: Option<gateway::ratelimit::Limits>) -> String {
    let (id, key) = gateway::keys::generate();
    let record = serde_json::json!([{
        "id": id,
        "sha256": gateway::keys::hash_hex(&key),
        "name": "test",
        "account": account,
        "created_at": 1_700_000_000u64,
        "limits": limits,
        "revoked": false,
    }]);
    std::fs::write(path, serde_json::to_vec(&record).unwrap()).unwrap();
    key
}

/// `tweak` adjusts the config (limits, engine timing) before start.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.environment = cocoon::config::Environment::Development;
    cfg.data_dir = dir.path().to_path_buf();
    cfg.gateway.listen = "127.0.0.1:0".into();
    cfg.gateway.metrics_listen = Some("127.0.0.1:0".into());
    cfg.gateway.drain_timeout_ms = 10_000;
    cfg.log = "warn".into();
    // These tests assert the deterministic engine's exact behaviour, even where a real one is installed.
    cfg.engine.kind = cocoon::config::EngineKind::Builtin;
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let net = DevNetwork::start(cfg).await.unwrap();
    Net { net, _dir: dir }
}

pub fn openai(net: &DevNetwork, key: &str) -> async_openai::Client<async_openai::config::OpenAIConfig> {
    let cfg = async_openai::config::OpenAIConfig::new()
        .with_api_base(net.base_url.clone())
        .with_api_key(key);
    async_openai::Client::with_config(cfg)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs a chat completion body with `key`.
pub async fn post_chat(net: &DevNetwork, key: &str, body: &serde_json::Value) -> reqwest::Response {
    http()
        .post(format!("{}/chat/completions", net.base_url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `cocoon` binary next to this test executable (target/<profile>/), or `COCOON_BIN`.
pub fn cocoon_bin() -> std::path::PathBuf {
    use std::path::Path;
    if let Some(p) = std::env::var_os("COCOON_BIN") {
        return p.into();
    }
    // Tests run from target/<profile>/deps/; the binary sits in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("cocoon");
    assert!(bin.exists(), "{} is missing: run `cargo build -p cocoon` or set COCOON_BIN", bin.display());
    // `cargo test -p e2e-tests` does not rebuild another package's binary.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&bin) < modified(&exe) {
        eprintln!(
            "warning: {} is older than this test; if the gateway changed, run `cargo build -p cocoon` first",
            bin.display()
        );
    }
    bin
}

/// A loopback port free right now (for processes that must be told their port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The repository's root (the parent of this package).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A Python with the schema validator's packages: the system one if it has them, else the
/// SDK suite's venv (created here if missing, exactly as scripts/sdk-tests does).
pub fn schema_python() -> std::path::PathBuf {
    let has_deps = |py: &std::path::Path| {
        std::process::Command::new(py)
            .args(["-c", "import yaml, jsonschema, referencing"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let system = std::path::PathBuf::from("python3");
    if has_deps(&system) {
        return system;
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"cache=${COCOON_CACHE:-$HOME/.cache/cocoon}; req=tests/python/requirements.txt
venv="$cache/venv-sdk-$(sha256sum "$req" | cut -c1-12)"
if [ ! -x "$venv/bin/pytest" ]; then python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2; fi
echo "$venv/bin/python""#)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let venv = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        has_deps(&venv),
        "no Python with pyyaml, jsonschema and referencing (pip install -r tests/python/requirements.txt):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv
}

/// A fresh database on the test Postgres (`BILLING_TEST_PG_URL`, default the local server),
/// named `<prefix>_<pid>_<uuid>`; [`PgDb::drop_it`] removes it (a failing test that skips it
/// leaves the database for inspection).
pub struct PgDb {
    pub admin: String,
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create(prefix: &str) -> PgDb {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let admin = std::env::var("BILLING_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("{prefix}_{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect(&admin))
            .await
            .expect("connecting to Postgres timed out")
            .unwrap_or_else(|e| panic!("Postgres at {admin} (set BILLING_TEST_PG_URL): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        PgDb { url: format!("{base}/{name}"), admin, name }
    }

    /// Makes the database refuse every connection (and ends the open ones), or accept again:
    /// to its clients, the same as the server going down and coming back.
    pub async fn allow(&self, allow: bool) {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", self.name)).execute(&mut conn).await.unwrap();
        if !allow {
            sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'", self.name))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    pub async fn drop_it(self) {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut conn).await.unwrap();
    }
}

/// The gateway's Prometheus text at `addr` (its `gateway.metrics_listen`).
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    http().get(format!("http://{addr}/metrics")).send().await.expect("GET /metrics").text().await.expect("metrics body")
}

/// A `cocoon-client` for end-to-end sealed requests to the gateway at `base_url` (…/v1),
/// accepting the simulated TEE (these networks run it), padding to `pad_to` (0: off).
pub fn sealed_client(base_url: &str, api_key: &str, pad_to: usize) -> cocoon_client::SealedClient {
    cocoon_client::SealedClient::new(cocoon_client::ClientConfig {
        base_url: base_url.to_string(),
        api_key: api_key.to_string(),
        policy: attestation::Policy { allow_insecure_simulated_tee: true, ..Default::default() },
        timeout: Duration::from_secs(30),
        default_max_tokens: 64,
        pad_to,
        reverify_after: Duration::from_secs(300),
    })
    .unwrap()
}

// --- The Responses API (shared by responses_api.rs and vllm_engine.rs) ---

/// The `(event, data)` pairs of a Responses stream, and whether a receipt comment came.
pub fn events(text: &str) -> (Vec<(String, Value)>, bool) {
    let mut out = Vec::new();
    let mut receipt = false;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(d).unwrap());
            } else if line.starts_with(": cocoon-receipt ") {
                receipt = true;
            }
        }
        if let Some(d) = data {
            out.push((event.expect("every data line has its event line"), d));
        }
    }
    (out, receipt)
}

/// OpenAI's component for a stream event type (`response.output_text.delta` →
/// `ResponseTextDeltaEvent`).
pub fn event_component(kind: &str) -> &'static str {
    match kind {
        "response.created" => "ResponseCreatedEvent",
        "response.in_progress" => "ResponseInProgressEvent",
        "response.output_item.added" => "ResponseOutputItemAddedEvent",
        "response.output_item.done" => "ResponseOutputItemDoneEvent",
        "response.content_part.added" => "ResponseContentPartAddedEvent",
        "response.content_part.done" => "ResponseContentPartDoneEvent",
        "response.output_text.delta" => "ResponseTextDeltaEvent",
        "response.output_text.done" => "ResponseTextDoneEvent",
        "response.function_call_arguments.delta" => "ResponseFunctionCallArgumentsDeltaEvent",
        "response.function_call_arguments.done" => "ResponseFunctionCallArgumentsDoneEvent",
        "response.completed" => "ResponseCompletedEvent",
        "response.incomplete" => "ResponseIncompleteEvent",
        "error" => "ResponseErrorEvent",
        other => panic!("unexpected event type {other}"),
    }
}

/// Validates `(component, instance)` pairs against OpenAI's OpenAPI document
/// (`tests/python/openai_schema.py`), and every event also against the `ResponseStreamEvent` union.
pub fn validate(samples: &[(&str, Value)]) {
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[2])
from openai_schema import validate
samples = json.load(open(sys.argv[1]))
for name, inst in samples:
    try:
        validate(name, inst)
        if name.endswith("Event"):
            validate("ResponseStreamEvent", inst)
    except AssertionError as e:
        sys.exit(f"{name}: {json.dumps(inst)[:600]}\n{e}")
print("ok", len(samples))
"#;
    run_schema_script(script, samples);
}

/// Runs `script` with the Python suite's validator on its path (argv[2]) and `samples`
/// written to a JSON file (argv[1]); fails the test with the script's output if it fails.
pub fn run_schema_script(script: &str, samples: &[(&str, Value)]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(samples).unwrap()).unwrap();
    let out = std::process::Command::new(schema_python())
        .args(["-c", script])
        .arg(file.path())
        .arg(repo_root().join("tests/python"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "OpenAI schema validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
