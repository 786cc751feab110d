//! What the worker decides about its engine's command line and environment: the vLLM flags
//! it sets itself, and, in production, the flags and variables it refuses because they make
//! the engine log prompts or outputs (or lock the worker out). The GPU owner controls
//! `engine.args`, `engine.env` and the worker's own environment, and attestation does not
//! cover them, so the worker checks them before it starts the engine.
//!
//! Source for every rule: vLLM v0.11.0 (`vllm/engine/arg_utils.py`,
//! `vllm/entrypoints/openai/cli_args.py`, `vllm/entrypoints/openai/api_server.py`,
//! `vllm/envs.py`, `vllm/utils/__init__.py` for `FlexibleArgumentParser`).

use std::time::Duration;

/// Flags that make vLLM log request or response contents, or change who may call it.
/// `--enable-log-requests` (AsyncEngineArgs, arg_utils.py): logs every prompt
/// (`vllm/entrypoints/logger.py` "Received request …: prompt: …"); `--no-disable-log-requests`
/// is its deprecated spelling. `--enable-log-outputs` (cli_args.py): logs every output.
/// `--api-key` (cli_args.py): the server then answers 401 to the worker's own `/v1/models`.
/// `--config FILE` (FlexibleArgumentParser): reads more flags from a YAML file the worker
/// cannot check; put them in `engine.args` instead.
pub const REFUSED_VLLM_FLAGS: [&str; 5] = [
    "--enable-log-requests",
    "--no-disable-log-requests",
    "--enable-log-outputs",
    "--api-key",
    "--config",
];

/// Environment variables refused in production (`vllm/envs.py`) and why.
pub const REFUSED_VLLM_ENV: [(&str, &str); 3] = [
    (
        "VLLM_DEBUG_LOG_API_SERVER_RESPONSE",
        "logs every response body (api_server.py log_response middleware)",
    ),
    (
        "VLLM_SERVER_DEV_MODE",
        "enables development endpoints and error stack traces in logs",
    ),
    (
        "VLLM_API_KEY",
        "the engine would answer 401 to the worker's own /v1/models and /metrics",
    ),
];

/// An argument's option name as vLLM's `FlexibleArgumentParser` reads it: `--a_b=x` is
/// `--a-b` (it turns underscores into dashes before argparse sees them).
fn option_name(arg: &str) -> Option<String> {
    let body = arg.strip_prefix("--")?;
    let name = body.split('=').next().unwrap_or(body);
    // Dotted options (`--compilation-config.level`) only convert up to the first dot.
    let (head, tail) = name.split_once('.').map_or((name, None), |(h, t)| (h, Some(t)));
    let mut out = format!("--{}", head.replace('_', "-"));
    if let Some(t) = tail {
        out.push('.');
        out.push_str(t);
    }
    Some(out)
}

/// Whether `arg` names `flag`: exactly, or as an abbreviation argparse would accept (its
/// parser allows unambiguous prefixes, so `--enable-log-req` is `--enable-log-requests`).
fn names(arg: &str, flag: &str) -> bool {
    option_name(arg).is_some_and(|n| n.len() > 2 && flag.starts_with(&n))
}

/// The value given for `flag` in `args` (`--flag v` or `--flag=v`), if any.
fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if option_name(a).as_deref() == Some(flag) {
            return match a.split_once('=') {
                Some((_, v)) => Some(v),
                None => it.next().map(String::as_str),
            };
        }
    }
    None
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| option_name(a).as_deref() == Some(flag))
}

/// Whether a refused variable is on: `VLLM_API_KEY` with any value; the flags unless empty,
/// "0" or "false" (vLLM reads them as `bool(int(v))` or `v.lower() == "true"`; any other value
/// is refused to be safe).
fn env_on(name: &str, value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    if name == "VLLM_API_KEY" {
        return !value.is_empty();
    }
    !(v.is_empty() || v == "0" || v == "false")
}

/// What production refuses in an engine's command line and environment, one line each
/// naming the setting. `args`: `engine.args`; `env`: `engine.env`; `inherited`: the worker's
/// own environment (the engine inherits it).
pub fn prompt_logging_violations<'a>(
    args: &[String],
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    inherited: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        for flag in REFUSED_VLLM_FLAGS {
            if names(a, flag) {
                out.push(format!(
                    "engine.args contains {a:?} ({flag}), which is refused when environment = \"production\": {}",
                    match flag {
                        "--api-key" => "the engine would refuse the worker's own calls",
                        "--config" => "flags in a config file cannot be checked; put them in engine.args",
                        _ => "it makes the engine log request contents",
                    }
                ));
            }
        }
    }
    for (k, v) in env {
        if let Some((_, why)) = REFUSED_VLLM_ENV.iter().find(|(name, _)| *name == k) {
            if env_on(k, v) {
                out.push(format!(
                    "engine.env sets {k}, which is refused when environment = \"production\": {why}"
                ));
            }
        }
    }
    for (k, v) in inherited {
        if let Some((_, why)) = REFUSED_VLLM_ENV.iter().find(|(name, _)| *name == k) {
            if env_on(&k, &v) {
                out.push(format!(
                    "the worker's environment sets {k}, which the engine inherits and which is refused when environment = \"production\": {why}; unset it"
                ));
            }
        }
    }
    out
}

/// What the worker decides for a vLLM engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VllmOptions {
    /// `--max-num-seqs`: the worker's `worker.slots`, so the engine runs exactly as many
    /// sequences as the worker advertises (vLLM's own default is 1024 on >= 70 GiB GPUs that
    /// are not A100s and 256 otherwise, and no endpoint reports it).
    pub max_num_seqs: u32,
    /// `--tool-call-parser` (with `--enable-auto-tool-choice`): e.g. `hermes` for Qwen2.5,
    /// `llama3_json` for Llama 3.1/3.2, `mistral`. Without one, vLLM answers 400 to a
    /// request with `tools` and `tool_choice` "auto" (its default when `tools` is present).
    pub tool_call_parser: Option<String>,
    /// Progress watchdog (see [`crate::config::EngineProcessConfig::progress_timeout`]).
    pub progress_timeout: Option<Duration>,
}

/// The worker's own vLLM flags, given the configured `extra` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerFlags {
    /// To put before `extra`.
    pub flags: Vec<String>,
    /// Whether tool calls with `tool_choice` "auto" are served (a parser is set).
    pub tool_calls: bool,
}

/// `--max-num-seqs`, `--enable-prompt-tokens-details` (so usage carries
/// `prompt_tokens_details.cached_tokens`, which the ledger prices as its own class) and, with a
/// parser, `--enable-auto-tool-choice --tool-call-parser P`. A flag `extra` already sets to the
/// same value is not repeated; a different value is an error naming both settings.
pub fn vllm_worker_flags(opts: &VllmOptions, extra: &[String]) -> Result<WorkerFlags, String> {
    let mut flags = Vec::new();
    let seqs = opts.max_num_seqs.to_string();
    match value_of(extra, "--max-num-seqs") {
        Some(v) if v.trim() == seqs => {}
        Some(v) => {
            return Err(format!(
                "engine.args sets --max-num-seqs {v} but the worker passes worker.slots ({seqs}) itself, so the \
                 engine runs as many sequences as the worker advertises; remove it from engine.args or set worker.slots = {v}"
            ))
        }
        None => flags.extend(["--max-num-seqs".to_string(), seqs]),
    }
    if !has_flag(extra, "--enable-prompt-tokens-details") {
        flags.push("--enable-prompt-tokens-details".into());
    }
    let in_args = value_of(extra, "--tool-call-parser");
    let auto_in_args = has_flag(extra, "--enable-auto-tool-choice");
    let tool_calls = match (&opts.tool_call_parser, in_args) {
        (Some(p), Some(a)) if p != a => {
            return Err(format!(
                "engine.tool_call_parser = {p:?} but engine.args passes --tool-call-parser {a}; set it in one place"
            ))
        }
        (Some(p), _) => {
            if !auto_in_args {
                flags.push("--enable-auto-tool-choice".into());
            }
            if in_args.is_none() {
                flags.extend(["--tool-call-parser".to_string(), p.clone()]);
            }
            true
        }
        (None, Some(_)) if auto_in_args => true,
        (None, Some(_)) => false,
        (None, None) if auto_in_args => {
            return Err(
                "engine.args passes --enable-auto-tool-choice without a parser; set engine.tool_call_parser (e.g. \"hermes\")"
                    .into(),
            )
        }
        (None, None) => false,
    };
    Ok(WorkerFlags { flags, tool_calls })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn refuses_prompt_logging_flags_in_every_spelling() {
        for arg in [
            "--enable-log-requests",
            "--enable_log_requests",
            "--enable-log-req",
            "--no-disable-log-requests",
            "--enable-log-outputs",
            "--api-key=abc",
            "--api_key",
            "--config",
        ] {
            let v = prompt_logging_violations(&s(&[arg]), [], []);
            assert_eq!(v.len(), 1, "{arg}: {v:?}");
            assert!(v[0].contains("engine.args") && v[0].contains(arg), "{v:?}");
        }
        for ok in ["--disable-log-requests", "--no-enable-log-requests", "--max-num-seqs", "--config-format", "-O3", "serve"] {
            assert!(prompt_logging_violations(&s(&[ok]), [], []).is_empty(), "{ok}");
        }
        let v = prompt_logging_violations(
            &[],
            [("VLLM_SERVER_DEV_MODE", "1"), ("VLLM_DEBUG_LOG_API_SERVER_RESPONSE", "false"), ("HF_HOME", "/x")],
            [("VLLM_API_KEY".to_string(), "k".to_string()), ("VLLM_SERVER_DEV_MODE".to_string(), "0".to_string())],
        );
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("engine.env sets VLLM_SERVER_DEV_MODE"), "{v:?}");
        assert!(v[1].contains("the worker's environment sets VLLM_API_KEY"), "{v:?}");
    }

    #[test]
    fn the_worker_sets_its_own_vllm_flags_and_refuses_contradictions() {
        let mut o = VllmOptions { max_num_seqs: 64, tool_call_parser: None, progress_timeout: None };
        let f = vllm_worker_flags(&o, &[]).unwrap();
        assert_eq!(f.flags, s(&["--max-num-seqs", "64", "--enable-prompt-tokens-details"]));
        assert!(!f.tool_calls);
        // Same value given: not repeated. Another value: refused, naming both settings.
        assert_eq!(vllm_worker_flags(&o, &s(&["--max_num_seqs=64"])).unwrap().flags, s(&["--enable-prompt-tokens-details"]));
        let e = vllm_worker_flags(&o, &s(&["--max-num-seqs", "512"])).unwrap_err();
        assert!(e.contains("--max-num-seqs 512") && e.contains("worker.slots"), "{e}");
        o.tool_call_parser = Some("hermes".into());
        let f = vllm_worker_flags(&o, &[]).unwrap();
        assert!(f.tool_calls);
        assert!(f.flags.join(" ").ends_with("--enable-auto-tool-choice --tool-call-parser hermes"), "{:?}", f.flags);
        let e = vllm_worker_flags(&o, &s(&["--tool-call-parser", "mistral"])).unwrap_err();
        assert!(e.contains("engine.tool_call_parser"), "{e}");
        o.tool_call_parser = None;
        assert!(vllm_worker_flags(&o, &s(&["--enable-auto-tool-choice"])).is_err());
        assert!(vllm_worker_flags(&o, &s(&["--enable-auto-tool-choice", "--tool-call-parser=hermes"])).unwrap().tool_calls);
    }
}
