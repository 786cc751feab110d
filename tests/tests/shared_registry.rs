//! Two `cocoon gateway` processes sharing one Redis (registry, load, nonces) and two
//! `cocoon worker` processes each linked to both: every replica sees the whole fleet, and a
//! replica routes around a worker that the *other* replica has filled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(dir: &std::path::Path, name: &str, role: &str, env: &[(String, String)]) -> Child {
    Command::new(common::cocoon_bin())
        .arg(role)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap()
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateway_processes_share_the_fleet_and_its_load_through_redis() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let prefix = format!("cocoon-test-{}", uuid::Uuid::new_v4().simple());
    // One certificate for both replicas (as behind a load balancer), so one pin.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("router.crt"), dir.join("router.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let pin = router::net::RouterIdentity::from_pem_files(cert.to_str().unwrap(), key.to_str().unwrap()).unwrap().fingerprint;
    let keys_file = dir.join("keys.json");
    // Each replica has its own database here; both import this file at start.
    let api_key = common::legacy_keys_file(&keys_file, "acct", Some(gateway::ratelimit::Limits { requests_per_minute: 0, tokens_per_minute: 0 }));

    let s = |v: &str| v.to_string();
    let mut procs = Kill(Vec::new());
    let mut gateways = Vec::new();
    let mut metrics_urls = Vec::new();
    let mut worker_urls = Vec::new();
    for g in ["g1", "g2"] {
        let (http_port, wss_port, metrics_port) = (common::free_port(), common::free_port(), common::free_port());
        let data = dir.join(g);
        std::fs::create_dir_all(&data).unwrap();
        let env = vec![
            (s("COCOON__DATA_DIR"), data.display().to_string()),
            (s("COCOON__LOG"), s("warn")),
            (s("COCOON__ENVIRONMENT"), s("development")),
            (s("COCOON__GATEWAY__LISTEN"), format!("127.0.0.1:{http_port}")),
            (s("COCOON__GATEWAY__METRICS_LISTEN"), format!("127.0.0.1:{metrics_port}")),
            (s("COCOON__GATEWAY__KEYS_FILE"), keys_file.display().to_string()),
            (s("COCOON__BILLING__ENABLED"), s("false")),
            (s("COCOON__ROUTER__WORKER_LISTEN"), format!("127.0.0.1:{wss_port}")),
            (s("COCOON__ROUTER__TLS_CERT_FILE"), cert.display().to_string()),
            (s("COCOON__ROUTER__TLS_KEY_FILE"), key.display().to_string()),
            (s("COCOON__ROUTER__REDIS_URL"), s("redis://127.0.0.1:6379/")),
            (s("COCOON__ROUTER__REDIS_PREFIX"), prefix.clone()),
            (s("COCOON__ROUTER__INSTANCE_ID"), s(g)),
            (s("COCOON__ROUTER__FLEET_SYNC_MS"), s("50")),
            (s("COCOON__ROUTER__MAX_ATTEMPTS"), s("3")),
            (s("COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE"), s("true")),
        ];
        procs.0.push(spawn(dir, g, "gateway", &env));
        gateways.push(format!("http://127.0.0.1:{http_port}"));
        metrics_urls.push(format!("http://127.0.0.1:{metrics_port}"));
        worker_urls.push(format!("wss://127.0.0.1:{wss_port}/v1/worker"));
    }
    for w in ["a", "b"] {
        let data = dir.join(w);
        std::fs::create_dir_all(&data).unwrap();
        let env = vec![
            (s("COCOON__DATA_DIR"), data.display().to_string()),
            (s("COCOON__LOG"), s("warn")),
            (s("COCOON__ENVIRONMENT"), s("development")),
            (s("COCOON__WORKER__WORKER_ID"), s(w)),
            // One slot: a worker busy with one job has no room for another from any replica.
            (s("COCOON__WORKER__SLOTS"), s("1")),
            (s("COCOON__WORKER__ROUTER_URL"), worker_urls[0].clone()),
            (s("COCOON__WORKER__ROUTER_URLS"), format!("[\"{}\"]", worker_urls[1])),
            (s("COCOON__WORKER__ROUTER_CERT_SHA256"), pin.clone()),
            (s("COCOON__ENGINE__KIND"), s("builtin")),
            (s("COCOON__ENGINE__LISTEN"), s("127.0.0.1:0")),
        ];
        procs.0.push(spawn(dir, &format!("worker-{w}"), "worker", &env));
    }

    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    // Every replica sees both workers locally and the other replica in the shared registry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok = true;
        for (g, m) in gateways.iter().zip(&metrics_urls) {
            let ready = match http.get(format!("{g}/readyz")).send().await {
                Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await.unwrap()["workers"] == 2,
                _ => false,
            };
            ok &= ready
                && metric(&http, m, "cocoon_router_fleet_replicas").await == 2.0
                && metric(&http, m, "cocoon_router_fleet_workers").await == 2.0;
        }
        if ok {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: String = ["g1", "g2", "worker-a", "worker-b"]
                .iter()
                .map(|n| format!("--- {n}\n{}", std::fs::read_to_string(dir.join(format!("{n}.err"))).unwrap_or_default()))
                .collect();
            panic!("fleet did not form:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Fill one worker through g1 with a slow stream.
    let slow = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "long"}], "stream": true,
        "max_tokens": 400, "test_engine": {"tokens_per_second": 50, "completion_tokens": 400}});
    let resp = http.post(format!("{}/v1/chat/completions", gateways[0])).bearer_auth(&api_key).json(&slow).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // Let g2 learn about it (a few sync rounds).
    tokio::time::sleep(Duration::from_millis(400)).await;

    // g2 never tries the busy worker: no refusal, no retry, every request served first time.
    let before = metric(&http, &metrics_urls[1], "cocoon_router_retries_total").await;
    for i in 0..8 {
        let body = json!({"model": "cocoon-test", "messages": [{"role": "user", "content": format!("quick {i}")}], "max_tokens": 4});
        let r = http.post(format!("{}/v1/chat/completions", gateways[1])).bearer_auth(&api_key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let after = metric(&http, &metrics_urls[1], "cocoon_router_retries_total").await;
    assert_eq!(after, before, "g2 routed to the worker g1 had filled (it had to retry)");
    drop(stream);
}
