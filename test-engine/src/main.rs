//! `test-engine --listen 127.0.0.1:8000 [--model cocoon-test]... [--ttft-ms 0] [--tokens-per-second 0] [--embedding-dim 64]`

use std::process::ExitCode;
use std::time::Duration;

use test_engine::{serve, EngineConfig, TestEngine};

const USAGE: &str = "usage: test-engine [--listen ADDR] [--model ID]... [--ttft-ms MS] [--tokens-per-second TPS] [--embedding-dim N] [--max-tokens-default N]

A deterministic OpenAI-compatible test server (not a model).
  --listen ADDR              address to bind (default 127.0.0.1:8000; port 0 picks one)
  --model ID                 served model id, repeatable (default cocoon-test)
  --ttft-ms MS               delay before the first token (default 0)
  --tokens-per-second TPS    token rate, 0 = unlimited (default 0)
  --embedding-dim N          embedding size (default 64)
  --max-tokens-default N     documented default length cap (default 16)";

struct Args {
    listen: String,
    cfg: EngineConfig,
}

/// Hand-written parsing keeps clap out of this crate; accepts `--flag value` and `--flag=value`.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen = "127.0.0.1:8000".to_string();
    let mut cfg = EngineConfig::default();
    let mut models = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a non-negative integer: {v}"))
        };
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--model" => models.push(value()?),
            "--ttft-ms" => cfg.ttft = Duration::from_millis(num(value()?)?),
            "--tokens-per-second" => {
                let v = value()?;
                let tps: f64 = v
                    .parse()
                    .map_err(|_| format!("{flag}: not a number: {v}"))?;
                if !tps.is_finite() || tps < 0.0 {
                    return Err(format!("{flag} must be >= 0"));
                }
                cfg.tokens_per_second = tps;
            }
            "--embedding-dim" => {
                let d = num(value()?)?;
                if !(1..=4096).contains(&d) {
                    return Err(format!("{flag} must be within 1..=4096"));
                }
                cfg.embedding_dim = d as usize;
            }
            "--max-tokens-default" => {
                cfg.max_tokens_default =
                    u32::try_from(num(value()?)?).map_err(|_| format!("{flag} is too large"))?;
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    if !models.is_empty() {
        cfg.models = models;
    }
    Ok(Some(Args { listen, cfg }))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("test-engine: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("test-engine: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or(args.listen.clone(), |a| a.to_string());
    // Tests and scripts wait for this exact line (stdout is line-buffered, so it is flushed).
    println!("test-engine listening on http://{addr}");
    match serve(listener, TestEngine::new(args.cfg), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Option<Args>, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let a = p(&[
            "--listen",
            "0.0.0.0:1",
            "--model",
            "a",
            "--model=b",
            "--ttft-ms",
            "5",
            "--tokens-per-second=2.5",
            "--embedding-dim",
            "8",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.listen, "0.0.0.0:1");
        assert_eq!(a.cfg.models, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(a.cfg.ttft, Duration::from_millis(5));
        assert_eq!(a.cfg.tokens_per_second, 2.5);
        assert_eq!(a.cfg.embedding_dim, 8);
        assert!(p(&["--help"]).unwrap().is_none());
        assert_eq!(p(&[]).unwrap().unwrap().cfg, EngineConfig::default());
        for bad in [
            &["--nope"][..],
            &["--listen"],
            &["--ttft-ms", "x"],
            &["--tokens-per-second", "-1"],
            &["--embedding-dim", "0"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
