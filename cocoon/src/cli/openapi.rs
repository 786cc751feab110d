//! `cocoon openapi`: the OpenAPI document generated from the gateway's handlers.

pub fn run() -> anyhow::Result<()> {
    print!("{}", gateway::openapi::spec_json());
    Ok(())
}
