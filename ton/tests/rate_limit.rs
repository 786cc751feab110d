//! The deposit watcher and the payout sender share toncenter's rate limit (1 request/s
//! without an API key) through one client-side limiter. Against the fake chain answering
//! 429 to any call closer than its limit to the previous one, both run together for a
//! minute of test time (a paused tokio clock advanced ~10x faster than real time, so that
//! HTTP and database work take little test time): the sender keeps its budget busy
//! (a lost batch broadcast again every round), deposits arrive in bursts, and every
//! deposit is credited by the first poll that starts after it lands: never late by a whole
//! poll interval (as a 429 failing the poll and its backoff would make it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing::{AccountKind, DepositFilter, DepositStatus, Ledger, Price, Usage};
use common::fake_chain::FakeChain;
use common::TestDb;
use tokio::time::Instant;
use ton::{
    Address, DepositConfig, DepositWatcher, Network, PayoutConfig, PayoutSender, ServiceWallet,
    TonApi, WalletKind,
};
use uuid::Uuid;

const WORDS: &str = "section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug";
const TON: i64 = 1_000_000_000;
const POLL: Duration = Duration::from_secs(10);
/// toncenter without an API key.
const LIMIT: Duration = Duration::from_secs(1);

/// Advances the paused clock 10 ms per ~1 ms of real time, and keeps the runtime busy so
/// that tokio never jumps the clock to the next timer while HTTP or database work is in
/// flight (which would make that work look seconds long).
fn accelerate_clock() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            std::thread::sleep(Duration::from_micros(1000));
            tokio::time::advance(Duration::from_millis(10)).await;
            tokio::task::yield_now().await;
        }
    })
}

async fn earning_worker(l: &Ledger, earn: i64, to: Address) {
    l.set_price(
        "m",
        Price {
            prompt: 1_000_000_000,
            ..Price::default()
        },
    )
    .await
    .unwrap();
    let client = l
        .ensure_account(AccountKind::Client, "payer")
        .await
        .unwrap();
    let w = l.ensure_account(AccountKind::Worker, "gpu").await.unwrap();
    l.credit(client, earn * 2, "fund-payer", "").await.unwrap();
    let job = Uuid::new_v4();
    l.hold(job, client, "m", earn * 2, Duration::from_secs(3600))
        .await
        .unwrap();
    let tokens = u64::try_from(earn / 1000).unwrap();
    l.capture(
        job,
        w,
        Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        },
        1000,
    )
    .await
    .unwrap();
    l.set_payout_address(w, &to.to_raw(), false).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn watcher_and_sender_share_the_limit_and_no_deposit_is_late() {
    let clock = accelerate_clock();
    let db = TestDb::sqlite().await;
    let l = db.ledger.clone();
    let wallet = ServiceWallet::from_mnemonic(WORDS, WalletKind::V5r1, Network::Testnet).unwrap();
    let chain = FakeChain::start(wallet.address(), wallet.wallet_id(), i128::from(100 * TON)).await;
    chain.with(|s| {
        s.min_gap = Some(LIMIT);
        // The sender's batch is never included: it is broadcast again every round, so the
        // sender spends its share of the budget the whole time.
        s.drop_messages = true;
    });

    // The server really limits: calls that are not paced get 429.
    let unpaced = TonApi::new(
        &format!("http://{}", chain.addr),
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    for _ in 0..3 {
        let _ = unpaced.masterchain_info().await;
    }
    assert!(
        chain.with(|s| s.rate_limited) >= 1,
        "the fake must enforce its limit"
    );
    tokio::time::sleep(LIMIT * 2).await;
    let before = chain.with(|s| (s.calls, s.rate_limited));

    // One API, one limiter, for both (what ton::from_config wires).
    let api = TonApi::new(
        &format!("http://{}", chain.addr),
        None,
        Duration::from_secs(60),
    )
    .unwrap()
    .with_requests_per_sec(1.0);
    let codes = ["RATE0001", "RATE0002"];
    for (i, code) in codes.iter().enumerate() {
        let a = l
            .ensure_account(AccountKind::Client, &format!("client-{i}"))
            .await
            .unwrap();
        db.set_code(a, code).await;
    }
    earning_worker(
        &l,
        2 * TON,
        Address {
            workchain: 0,
            hash: [7; 32],
        },
    )
    .await;
    let watcher = DepositWatcher::new(
        api.clone(),
        l.clone(),
        wallet.address(),
        DepositConfig {
            confirmations: 1,
            poll_interval_secs: POLL.as_secs(),
            page_size: 2,
            ..DepositConfig::default()
        },
    );
    let sender = PayoutSender::new(
        api,
        l.clone(),
        wallet,
        PayoutConfig {
            threshold_nanoton: TON,
            resend_after_secs: 0,
            ..PayoutConfig::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let t0 = Instant::now();
    let w = tokio::spawn(watcher.run(stopped(stop_rx.clone())));
    let s = tokio::spawn(sender.run(stopped(stop_rx.clone())));

    // The ledger is watched all along: when each deposit is first seen credited.
    let credited: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let checker = {
        let (l, credited) = (l.clone(), credited.clone());
        tokio::spawn(async move {
            loop {
                let list = l
                    .list_deposits(DepositFilter {
                        status: Some(DepositStatus::Credited),
                        limit: 100,
                        ..DepositFilter::default()
                    })
                    .await
                    .unwrap();
                let now = Instant::now();
                {
                    let mut c = credited.lock().unwrap();
                    for d in list {
                        c.entry(d.lt).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // Bursts of deposits (2, 3, 1, 2) at odd moments; each is confirmed as it lands
    // (confirmations 1, the fake's masterchain moves on with every transaction).
    let from = Address {
        workchain: 0,
        hash: [0xcc; 32],
    };
    let mut landed: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut n = 0u32;
    for (at, count) in [(3u64, 2u32), (17, 3), (33, 1), (44, 2)] {
        tokio::time::sleep_until(t0 + Duration::from_secs(at)).await;
        for _ in 0..count {
            let code = codes[(n % 2) as usize];
            n += 1;
            let lt = chain.with(|s| s.deposit(from, i128::from(TON), code));
            landed.insert(lt, Instant::now());
        }
    }

    tokio::time::sleep_until(t0 + Duration::from_secs(60)).await;
    stop_tx.send(true).unwrap();
    w.await.unwrap();
    s.await.unwrap();
    checker.abort();
    let credited = credited.lock().unwrap().clone();

    let (calls, limited) = chain.with(|s| (s.calls - before.0, s.rate_limited - before.1));
    let sent = chain.with(|s| s.posts);
    // A poll is at most masterchainInfo + 3 pages; each call waits at most for one call of
    // the sender ahead of it in the limiter's queue.
    let one_poll = LIMIT * 2 * 4;
    let mut lateness = Vec::new();
    for (lt, at) in &landed {
        let done = credited.get(lt).unwrap_or_else(|| {
            panic!("deposit lt {lt} never credited ({calls} calls, {limited} answered 429)")
        });
        lateness.push(done.duration_since(*at));
    }
    eprintln!(
        "{calls} calls in 60 s of test time ({limited} answered 429), {sent} broadcasts; \
         deposit lateness: {lateness:?}"
    );
    for late in &lateness {
        assert!(
            *late <= POLL + one_poll,
            "a deposit was credited {late:?} after it landed: a poll was lost ({lateness:?})"
        );
    }
    // The budget was really shared: both used it, and the pace kept the calls under the
    // limit (a 429 can still happen on jitter; it is retried, not a lost poll).
    assert!(sent >= 5, "the sender kept broadcasting ({sent})");
    assert!(calls <= 62, "{calls} calls in 60 s at 1/s");
    assert!(
        limited * 10 <= calls,
        "{limited} of {calls} calls answered 429"
    );
    // Still on the accelerated clock: a paused idle runtime would jump to the database
    // pool's timeout.
    db.finish().await;
    clock.abort();
}
