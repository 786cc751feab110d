//! Collateral through the real network: the dev network's router fetches TDX collateral from a
//! PCS replay (the real dcap-qvl sample collateral under Intel's v4 paths and headers), its
//! background task publishes freshness on the gateway's `/metrics`, and `cocoon attest
//! collateral show` (the real binary) prints the cached entry.

mod common;

use std::process::Stdio;
use std::time::Duration;

use attestation::collateral::replay::ReplayServer;
use attestation::{Evidence, QuoteCollateralV3, TdxEvidence};

const TDX_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/tdx_quote");
const TDX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/tdx_quote_collateral.json");
/// Inside the sample collateral's window (2025-06-19 .. 2025-07-19).
const TDX_NOW: u64 = 1_751_328_000;

#[tokio::test]
async fn the_router_fetches_collateral_and_metrics_and_the_cli_show_its_freshness() {
    let replay = ReplayServer::start().await.expect("replay server");
    let collateral: QuoteCollateralV3 = serde_json::from_slice(TDX_COLLATERAL).expect("sample collateral");
    replay.serve_tdx(collateral);
    let url = replay.url();
    let net = common::start(|cfg| {
        cfg.attestation.collateral.pccs_url = url.clone();
        cfg.attestation.collateral.check_interval_secs = 1;
    })
    .await;
    let svc = net.router.attestor().collateral().expect("collateral service on by default").clone();
    // The quote's own time: fetched, checked and cached (under <data_dir>/collateral).
    let ev = Evidence::Tdx(TdxEvidence { quote: TDX_QUOTE.to_vec(), collateral: None });
    svc.fetch_for(&ev, &[], TDX_NOW).await.expect("fetch from the PCS replay");
    assert_eq!(replay.hits_matching("/tdx/certification/v4/tcb?fmspc=B0C06F000000"), 1);

    // The router's background task publishes the entry on the gateway's metrics listener.
    let metrics_url = format!("http://{}/metrics", net.gateway_metrics_addr.expect("the gateway serves metrics on its own listener"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = common::http().get(&metrics_url).send().await.expect("GET /metrics").text().await.expect("body");
        if body.contains("cocoon_attestation_collateral_expiry_seconds{") {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "no collateral gauges on /metrics within 20 s:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in [
        "cocoon_attestation_collateral_age_seconds",
        "cocoon_attestation_collateral_next_update_seconds",
        "cocoon_attestation_collateral_expiry_seconds",
        "cocoon_attestation_collateral_stale",
        "cocoon_attestation_collateral_next_expiry_timestamp_seconds",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert!(body.contains("id=\"FMSPC B0C06F000000\""), "{body}");
    // At real time the 2025 sample is long expired, and so is what the replay serves.
    let line = body.lines().find(|l| l.starts_with("cocoon_attestation_collateral_expiry_seconds{")).expect("expiry line");
    let secs: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number");
    assert!(secs < 0.0, "{line}");

    // The CLI reads the same disk cache.
    let dir = net._dir.path().to_path_buf();
    let cfg_file = dir.join("cocoon.toml");
    std::fs::write(
        &cfg_file,
        format!("data_dir = {:?}\n[attestation.collateral]\npccs_url = {:?}\n", dir.display().to_string(), url),
    )
    .expect("config file");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(common::cocoon_bin())
            .args(["attest", "--config"])
            .arg(&cfg_file)
            .args(["collateral", "show"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("`cocoon attest collateral show` finished within 60 s")
    .expect("cocoon runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("TDX FMSPC B0C06F000000"), "{text}");
    assert!(text.contains(&format!("source:      {url}")), "{text}");
    assert!(text.contains("next update: 2025-07-19T10:00:35Z"), "{text}");
    assert!(text.contains("TCB evaluation data number: 17"), "{text}");
    assert!(text.contains("status:      EXPIRED (PCK CRL)"), "{text}");
    eprintln!("{text}");
}
