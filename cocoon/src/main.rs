//! `cocoon`: one binary, one subcommand per role or chore. Each command lives in its own module
//! under `cli/`; this file only parses and dispatches.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cocoon", version, about = "Cocoon-rs: confidential OpenAI-compatible inference")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole network on this machine: gateway + router + worker + engine.
    Dev(cli::dev::DevArgs),
    /// Run the gateway and router; networked workers connect to `router.worker_listen`.
    Gateway(cli::gateway::GatewayArgs),
    /// Run a worker-agent that connects out to the router at `worker.router_url`, with its
    /// engine: vllm / llama-server / command run as a supervised child process, external is
    /// reached at `worker.engine_url`, builtin (and auto) is the in-process test engine.
    Worker(cli::worker::WorkerArgs),
    /// Verify a network's workers yourself: fetch `/v1/attestation/report` with a random nonce
    /// and check every worker's evidence locally. Exits non-zero on any failure.
    Verify(cli::verify::VerifyArgs),
    /// A local OpenAI-compatible endpoint that seals every request end to end to an attested
    /// worker and checks every answer and receipt: point any SDK's base URL at it.
    ClientProxy(cli::client_proxy::ClientProxyArgs),
    /// Signed receipts: `receipt verify` checks them offline against a saved report.
    Receipt(cli::receipt::ReceiptArgs),
    /// Attestation chores: `attest collateral fetch|show|refresh`.
    Attest(cli::attest::AttestArgs),
    /// Manage API keys (stored as SHA-256 hashes in the database every gateway reads).
    Keys(cli::keys::KeysArgs),
    /// Client and worker accounts in the ledger.
    Accounts(cli::accounts::AccountsArgs),
    /// Per-model prices (nanoTON per 1M tokens).
    Prices(cli::prices::PricesArgs),
    /// Ledger maintenance.
    Ledger(cli::ledger::LedgerArgs),
    /// TON payouts to workers.
    Payouts(cli::payouts::PayoutsArgs),
    /// The TON service wallet: `ton deploy-wallet` (do it before taking deposits).
    Ton(cli::ton::TonArgs),
    /// The policy registry contract on TON: `registry deploy|show|set-measurement|set-model|
    /// set-prices|set-gpu|set-gpu-value|set-endpoint` (the owner is the service wallet).
    Registry(cli::registry::RegistryArgs),
    /// Attestation policy chores: `policy import-rim` verifies NVIDIA RIMs (with xmlsec1) and
    /// writes their golden GPU measurements into `[attestation.policy.gpu]`.
    Policy(cli::policy::PolicyArgs),
    /// Print the OpenAPI document generated from the gateway's handlers.
    Openapi,
    /// Validate the configuration and exit (non-zero with one line per mistake).
    ConfigCheck(cli::config_check::ConfigCheckArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Dev(a) => cli::dev::run(a).await,
        Cmd::Gateway(a) => cli::gateway::run(a).await,
        Cmd::Worker(a) => cli::worker::run(a).await,
        Cmd::Verify(a) => cli::verify::run(a).await,
        Cmd::ClientProxy(a) => cli::client_proxy::run(a).await,
        Cmd::Receipt(a) => cli::receipt::run(a).await,
        Cmd::Attest(a) => cli::attest::run(a).await,
        Cmd::Keys(a) => cli::keys::run(a).await,
        Cmd::Accounts(a) => cli::accounts::run(a).await,
        Cmd::Prices(a) => cli::prices::run(a).await,
        Cmd::Ledger(a) => cli::ledger::run(a).await,
        Cmd::Payouts(a) => cli::payouts::run(a).await,
        Cmd::Ton(a) => cli::ton::run(a).await,
        Cmd::Registry(a) => cli::registry::run(a).await,
        Cmd::Policy(a) => cli::policy::run(a),
        Cmd::Openapi => cli::openapi::run(),
        Cmd::ConfigCheck(a) => cli::config_check::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
