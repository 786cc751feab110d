//! deploy/kubernetes/ cannot be applied here (no cluster), so, as tests/tests/compose.rs does
//! for docker-compose.yml, it is checked against what the binary accepts: the gateway's
//! ConfigMap (`cocoon.toml`) plus its Deployment's environment (the image's Dockerfile `ENV`
//! defaults, then the container's `env`, Secrets and field references resolved) go through
//! `cocoon`'s own `Config::load_for`, which refuses unknown keys and bad values; container
//! ports, Services and probes must match the ports the config listens on and the endpoints
//! the gateway serves; files the config names must be mounted; the termination grace period
//! must cover the preStop pause plus the binary's own drain. The worker DaemonSet example is
//! loaded the same way. (Schema validity is `scripts/deploy-check`'s job.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cocoon::config::{Config, EngineKind, Environment, Role};
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every object of every manifest under deploy/kubernetes.
fn objects() -> Vec<Value> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Multi-document YAML: documents are separated by `---` lines.
        let mut doc = String::new();
        for line in text.lines().chain(std::iter::once("---")) {
            if line.trim_end() == "---" {
                let v: Value = serde_yaml::from_str(&doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                if !v.is_null() {
                    out.push(v);
                }
                doc.clear();
            } else {
                doc.push_str(line);
                doc.push('\n');
            }
        }
    }
    out
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {kind} {name:?}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `ENV` defaults of a Dockerfile's final stage (`ENV A=1 \ B=2` form).
fn dockerfile_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    let mut env = BTreeMap::new();
    for line in last_stage.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV pair {pair:?}"));
                env.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
    }
    env
}

/// What the pod of this name would run with: (container, its environment with every
/// reference resolved as the kubelet would).
fn container_env(objs: &[Value], container: &Value, pod_name: &str, node_name: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_sequence().unwrap() {
        let name = s(&e["name"]);
        let value = if let Some(v) = e.get("value") {
            s(v)
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let secret = find(objs, "Secret", r["name"].as_str().unwrap());
            match secret["stringData"].get(r["key"].as_str().unwrap()) {
                Some(v) => s(v),
                None if r["optional"].as_bool() == Some(true) => continue,
                None => panic!("Secret {:?} has no key {:?} ({name})", r["name"], r["key"]),
            }
        } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            let cm = find(objs, "ConfigMap", r["name"].as_str().unwrap());
            s(cm["data"].get(r["key"].as_str().unwrap()).unwrap_or_else(|| panic!("ConfigMap key {r:?}")))
        } else if let Some(r) = e["valueFrom"].get("fieldRef") {
            match r["fieldPath"].as_str().unwrap() {
                "metadata.name" => pod_name.to_string(),
                "spec.nodeName" => node_name.to_string(),
                other => panic!("unhandled fieldRef {other}"),
            }
        } else {
            panic!("unhandled env source {e:?}");
        };
        env.insert(name, value);
    }
    env
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn container_port(c: &Value, name: &str) -> u16 {
    let p = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap()
}

fn port_of(addr: &str) -> (String, u16) {
    let sa: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
    (sa.ip().to_string(), sa.port())
}

/// The volume mounted at the directory holding `file`, if any: (volume, mountPath).
fn mount_for<'a>(workload: &'a Value, c: &'a Value, file: &Path) -> Option<(&'a Value, String)> {
    let mounts = c["volumeMounts"].as_sequence()?;
    let m = mounts
        .iter()
        .filter(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())?;
    let vol = workload["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap();
    Some((vol, s(&m["mountPath"])))
}

/// The gateway's config as its pod would load it, and the container.
fn gateway_config(objs: &[Value]) -> (Config, Value) {
    let dep = find(objs, "Deployment", "cocoon-gateway");
    let c = container(dep, "gateway").clone();
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    assert_eq!(args[0], "gateway", "{args:?}");
    let i = args.iter().position(|a| a == "--config").expect("--config");
    let config_path = PathBuf::from(&args[i + 1]);
    // The file --config names is the ConfigMap's cocoon.toml, mounted there.
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(config_path.to_str().unwrap()))
        .expect("the --config file is not mounted");
    let (vol, _) = mount_for(dep, &c, &config_path).unwrap();
    let cm_name = vol["configMap"]["name"].as_str().expect("config volume is a ConfigMap");
    let key = mount["subPath"].as_str().unwrap();
    let toml = s(&find(objs, "ConfigMap", cm_name)["data"][key]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cocoon.toml");
    std::fs::write(&file, toml).unwrap();

    let mut env = dockerfile_env(&root().join("Dockerfile"));
    env.extend(container_env(objs, &c, "cocoon-gateway-7d9f8c6b5-x2k4q", "node-1"));
    let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("COCOON")).collect();
    let cfg = Config::load_for(Some(&file), env, Role::Gateway).unwrap_or_else(|e| panic!("gateway config refused:\n{e}"));
    (cfg, c)
}

#[test]
fn the_gateway_config_loads_in_production_with_its_secrets() {
    let objs = objects();
    let (cfg, _) = gateway_config(&objs);
    assert_eq!(cfg.environment, Environment::Production);
    assert_eq!(cfg.router.instance_id.as_deref(), Some("cocoon-gateway-7d9f8c6b5-x2k4q"));
    // Replicas share rate limits and the worker registry through the managed Redis, and the
    // ledger and keys through the managed Postgres, both named by ExternalName Services.
    let redis = cfg.gateway.redis_url.clone().expect("gateway.redis_url");
    assert_eq!(cfg.router.redis_url.as_deref(), Some(redis.as_str()));
    let db = cfg.billing.database_url.clone().expect("billing.database_url");
    assert!(db.starts_with("postgres://"), "{db}");
    for (url, svc) in [(&redis, "cocoon-redis"), (&db, "cocoon-postgres")] {
        assert!(url.contains(&format!("@{svc}.cocoon.svc:")), "{url} does not name Service {svc}");
        assert_eq!(find(&objs, "Service", svc)["spec"]["type"].as_str(), Some("ExternalName"));
    }
    assert!(cfg.gateway.jwt.is_some(), "the JWT secret must come from the Secret");
    assert!(cfg.gateway.dashboard.session_secret.is_some(), "session secret must be shared by replicas");
}

#[test]
fn ports_services_and_probes_match_the_binary() {
    let objs = objects();
    let (cfg, c) = gateway_config(&objs);
    let (ip, port) = port_of(&cfg.gateway.listen);
    assert_eq!(ip, "0.0.0.0", "probes and the Service reach the pod IP");
    assert_eq!(port, container_port(&c, "http"));
    let (ip, port) = port_of(cfg.router.worker_listen.as_deref().expect("router.worker_listen"));
    assert_eq!(ip, "0.0.0.0");
    assert_eq!(port, container_port(&c, "workers"));
    let (_, port) = port_of(cfg.gateway.metrics_listen.as_deref().unwrap());
    assert_eq!(port, container_port(&c, "metrics"));

    let dep = find(&objs, "Deployment", "cocoon-gateway");
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (svc, target) in [("cocoon-gateway", "http"), ("cocoon-workers", "workers")] {
        let svc = find(&objs, "Service", svc);
        for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(&labels[k.as_str().unwrap()], v, "Service selector does not match the pods");
        }
        assert_eq!(svc["spec"]["ports"][0]["targetPort"].as_str(), Some(target));
    }
    // Workers must reach replicas that are not ready yet: ready means "a worker is linked".
    assert_eq!(find(&objs, "Service", "cocoon-workers")["spec"]["publishNotReadyAddresses"].as_bool(), Some(true));

    // The probes hit endpoints the gateway serves (the spec is generated from its routes).
    let spec: serde_json::Value = serde_json::from_str(&gateway::openapi::spec_json()).unwrap();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("http"), "{probe}");
        assert!(spec["paths"][path]["get"].is_object(), "the gateway serves no GET {path}");
    }
}

#[test]
fn shutdown_waits_for_the_binarys_drain_and_disruptions_keep_a_replica() {
    let objs = objects();
    let (cfg, c) = gateway_config(&objs);
    let dep = find(&objs, "Deployment", "cocoon-gateway");
    let cmd: Vec<String> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("a preStop pause")
        .iter()
        .map(s)
        .collect();
    assert_eq!(cmd[0], "sleep");
    let pause: u64 = cmd[1].parse().unwrap();
    assert!(pause >= 3, "endpoints need a few seconds to drop the pod");
    let grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain = cfg.gateway.drain_timeout_ms.div_ceil(1000);
    assert!(
        grace > pause + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pause} s + gateway.drain_timeout_ms {drain} s"
    );

    let replicas = dep["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2);
    let pdb = find(&objs, "PodDisruptionBudget", "cocoon-gateway");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"]);
    let min = pdb["spec"]["minAvailable"].as_u64().unwrap();
    assert!(min >= 1 && min < replicas, "a PDB of {min} of {replicas} would block every drain");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string());
}

#[test]
fn every_file_the_config_names_is_mounted_and_data_dir_is_writable() {
    let objs = objects();
    let (cfg, c) = gateway_config(&objs);
    let dep = find(&objs, "Deployment", "cocoon-gateway");
    let router_tls = [
        cfg.router.tls_cert_file.clone().expect("one router certificate for all replicas"),
        cfg.router.tls_key_file.clone().expect("router.tls_key_file"),
    ];
    let ton = cfg.ton.mnemonic_file.clone().expect("ton.mnemonic_file");
    for file in router_tls.iter().map(PathBuf::from).chain([ton]) {
        let (vol, mount) = mount_for(dep, &c, &file).unwrap_or_else(|| panic!("{} is not mounted", file.display()));
        let secret = vol["secret"]["secretName"].as_str().unwrap_or_else(|| panic!("{} is not from a Secret", file.display()));
        let key = file.strip_prefix(&mount).unwrap().to_str().unwrap();
        assert!(
            find(&objs, "Secret", secret)["stringData"].get(key).is_some(),
            "Secret {secret} has no key {key}"
        );
    }
    // The root filesystem is read-only: data_dir (collateral cache, capture outbox) is a volume.
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    let (vol, _) = mount_for(dep, &c, &cfg.data_dir).expect("data_dir is not mounted");
    assert!(vol.get("emptyDir").is_some(), "{vol:?}");
}

#[test]
fn the_worker_example_runs_vllm_in_production_and_dials_the_worker_service() {
    let objs = objects();
    let ds = find(&objs, "DaemonSet", "cocoon-worker");
    let c = container(ds, "worker");
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    assert_eq!(args, vec!["worker"]);
    let mut env = dockerfile_env(&root().join("worker-agent/Dockerfile"));
    env.extend(container_env(&objs, c, "cocoon-worker-abcde", "gpu-node-1"));
    let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("COCOON")).collect();
    let cfg = Config::load_for(None, env, Role::Worker).unwrap_or_else(|e| panic!("worker config refused:\n{e}"));
    assert_eq!(cfg.environment, Environment::Production);
    assert_eq!(cfg.engine.kind, EngineKind::Vllm);
    assert_eq!(cfg.worker.worker_id, "gpu-node-1");
    assert!(cfg.worker.router_cert_sha256.is_some());

    // router_url names the worker Service, in its namespace, on its port.
    let url = cfg.worker.router_url.clone().unwrap();
    let authority = url.strip_prefix("wss://").unwrap().split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    let svc = find(&objs, "Service", "cocoon-workers");
    assert_eq!(host, format!("cocoon-workers.{}.svc", s(&svc["metadata"]["namespace"])), "{url}");
    assert_eq!(port.parse::<u64>().unwrap(), svc["spec"]["ports"][0]["port"].as_u64().unwrap());
    assert!(url.ends_with("/v1/worker"), "{url}");

    // A GPU, configfs-tsm for its evidence, and time to drain its jobs and stop vLLM.
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"].as_u64(), Some(1));
    assert!(mount_for(ds, c, Path::new("/sys/kernel/config/tsm/report")).is_some());
    let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    let need = (cfg.worker.drain_timeout_ms + cfg.engine.stop_grace_ms).div_ceil(1000);
    assert!(grace > need, "terminationGracePeriodSeconds {grace} <= worker drain + engine stop {need} s");
    // The worker never listens: no ports.
    assert!(c.get("ports").is_none());
}

/// What the Deployment's preStop and grace period rely on, checked on the real process
/// (`cocoon gateway`, as the pod runs it): on SIGTERM it stops accepting connections at once,
/// lets an in-flight stream finish, and exits within `gateway.drain_timeout_ms` even when a
/// stream would run longer (so the kubelet's SIGKILL never has to cut it).
#[tokio::test]
async fn the_gateway_process_drains_on_sigterm_within_its_drain_timeout() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = std::process::Command::new(common::cocoon_bin())
        .arg("gateway")
        .env("COCOON__ENVIRONMENT", "development")
        .env("COCOON__DATA_DIR", dir.path())
        .env("COCOON__GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
        .env("COCOON__GATEWAY__METRICS_LISTEN", "127.0.0.1:0")
        .env("COCOON__GATEWAY__INSECURE_DISABLE_AUTH", "true")
        .env("COCOON__GATEWAY__DRAIN_TIMEOUT_MS", "3000")
        .env("COCOON__BILLING__ENABLED", "false")
        .env("COCOON__ROUTER__WORKER_LISTEN", "127.0.0.1:0")
        .env("COCOON__ATTESTATION__POLICY__ALLOW_INSECURE_SIMULATED_TEE", "true")
        .env("COCOON__LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // It prints where workers dial in and the certificate they pin.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut workers, mut pin) = (None, None);
    while workers.is_none() || pin.is_none() {
        let line = lines.next().expect("cocoon gateway exited before it was up").unwrap();
        if let Some(u) = line.strip_prefix("workers:") {
            workers = Some(u.trim().to_string());
        } else if let Some((_, hex)) = line.split_once("router certificate SHA-256 (set as worker.router_cert_sha256): ") {
            pin = Some(hex.trim().to_string());
        }
    }
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let status = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}{path}")).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(status("/healthz").await.unwrap(), 200);
    assert_eq!(status("/readyz").await.unwrap(), 503, "no worker linked yet");

    // One worker (built-in test engine, simulated TEE) dials in.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine_url = format!("http://{}", listener.local_addr().unwrap());
    let engine = test_engine::TestEngine::new(test_engine::EngineConfig::default());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(test_engine::serve(listener, engine, async move { s.cancelled().await }));
    let agent = worker_agent::WorkerAgent::new(
        worker_agent::WorkerConfig { worker_id: "w1".into(), engine_url, health_interval_ms: 200, ..Default::default() },
        worker_agent::WorkerTee::simulated().unwrap(),
    )
    .unwrap();
    let link = worker_agent::net::RouterLink { url: workers.unwrap(), cert_sha256: pin.unwrap() };
    tokio::spawn(worker_agent::net::run(agent, link, Duration::from_secs(10), stop.clone()));
    let t0 = Instant::now();
    while status("/readyz").await.unwrap() != 200 {
        assert!(t0.elapsed() < Duration::from_secs(15), "/readyz never became 200 with a worker linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stream = |tokens: u32| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let body = serde_json::json!({
                "model": "cocoon-test", "messages": [{"role": "user", "content": "count"}], "stream": true,
                "max_tokens": tokens, "test_engine": {"tokens_per_second": 10.0, "completion_tokens": tokens}
            });
            let r = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap_or_default()
        }
    };
    // A 1.5 s stream that fits the drain, and a 10 s one that does not.
    let short = tokio::spawn(stream(15));
    let long = tokio::spawn(stream(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sigterm = Instant::now();
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(status("/healthz").await.is_err(), "still accepting connections after SIGTERM");

    let short = short.await.unwrap();
    assert!(short.ends_with("data: [DONE]\n\n"), "the in-flight stream was cut: {short}");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    let took = sigterm.elapsed();
    assert!(exit.success(), "{exit:?}");
    // drain_timeout_ms = 3 s, then the remaining connections are closed and it exits.
    assert!(took >= Duration::from_millis(2_500), "exited after {took:?}: it did not wait for the long stream");
    assert!(took < Duration::from_secs(8), "exited after {took:?}: the drain timeout did not bound it");
    let long = long.await.unwrap();
    assert!(!long.ends_with("data: [DONE]\n\n"), "a 10 s stream cannot have finished in a 3 s drain");
    stop.cancel();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    // Dev-only behaviour (here the simulated TEE) needs environment = "development", announced.
    assert!(stderr.contains("WARNING: cocoon gateway runs with environment = \"development\""), "{stderr}");
    assert!(stderr.contains("draining in-flight ones for up to 3000 ms"), "{stderr}");
}
