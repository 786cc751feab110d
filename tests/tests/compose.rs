//! docker-compose.yml cannot run here (no Docker), so it is checked against what the binaries
//! accept: each service built from this repository gets its environment (the image's `ENV`
//! defaults from its Dockerfile, then the service's `environment`, interpolated like Compose
//! does) loaded through `cocoon`'s own `Config::load`, which refuses unknown keys and bad
//! values; published ports must be the ports the config listens on; service URLs must name
//! services that exist, with matching credentials; the GPU worker must reserve an NVIDIA GPU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cocoon::config::{Config, EngineKind, Environment};
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn compose() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap()).unwrap()
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

/// Compose variable interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?error}`, `${VAR?error}` (what Compose itself resolves before starting anything).
fn interpolate(s: &str, vars: &HashMap<&str, &str>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let expr = &body[..end];
            rest = &body[end + 1..];
            let (name, op, arg) = match expr.find([':', '-', '?']) {
                None => (expr, "", ""),
                Some(j) => {
                    let op_len = if expr[j..].starts_with(':') { 2 } else { 1 };
                    (&expr[..j], &expr[j..j + op_len], &expr[j + op_len..])
                }
            };
            let val = vars.get(name).copied();
            let unset_or_empty = val.is_none_or(str::is_empty);
            match op {
                "" => out.push_str(val.unwrap_or("")),
                ":-" => out.push_str(if unset_or_empty { arg } else { val.unwrap_or("") }),
                "-" => out.push_str(val.unwrap_or(arg)),
                ":?" if unset_or_empty => return Err(format!("required variable {name}: {arg}")),
                "?" if val.is_none() => return Err(format!("required variable {name}: {arg}")),
                ":?" | "?" => out.push_str(val.unwrap_or("")),
                other => return Err(format!("unsupported interpolation {other:?} in {s:?}")),
            }
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            out.push_str(vars.get(&after[..len]).copied().unwrap_or(""));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("non-scalar environment value {other:?}"),
    }
}

/// A service's `environment` (map or `KEY=value` list), interpolated.
fn compose_env(svc: &Value, vars: &HashMap<&str, &str>) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    match &svc["environment"] {
        Value::Mapping(m) => {
            for (k, v) in m {
                env.insert(scalar(k), interpolate(&scalar(v), vars)?);
            }
        }
        Value::Sequence(list) => {
            for item in list {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                env.insert(k.to_string(), interpolate(v, vars)?);
            }
        }
        Value::Null => {}
        other => panic!("bad environment {other:?}"),
    }
    Ok(env)
}

/// `ENV` defaults of a Dockerfile's final stage (`ENV A=1 \ B=2` and `ENV A 1` forms).
fn dockerfile_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    let mut env = BTreeMap::new();
    for line in last_stage.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("ENV ") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.contains('=') {
            let (k, v) = rest.split_once(char::is_whitespace).unwrap();
            env.insert(k.to_string(), v.trim().to_string());
            continue;
        }
        for pair in rest.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad ENV pair {pair:?} in {}", path.display()));
            env.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    env
}

fn dockerfile_of(svc: &Value) -> PathBuf {
    match &svc["build"] {
        Value::String(ctx) => root().join(ctx).join("Dockerfile"),
        Value::Mapping(_) => {
            let ctx = svc["build"]["context"].as_str().unwrap_or(".");
            root()
                .join(ctx)
                .join(svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile"))
        }
        other => panic!("service is not built from this repository: {other:?}"),
    }
}

/// The config the service's `cocoon` process would run with, and its subcommand.
fn service_config(name: &str, vars: &HashMap<&str, &str>) -> Result<(Config, Vec<String>), String> {
    let c = compose();
    let svc = service(&c, name);
    let dockerfile = dockerfile_of(svc);
    assert!(dockerfile.is_file(), "{name}: {} does not exist", dockerfile.display());
    let mut env = dockerfile_env(&dockerfile);
    env.extend(compose_env(svc, vars)?);
    let cocoon_env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("COCOON")).collect();
    let command: Vec<String> = match &svc["command"] {
        Value::Sequence(s) => s.iter().map(scalar).collect(),
        Value::Null => vec!["worker".into()],
        other => panic!("{name}: command must be a list, got {other:?}"),
    };
    let role = match command.first().map(String::as_str) {
        Some("dev") => cocoon::config::Role::Dev,
        Some("gateway") => cocoon::config::Role::Gateway,
        Some("worker") => cocoon::config::Role::Worker,
        _ => cocoon::config::Role::Tool,
    };
    let mut cfg = Config::load_for(None, cocoon_env, role).map_err(|e| e.to_string())?;
    // `cocoon dev --listen ADDR` overrides gateway.listen, as main.rs does.
    if let Some(i) = command.iter().position(|a| a == "--listen") {
        cfg.gateway.listen = command[i + 1].clone();
        cfg.validate().map_err(|e| e.to_string())?;
    }
    Ok((cfg, command))
}

fn gpu_vars() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        (
            "COCOON_ROUTER_CERT_SHA256",
            "4f2c9a1b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c",
        ),
        ("COCOON_MODEL", "Qwen/Qwen2.5-7B-Instruct"),
    ])
}

fn container_ports(svc: &Value) -> Vec<(String, u16)> {
    svc["ports"]
        .as_sequence()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let p = scalar(p);
                    let p = p.split('/').next().unwrap();
                    let parts: Vec<&str> = p.split(':').collect();
                    (p.to_string(), parts.last().unwrap().parse().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn port_of(addr: &str) -> (String, u16) {
    let sa: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
    (sa.ip().to_string(), sa.port())
}

#[test]
fn the_services_are_there_and_built_from_this_repository() {
    let c = compose();
    let names: Vec<String> = c["services"].as_mapping().unwrap().keys().map(scalar).collect();
    for want in ["redis", "postgres", "cocoon", "worker-gpu"] {
        assert!(names.contains(&want.to_string()), "no {want} service in {names:?}");
    }
    assert_eq!(dockerfile_of(service(&c, "cocoon")), root().join("./Dockerfile"));
    assert_eq!(
        dockerfile_of(service(&c, "worker-gpu")),
        root().join("./worker-agent/Dockerfile")
    );
    // The GPU worker needs hardware most machines lack: it only starts with `--profile gpu`.
    assert_eq!(
        service(&c, "worker-gpu")["profiles"],
        serde_yaml::from_str::<Value>("[gpu]").unwrap()
    );
}

#[test]
fn the_gateway_service_config_is_valid_and_its_ports_are_published() {
    let (cfg, command) = service_config("cocoon", &HashMap::new()).unwrap();
    assert_eq!(command[0], "dev");
    let c = compose();
    let published = container_ports(service(&c, "cocoon"));
    let (ip, port) = port_of(&cfg.gateway.listen);
    assert_eq!(
        ip, "0.0.0.0",
        "the gateway must listen on all interfaces inside its container"
    );
    assert!(
        published.iter().any(|(_, p)| *p == port),
        "gateway port {port} not published: {published:?}"
    );
    let worker_listen = cfg
        .router
        .worker_listen
        .clone()
        .expect("workers need router.worker_listen");
    let (ip, port) = port_of(&worker_listen);
    assert_eq!(ip, "0.0.0.0");
    assert!(
        published.iter().any(|(_, p)| *p == port),
        "worker port {port} not published: {published:?}"
    );

    // Its Redis and Postgres are the compose services, with the credentials Postgres is given.
    let redis = cfg.gateway.redis_url.clone().expect("gateway.redis_url");
    assert!(redis.starts_with("redis://redis:6379"), "{redis}");
    let db = cfg.billing.database_url.clone().expect("billing.database_url");
    let pg = compose_env(service(&c, "postgres"), &HashMap::new()).unwrap();
    let want = format!(
        "postgres://{}:{}@postgres:5432/{}",
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    );
    assert_eq!(db, want);
    for dep in ["redis", "postgres"] {
        assert!(
            service(&c, "cocoon")["depends_on"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|d| d.as_str() == Some(dep)),
            "cocoon must depend on {dep}"
        );
    }
}

#[test]
fn the_gpu_worker_runs_vllm_in_production_and_dials_the_router_service() {
    let (cfg, command) = service_config("worker-gpu", &gpu_vars()).unwrap();
    assert_eq!(command, vec!["worker"]);
    assert_eq!(cfg.environment, Environment::Production);
    assert_eq!(cfg.engine.kind, EngineKind::Vllm);
    assert_eq!(cfg.engine.model.as_deref(), Some("Qwen/Qwen2.5-7B-Instruct"));
    assert_eq!(cfg.engine.command.as_deref(), Some("vllm"));
    // The engine and the metrics stay on loopback inside the container.
    let metrics = cfg.worker.metrics_listen.clone().expect("worker.metrics_listen");
    assert_eq!(port_of(&metrics).0, "127.0.0.1");

    // router_url names the gateway service and the port its router listens on for workers.
    let url = cfg.worker.router_url.clone().unwrap();
    let authority = url.strip_prefix("wss://").unwrap().split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    let (gw, _) = service_config("cocoon", &HashMap::new()).unwrap();
    assert_eq!(host, "cocoon", "{url}");
    assert_eq!(
        port.parse::<u16>().unwrap(),
        port_of(&gw.router.worker_listen.unwrap()).1,
        "{url}"
    );
    let c = compose();
    assert!(service(&c, "worker-gpu")["depends_on"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|d| d.as_str() == Some("cocoon")));

    // It reserves an NVIDIA GPU.
    let devices = &service(&c, "worker-gpu")["deploy"]["resources"]["reservations"]["devices"];
    let dev = &devices[0];
    assert_eq!(dev["driver"].as_str(), Some("nvidia"), "{devices:?}");
    assert!(
        dev["capabilities"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|c| c.as_str() == Some("gpu")),
        "{devices:?}"
    );
    // The worker never listens: nothing published.
    assert!(container_ports(service(&c, "worker-gpu")).is_empty());
}

#[test]
fn the_gpu_worker_refuses_to_start_without_its_pin_and_model() {
    let e = service_config("worker-gpu", &HashMap::new()).unwrap_err();
    assert!(
        e.contains("worker.router_cert_sha256") && e.contains("engine.model"),
        "{e}"
    );
}

#[test]
fn interpolation_follows_compose() {
    let vars = HashMap::from([("A", "1"), ("E", "")]);
    assert_eq!(interpolate("x${A}y$A$$", &vars).unwrap(), "x1y1$");
    assert_eq!(interpolate("${E:-d}|${E-d}|${U-d}|${U:-d}", &vars).unwrap(), "d||d|d");
    assert!(interpolate("${U:?need U}", &vars).unwrap_err().contains("need U"));
    assert!(interpolate("${E:?need E}", &vars).is_err());
    assert_eq!(interpolate("${E?ok}", &vars).unwrap(), "");
}
