//! `cocoon dev`: the whole network on this machine.

use clap::Args;

use super::{init_tracing, wait_for_signal, ConfigArg};

#[derive(Args)]
pub struct DevArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Gateway address (overrides gateway.listen).
    #[arg(long)]
    listen: Option<String>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut cfg = args.config.load_for(cocoon::config::Role::Dev)?;
    if let Some(l) = args.listen {
        cfg.gateway.listen = l;
        cfg.validate()?;
    }
    init_tracing(&cfg.log);
    let net = cocoon::dev::DevNetwork::start(cfg).await?;
    banner(&net, &net.engine_description);
    wait_for_signal().await;
    eprintln!("stopping: draining in-flight requests");
    net.shutdown().await;
    Ok(())
}

fn banner(net: &cocoon::dev::DevNetwork, engine_desc: &str) {
    let model = net.router.models().first().map(|m| m.id.clone()).unwrap_or_default();
    if net.router.snapshot().iter().any(|w| w.insecure_simulated) {
        eprintln!(
            r#"
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! INSECURE SIMULATED TEE (dev only). The worker attests with a per-run software key:  !!
!! jobs are sealed end to end (HPKE), but NO HARDWARE protects them. Every answer says  !!
!! so in the header `x-cocoon-tee: simulated`. Never send real secrets to this network. !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
  check it yourself: cocoon verify --base-url {base} --model {model} --allow-simulated"#,
            base = net.base_url,
        );
    }
    println!(
        r#"
Cocoon-rs dev network is up.
  engine:   {engine_desc}
  base URL: {base}
  API key:  {key}
  model:    {model}
  metrics:  {metrics}

Try it (pip install openai):

python3 - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}", api_key="{key}")
stream = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Say hello"}}],
    stream=True,
    stream_options={{"include_usage": True}},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print("\nusage:", chunk.usage)
PY

or: curl {base}/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
      -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}'

Ctrl-C stops it (in-flight streams finish first)."#,
        base = net.base_url,
        key = net.api_key,
        metrics = net.gateway_metrics_addr.map_or("off".to_string(), |a| format!("http://{a}/metrics")),
    );
}
