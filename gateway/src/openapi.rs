//! The OpenAPI document, generated from the handlers. `openapi/openapi.json` is this output,
//! committed; a test fails when the two drift (`cocoon openapi > openapi/openapi.json` updates it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cocoon-rs API",
        description = "OpenAI-compatible API of the Cocoon-rs confidential inference network. Request bodies are forwarded to the serving engine unchanged; only the fields documented here are validated.",
        license(name = "Apache-2.0")
    ),
    paths(
        handlers::chat_completions,
        handlers::completions,
        handlers::embeddings,
        handlers::create_response,
        crate::stored::get_response,
        crate::stored::delete_response,
        crate::stored::input_items_of,
        handlers::list_models,
        handlers::get_model,
        crate::account::balance,
        crate::account::usage,
        crate::account::worker_earnings,
        crate::attest::report,
        crate::dashboard::api::config,
        crate::dashboard::api::sign_in_telegram,
        crate::dashboard::api::ton_payload,
        crate::dashboard::api::sign_in_ton,
        crate::dashboard::api::me,
        crate::dashboard::api::list_keys,
        crate::dashboard::api::create_key,
        crate::dashboard::api::rename_key,
        crate::dashboard::api::revoke_key,
        crate::dashboard::api::balance,
        crate::dashboard::api::usage,
        crate::dashboard::api::workers,
        crate::dashboard::api::set_payout_address,
        handlers::healthz,
        handlers::readyz,
    ),
    components(schemas(protocol::ErrorBody, protocol::ErrorObject, protocol::Usage)),
    modifiers(&BearerAuth),
    tags(
        (name = "inference", description = "Chat completions, completions, embeddings and the Responses API"),
        (name = "models", description = "Models served by attested workers"),
        (name = "account", description = "Balances, usage and worker earnings in nanoTON"),
        (name = "attestation", description = "Evidence that workers run the approved image in a TEE"),
        (name = "dashboard", description = "The web dashboard's API: sign-in (Telegram Mini App initData, TON Connect ton_proof), the caller's API keys, balance and deposits, usage by day, and the workers it operates. Authenticated by a dashboard session token or an API key; everything is the caller's own account."),
        (name = "ops", description = "Health and readiness (Prometheus metrics are served on their own listener, `gateway.metrics_listen`)")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An API key `sk-cocoon-…`, a JWT issued by this network, or (dashboard endpoints) a dashboard session token"))
                        .build(),
                ),
            );
        }
    }
}

/// The spec as committed: pretty JSON with a trailing newline.
pub fn spec_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_spec_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
        let generated = super::spec_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi/openapi.json is out of date: run `cargo run -p cocoon -- openapi > openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test -p gateway openapi)"
        );
    }
}
