//! API keys in the database and the dashboard's API, end to end: two `cocoon gateway`
//! processes on one Postgres database (a key created on one works on the other at once, a key
//! revoked on either stops on both within a second), `cocoon keys` against the same database,
//! and the `/v1/dashboard` endpoints on a dev network (scoping, usage by day, workers, CORS).
//! Sign-in with Telegram and TON Connect is tested in a real browser (scripts/browser-tests)
//! and against library-made vectors in the gateway's unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cocoon(dir: &std::path::Path, name: &str, args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = Command::new(common::cocoon_bin());
    c.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
    c
}

/// `cocoon keys ...` against the replicas' database; returns stdout.
fn keys_cli(dir: &std::path::Path, env: &[(String, String)], args: &[&str]) -> String {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let out = Command::new(common::cocoon_bin())
        .args(&all)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "cocoon {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn status(http: &reqwest::Client, base: &str, key: &str) -> u16 {
    http.get(format!("{base}/v1/models")).bearer_auth(key).send().await.unwrap().status().as_u16()
}

/// Polls `base` with `key` until it answers 401; the time that took.
async fn until_refused(http: &reqwest::Client, base: &str, key: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if status(http, base, key).await == 401 {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "the key still works on {base} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_database_see_new_and_revoked_keys_within_a_second() {
    let db = common::PgDb::create("cocoon_dash").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = |v: &str| v.to_string();
    let shared = vec![
        (s("COCOON__BILLING__DATABASE_URL"), db.url.clone()),
        (s("COCOON__LOG"), s("warn")),
        (s("COCOON__GATEWAY__DASHBOARD__SESSION_SECRET"), s("replicas-share-this-32-byte-secret!!")),
        (s("COCOON__DATA_DIR"), dir.join("cli").display().to_string()),
    ];
    // Keys made with the CLI before the replicas start: one for alice, one for bob.
    let alice = keys_cli(dir, &shared, &["create", "--name", "cli", "--account", "alice"]).trim().to_owned();
    let bob = keys_cli(dir, &shared, &["create", "--name", "cli", "--account", "bob"]).trim().to_owned();

    let mut procs = Kill(Vec::new());
    let mut bases = Vec::new();
    for g in ["g1", "g2"] {
        let (http_port, wss_port) = (common::free_port(), common::free_port());
        let mut env = shared.clone();
        env.extend([
            (s("COCOON__DATA_DIR"), dir.join(g).display().to_string()),
            (s("COCOON__GATEWAY__LISTEN"), format!("127.0.0.1:{http_port}")),
            (s("COCOON__GATEWAY__METRICS_LISTEN"), s("127.0.0.1:0")),
            (s("COCOON__ENVIRONMENT"), s("development")),
            (s("COCOON__ROUTER__WORKER_LISTEN"), format!("127.0.0.1:{wss_port}")),
        ]);
        std::fs::create_dir_all(dir.join(g)).unwrap();
        procs.0.push(cocoon(dir, g, &["gateway"], &env).spawn().unwrap());
        bases.push(format!("http://127.0.0.1:{http_port}"));
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for b in &bases {
        loop {
            let up = http.get(format!("{b}/v1/models")).bearer_auth(&alice).send().await;
            if up.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "{b} did not come up: {}", std::fs::read_to_string(dir.join("g1.err")).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (g1, g2) = (&bases[0], &bases[1]);

    // A key made through g1's dashboard API works on g2 at once (its unknown id triggers a catch-up).
    let created: Value = http
        .post(format!("{g1}/v1/dashboard/keys"))
        .bearer_auth(&alice)
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["object"], "api_key.created", "{created}");
    let laptop = created["key"].as_str().unwrap().to_owned();
    let laptop_id = created["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!(status(&http, g2, &laptop).await, 200);

    // The list on g2 is alice's only; bob's key is not hers to revoke, on either replica.
    let list: Value = http.get(format!("{g2}/v1/dashboard/keys")).bearer_auth(&alice).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = list["data"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cli", "laptop"], "{list}");
    let bob_id = &bob[10..22];
    let r = http.post(format!("{g1}/v1/dashboard/keys/{bob_id}/revoke")).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "key_not_found");
    assert_eq!(status(&http, g2, &bob).await, 200);
    let renamed: Value = http
        .patch(format!("{g2}/v1/dashboard/keys/{laptop_id}"))
        .bearer_auth(&alice)
        .json(&json!({"name": "old laptop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "old laptop");

    // Revocations: through the API on one replica, then the other; and with the CLI.
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let (made_on, revoked_on, other) = if round % 2 == 0 { (g1, g1, g2) } else { (g2, g2, g1) };
        let k: Value = http
            .post(format!("{made_on}/v1/dashboard/keys"))
            .bearer_auth(&alice)
            .json(&json!({"name": format!("round {round}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (key, id) = (k["key"].as_str().unwrap().to_owned(), k["record"]["id"].as_str().unwrap().to_owned());
        assert_eq!(status(&http, other, &key).await, 200);
        let r = http.post(format!("{revoked_on}/v1/dashboard/keys/{id}/revoke")).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // The replica that revoked it refuses it at once; the other within a second.
        assert_eq!(status(&http, revoked_on, &key).await, 401);
        let took = until_refused(&http, other, &key, Duration::from_secs(1)).await;
        eprintln!("revocation reached the other replica in {took:?}");
        worst = worst.max(took);
    }
    keys_cli(dir, &shared, &["revoke", &laptop_id]);
    let started = Instant::now();
    for b in &bases {
        until_refused(&http, b, &laptop, Duration::from_secs(1)).await;
    }
    eprintln!("CLI revocation reached both replicas in {:?}; worst API revocation {worst:?}", started.elapsed());
    let listed = keys_cli(dir, &shared, &["list", "--account", "alice"]);
    assert!(listed.lines().any(|l| l.starts_with(&laptop_id) && l.ends_with("revoked")), "{listed}");
    assert!(listed.contains("dashboard"), "created_by is shown: {listed}");

    drop(procs);
    db.drop_it().await;
}

fn get(net: &common::Net, path: &str, key: &str) -> reqwest::RequestBuilder {
    common::http().get(format!("http://{}{path}", net.gateway_addr)).bearer_auth(key)
}

#[tokio::test]
async fn dashboard_api_shows_the_callers_own_keys_usage_and_workers() {
    let net = common::start(|c| {
        c.gateway.cors.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let base = format!("http://{}", net.gateway_addr);

    // Without credentials: 401 in the OpenAI error shape; the public config needs none.
    let r = common::http().get(format!("{base}/v1/dashboard/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let cfg: Value = common::http().get(format!("{base}/v1/dashboard/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!((cfg["telegram_sign_in"].as_bool(), cfg["ton_sign_in"].as_bool(), cfg["billing_enabled"].as_bool()), (Some(false), Some(false), Some(true)), "{cfg}");
    let r = common::http().post(format!("{base}/v1/dashboard/auth/telegram")).json(&json!({"init_data": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "telegram_sign_in_disabled");
    let r = common::http().get(format!("{base}/v1/dashboard/me")).bearer_auth("eyJhbGciOiJIUzI1NiIsImtpZCI6ImRhc2hib2FyZCJ9.e30.x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_session");

    // Two requests, then usage by day and model adds up to the cost headers.
    let mut charged = 0i64;
    for _ in 0..2 {
        let r = common::post_chat(&net, &net.api_key, &json!({"model": "cocoon-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})).await;
        assert_eq!(r.status(), 200);
        charged += r.headers()["x-cocoon-cost-nanoton"].to_str().unwrap().parse::<i64>().unwrap();
    }
    let u: Value = get(&net, "/v1/dashboard/usage?days=7", &net.api_key).send().await.unwrap().json().await.unwrap();
    let daily = u["daily"].as_array().unwrap();
    assert_eq!(daily.len(), 1, "{u}");
    assert_eq!((daily[0]["model"].as_str(), daily[0]["requests"].as_i64(), daily[0]["charge"].as_i64()), (Some("cocoon-test"), Some(2), Some(charged)));
    assert_eq!(daily[0]["date"].as_str().unwrap().len(), 10);
    assert_eq!(u["recent"].as_array().unwrap().len(), 2);
    let r = get(&net, "/v1/dashboard/usage?days=0", &net.api_key).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Balance with the deposit code and its comment cell.
    let b: Value = get(&net, "/v1/dashboard/balance", &net.api_key).send().await.unwrap().json().await.unwrap();
    let code = b["deposit"]["code"].as_str().unwrap();
    assert_eq!(code.len(), billing::DEPOSIT_CODE_LEN);
    assert_eq!(b["balance"]["account"], "dev");
    assert_eq!(b["balance"]["total"].as_i64().unwrap() + charged, 1_000_000_000_000);
    assert!(b["deposit"]["payload_boc"].as_str().unwrap().starts_with("te6cc"), "{b}");

    // Keys: a second account cannot see or touch the dev account's keys.
    let other = net.keys.create("other", "someone-else", None).await.unwrap();
    let mine: Value = get(&net, "/v1/dashboard/keys", &net.api_key).send().await.unwrap().json().await.unwrap();
    assert!(mine["data"].as_array().unwrap().iter().all(|k| k["id"] != other.record.id.as_str()));
    assert!(mine["data"].as_array().unwrap().iter().all(|k| k.get("sha256").is_none()), "hashes are not shown");
    let r = common::http()
        .patch(format!("{base}/v1/dashboard/keys/{}", other.record.id))
        .bearer_auth(&net.api_key)
        .json(&json!({"name": "mine now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = common::http().post(format!("{base}/v1/dashboard/keys")).bearer_auth(&net.api_key).json(&json!({"name": ""})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "name");

    // Workers: a client key operates none; the operator key (account `worker:<id>`) sees its
    // worker live: attested (simulated TEE), measurement, models, slots.
    let w: Value = get(&net, "/v1/dashboard/workers", &net.api_key).send().await.unwrap().json().await.unwrap();
    assert!(w["data"].as_array().unwrap().is_empty(), "{w}");
    let operator = net.keys.create("operator", "worker:worker-1", None).await.unwrap().key;
    let w: Value = get(&net, "/v1/dashboard/workers", &operator).send().await.unwrap().json().await.unwrap();
    let s = &w["data"][0]["status"];
    assert_eq!((s["worker_id"].as_str(), s["health"].as_str(), s["attested"].as_bool(), s["tee"].as_str()), (Some("worker-1"), Some("up"), Some(true), Some("simulated")), "{w}");
    assert_eq!(s["measurement"].as_str().unwrap().len(), 96);
    assert_eq!(s["models"][0], "cocoon-test");
    assert_eq!(w["data"][0]["earnings"]["jobs"], 2);
    let me: Value = get(&net, "/v1/dashboard/me", &operator).send().await.unwrap().json().await.unwrap();
    assert_eq!((me["via"].as_str(), me["workers"][0].as_str()), (Some("api_key"), Some("worker-1")));

    // CORS: the configured origin gets its preflight answered; another gets no grant.
    let pre = |origin: &str| {
        common::http()
            .request(reqwest::Method::OPTIONS, format!("{base}/v1/dashboard/keys"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
    };
    let ok = pre("https://app.example").send().await.unwrap();
    assert_eq!(ok.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some("https://app.example"));
    let no = pre("https://evil.example").send().await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());
    let err = common::http().get(format!("{base}/v1/dashboard/keys")).header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(err.status(), 401);
    assert!(err.headers().contains_key("access-control-allow-origin"), "errors carry CORS headers too");

    // The page: served with a CSP when built, else a 503 saying how to build it.
    let page = common::http().get(format!("{base}/dashboard/")).send().await.unwrap();
    assert!(page.status() == 200 || page.status() == 503, "{}", page.status());
    let manifest: Value = common::http().get(format!("{base}/dashboard/tonconnect-manifest.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(manifest["url"], base);
    net.net.shutdown().await;
}
