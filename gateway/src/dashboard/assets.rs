//! Serving the built dashboard (`dashboard/dist`, from `scripts/build-dashboard`) from disk,
//! and the TON Connect manifest wallets fetch to show who is asking.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;

use super::{dashboard, Dashboard};
use crate::error::ApiError;
use crate::state::AppState;

/// Pages may load scripts and styles from this origin only; they talk to this origin and to
/// TON Connect bridges (https); Telegram Web embeds the Mini App in an iframe.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; \
     connect-src 'self' https:; frame-ancestors 'self' https://web.telegram.org https://*.telegram.org; \
     base-uri 'none'; form-action 'none'";

fn content_type(path: &FsPath) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}

/// `rel` under `root`, refusing anything that could leave it.
fn resolve(root: &FsPath, rel: &str) -> Option<PathBuf> {
    let rel = FsPath::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

async fn serve(d: &Dashboard, rel: &str) -> Response {
    let Some(path) = resolve(&d.cfg.assets_dir, rel) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
            headers.insert(header::HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CSP));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            // The bundle's name does not change with its content: revalidate every time.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            (headers, bytes).into_response()
        }
        Err(e) if rel == "index.html" => {
            tracing::warn!(dir = %d.cfg.assets_dir.display(), error = %e, "dashboard assets missing");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "The dashboard is not built: no {}.\nRun scripts/build-dashboard (or set gateway.dashboard.assets_dir).\n",
                    path.display()
                ),
            )
                .into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

pub async fn redirect() -> Redirect {
    Redirect::permanent("/dashboard/")
}

pub async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(serve(dashboard(&state)?, "index.html").await)
}

pub async fn file(State(state): State<AppState>, Path(path): Path<String>) -> Result<Response, ApiError> {
    Ok(serve(dashboard(&state)?, &path).await)
}

/// TON Connect manifest (ton-connect/sdk: `url`, `name`, `iconUrl`): `url` is what wallets
/// show and what the page's domain must match.
pub async fn manifest(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let d = dashboard(&state)?;
    let base = match &d.cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            // No public URL configured (dev): the address this request came to.
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    Ok(Json(serde_json::json!({
        "url": base,
        "name": d.cfg.app_name,
        "iconUrl": format!("{base}/dashboard/icon.png"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_assets_dir() {
        let root = FsPath::new("/srv/dash");
        assert_eq!(resolve(root, "app.js"), Some(PathBuf::from("/srv/dash/app.js")));
        assert_eq!(resolve(root, "a/b.css"), Some(PathBuf::from("/srv/dash/a/b.css")));
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../x", "./x"] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }
}
