//! The payout sender against the fake chain (`common::fake_chain`), on Postgres and on
//! SQLite: the happy path (first batch deploys the wallet, bounce flags by destination
//! state), a crash after the broadcast and before the confirmation, a crash before the
//! broadcast, an expired batch rebuilt only once the chain's time has passed it, a seqno
//! used by another message, transfers that fail in the action phase, index lag, an
//! underfunded wallet, and two senders killed at random. After each: every payout went out
//! exactly once, and every ledger invariant holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use billing::{AccountId, AccountKind, BatchStatus, Ledger, PayoutStatus, Price, Usage};
use common::fake_chain::FakeChain;
use common::{Rng, TestDb};
use ton::{
    payout_comment, Address, Network, PayoutConfig, PayoutSender, ServiceWallet, Step, Transfer,
    WalletKind,
};
use uuid::Uuid;

const WORDS: &str = "section garden tomato dinner season dice renew length useful spin trade intact use universe what post spike keen mandate behind concert egg doll rug";
const TON: i64 = 1_000_000_000;

fn wallet() -> ServiceWallet {
    static W: OnceLock<ServiceWallet> = OnceLock::new();
    W.get_or_init(|| {
        ServiceWallet::from_mnemonic(WORDS, WalletKind::V5r1, Network::Testnet).unwrap()
    })
    .clone()
}

fn config() -> PayoutConfig {
    PayoutConfig {
        threshold_nanoton: TON,
        max_batch: 100,
        message_ttl_secs: 120,
        expiry_grace_secs: 60,
        resend_after_secs: 3600,
        ..PayoutConfig::default()
    }
}

fn dest(n: u8) -> Address {
    Address {
        workchain: 0,
        hash: [n; 32],
    }
}

/// A worker that earned `earn` nanoTON (a captured job), paid to `dest(n)`.
async fn worker(l: &Ledger, n: u8, earn: i64, bounceable: bool) -> AccountId {
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
        .ensure_account(AccountKind::Client, &format!("payer-{n}"))
        .await
        .unwrap();
    let w = l
        .ensure_account(AccountKind::Worker, &format!("gpu-{n}"))
        .await
        .unwrap();
    l.credit(
        client,
        earn * 2,
        &format!("fund-{n}-{}", Uuid::new_v4()),
        "",
    )
    .await
    .unwrap();
    let job = Uuid::new_v4();
    l.hold(job, client, "m", earn * 2, Duration::from_secs(60))
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
    l.set_payout_address(w, &dest(n).to_raw(), bounceable)
        .await
        .unwrap();
    w
}

async fn chain(balance: i128) -> FakeChain {
    let w = wallet();
    FakeChain::start(w.address(), w.wallet_id(), balance).await
}

fn sender(chain: &FakeChain, ledger: &Ledger, config: PayoutConfig) -> PayoutSender {
    PayoutSender::new(chain.api.clone(), ledger.clone(), wallet(), config)
}

/// Every payout in the ledger is confirmed, went out exactly once with its amount and
/// comment, and its transaction hash is the chain's.
async fn assert_paid_once(l: &Ledger, chain: &FakeChain) {
    let payouts = l
        .list_payouts(billing::PayoutFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!payouts.is_empty());
    let st = chain.state.lock().unwrap();
    for p in &payouts {
        assert_eq!(p.status, PayoutStatus::Confirmed, "{p:?}");
        let sent = st.sent_with(&payout_comment(p.id));
        assert_eq!(
            sent.len(),
            1,
            "payout {} went out {} times",
            p.id,
            sent.len()
        );
        assert_eq!(
            (sent[0].to.to_raw(), sent[0].amount),
            (p.address.clone(), p.amount)
        );
        let tx = st
            .txs
            .iter()
            .find(|t| t["lt"].as_str().unwrap().parse::<u64>().unwrap() == sent[0].tx_lt)
            .unwrap();
        let hash = ton::api::normalize_hash(tx["hash"].as_str().unwrap()).unwrap();
        assert_eq!(p.tx_hash.as_deref(), Some(hash.as_str()));
    }
    assert_eq!(
        st.transfers.len(),
        payouts.len(),
        "no transfer that is not a payout"
    );
}

async fn happy_path(db: &TestDb) {
    let l = &db.ledger;
    let w1 = worker(l, 1, 3 * TON, true).await; // bounceable, deployed destination
    let w2 = worker(l, 2, 2 * TON, false).await; // owner gave a non-bounceable form
    let w3 = worker(l, 3, 5 * TON, true).await; // bounceable form, destination not deployed
    let _poor = worker(l, 4, TON / 2, true).await; // under the threshold
    let chain = chain(100 * i128::from(TON)).await;
    chain.with(|s| s.accounts.insert(dest(1), "active"));
    let s = sender(&chain, l, config());

    let r = s.run_once().await.unwrap();
    assert_eq!(r.created, 3);
    let Step::Sent {
        batch,
        seqno: 0,
        payouts: 3,
    } = r.step
    else {
        panic!("{r:?}")
    };
    assert!(
        chain.with(|s| s.deployed),
        "the first batch carries the state init"
    );
    let b = l.payout_batch(batch).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::Sent);
    for p in l.payouts_for_worker(w1, 10).await.unwrap() {
        assert_eq!(p.status, PayoutStatus::Sent);
    }

    let r = s.run_once().await.unwrap();
    assert_eq!(
        r.step,
        Step::Settled {
            batch,
            status: BatchStatus::Confirmed,
            delivered: 3
        }
    );
    assert_eq!(s.run_once().await.unwrap().step, Step::Idle);
    assert_paid_once(l, &chain).await;
    let bounce = |w: AccountId| {
        let chain = chain.clone();
        let l = l.clone();
        async move {
            let p = l.payouts_for_worker(w, 1).await.unwrap().pop().unwrap();
            chain.with(|s| s.sent_with(&payout_comment(p.id))[0].bounce)
        }
    };
    assert!(bounce(w1).await);
    assert!(!bounce(w2).await);
    assert!(
        !bounce(w3).await,
        "undeployed destinations get non-bounceable transfers"
    );
    for w in [w1, w2, w3] {
        assert_eq!(l.worker_earnings(w).await.unwrap().balance, 0);
    }
    assert_eq!(chain.with(|s| (s.posts, s.applied, s.seqno)), (1, 1, 1));
}

/// The broadcast reached the chain but the process died (here: the reply was lost) before
/// noting it. The restarted sender looks at the chain, finds the batch and confirms it
/// without sending anything.
async fn crash_after_send_before_confirm(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    worker(l, 2, 4 * TON, true).await;
    let chain = chain(100 * i128::from(TON)).await;
    chain.with(|s| s.apply_then_fail = 1);
    let r = sender(&chain, l, config()).run_once().await.unwrap();
    let Step::SendFailed { batch, .. } = r.step else {
        panic!("{r:?}")
    };
    assert_eq!(
        l.payout_batch(batch).await.unwrap().unwrap().status,
        BatchStatus::Prepared
    );
    assert_eq!(chain.with(|s| s.applied), 1, "it did land");

    let restarted = db.reopen().await;
    let s = sender(
        &chain,
        &restarted,
        PayoutConfig {
            resend_after_secs: 0,
            ..config()
        },
    );
    let r = s.run_once().await.unwrap();
    assert_eq!(
        r.step,
        Step::Settled {
            batch,
            status: BatchStatus::Confirmed,
            delivered: 2
        }
    );
    assert_eq!(
        chain.with(|s| (s.posts, s.applied)),
        (1, 1),
        "nothing sent again"
    );
    assert_eq!(s.run_once().await.unwrap().step, Step::Idle);
    assert_paid_once(&restarted, &chain).await;
    restarted.close().await;
}

/// The process died after saving the batch and before the broadcast reached the chain:
/// the restarted sender broadcasts the same saved message (same seqno, same hash).
async fn crash_before_send(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let chain = chain(100 * i128::from(TON)).await;
    chain.with(|s| s.fail_posts = 1);
    let r = sender(&chain, l, config()).run_once().await.unwrap();
    let Step::SendFailed { batch, .. } = r.step else {
        panic!("{r:?}")
    };
    let saved = l.payout_batch(batch).await.unwrap().unwrap();

    let restarted = db.reopen().await;
    let s = sender(&chain, &restarted, config());
    assert_eq!(s.run_once().await.unwrap().step, Step::Resent { batch });
    assert_eq!(
        restarted
            .payout_batch(batch)
            .await
            .unwrap()
            .unwrap()
            .msg_hash,
        saved.msg_hash
    );
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch,
            status: BatchStatus::Confirmed,
            delivered: 1
        }
    );
    assert_eq!(chain.with(|s| (s.posts, s.applied)), (2, 1));
    assert_paid_once(&restarted, &chain).await;
    restarted.close().await;
}

/// Broadcasts are lost. The batch is given up only once the chain's time is past its
/// `valid_until` + grace with the seqno unused; then the old message cannot land any more
/// and the payouts go out in a new one.
async fn expired_batch_is_rebuilt(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    worker(l, 2, 2 * TON, false).await;
    let chain = chain(100 * i128::from(TON)).await;
    chain.with(|s| s.drop_messages = true);
    let s = sender(
        &chain,
        l,
        PayoutConfig {
            resend_after_secs: 0,
            ..config()
        },
    );
    let Step::Sent {
        batch, seqno: 0, ..
    } = s.run_once().await.unwrap().step
    else {
        panic!()
    };
    let old = l.payout_batch(batch).await.unwrap().unwrap();
    assert_eq!(
        old.valid_until,
        1_700_000_000 + 120,
        "valid_until follows the chain's clock"
    );

    // Before valid_until it is broadcast again (and lost again).
    chain.with(|s| s.now = old.valid_until - 1);
    assert_eq!(s.run_once().await.unwrap().step, Step::Resent { batch });
    // Past valid_until but within the grace the chain refuses it, yet the sender does
    // not give it up: a slower clock somewhere could still let it land.
    chain.with(|s| s.now = old.valid_until + 60);
    assert!(
        matches!(s.run_once().await.unwrap().step, Step::SendFailed { batch: b, .. } if b == batch)
    );
    assert!(l
        .payout_batch(batch)
        .await
        .unwrap()
        .unwrap()
        .status
        .is_open());
    // Past the grace: expired, payouts pending again.
    chain.with(|s| s.now = old.valid_until + 61);
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch,
            status: BatchStatus::Expired,
            delivered: 0
        }
    );
    for p in l.list_payouts(Default::default()).await.unwrap() {
        assert_eq!((p.status, p.batch_id), (PayoutStatus::Pending, None));
    }
    // The old message is refused by the chain now.
    chain.with(|s| {
        s.drop_messages = false;
        assert!(s.submit(&old.boc).unwrap_err().contains("expired"));
    });
    let Step::Sent {
        batch: rebuilt,
        seqno: 0,
        payouts: 2,
    } = s.run_once().await.unwrap().step
    else {
        panic!()
    };
    let new = l.payout_batch(rebuilt).await.unwrap().unwrap();
    assert_ne!(new.msg_hash, old.msg_hash);
    assert!(new.valid_until > old.valid_until);
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch: rebuilt,
            status: BatchStatus::Confirmed,
            delivered: 2
        }
    );
    assert_paid_once(l, &chain).await;
}

/// Another message (same key, e.g. an operator's manual transfer) used the batch's seqno:
/// the batch can never land; its payouts go out with the next seqno.
async fn seqno_used_by_another_message(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let chain = chain(100 * i128::from(TON)).await;
    chain.with(|s| s.drop_messages = true);
    let s = sender(&chain, l, config());
    let Step::Sent {
        batch, seqno: 0, ..
    } = s.run_once().await.unwrap().step
    else {
        panic!()
    };
    let manual = wallet()
        .sign_transfers(
            &[Transfer {
                to: dest(99),
                amount: TON,
                bounce: false,
                comment: "manual".into(),
            }],
            0,
            1_700_000_000 + 600,
            true,
        )
        .unwrap();
    chain.with(|s| {
        s.drop_messages = false;
        s.submit(&manual.boc).unwrap();
    });
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch,
            status: BatchStatus::Superseded,
            delivered: 0
        }
    );
    let Step::Sent {
        batch: next,
        seqno: 1,
        ..
    } = s.run_once().await.unwrap().step
    else {
        panic!()
    };
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch: next,
            status: BatchStatus::Confirmed,
            delivered: 1
        }
    );
    let payouts = l.list_payouts(Default::default()).await.unwrap();
    chain.with(|s| {
        assert_eq!(s.sent_with("manual").len(), 1);
        assert_eq!(s.sent_with(&payout_comment(payouts[0].id)).len(), 1);
    });
}

/// A transfer that fails in the action phase (ignore-errors mode skips it) is not
/// confirmed; it goes into the next batch.
async fn failed_transfer_goes_again(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let w2 = worker(l, 2, 2 * TON, true).await;
    worker(l, 3, 4 * TON, true).await;
    let chain = chain(100 * i128::from(TON)).await;
    chain.with(|s| s.fail_to.insert(dest(2)));
    let s = sender(&chain, l, config());
    let Step::Sent { batch, .. } = s.run_once().await.unwrap().step else {
        panic!()
    };
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch,
            status: BatchStatus::Confirmed,
            delivered: 2
        }
    );
    let p2 = l.payouts_for_worker(w2, 1).await.unwrap().pop().unwrap();
    assert_eq!((p2.status, p2.batch_id), (PayoutStatus::Pending, None));
    chain.with(|s| s.fail_to.clear());
    let Step::Sent {
        batch: again,
        seqno: 1,
        payouts: 1,
    } = s.run_once().await.unwrap().step
    else {
        panic!()
    };
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch: again,
            status: BatchStatus::Confirmed,
            delivered: 1
        }
    );
    assert_paid_once(l, &chain).await;
}

/// The seqno moved but the index does not list the transaction yet: nothing is decided
/// and nothing is sent until it does.
async fn index_lag_decides_nothing(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let chain = chain(100 * i128::from(TON)).await;
    let s = sender(
        &chain,
        l,
        PayoutConfig {
            resend_after_secs: 0,
            ..config()
        },
    );
    let Step::Sent { batch, .. } = s.run_once().await.unwrap().step else {
        panic!()
    };
    chain.with(|s| s.hide_last_tx = true);
    for _ in 0..3 {
        assert!(
            matches!(s.run_once().await.unwrap().step, Step::Inconclusive { batch: b, .. } if b == batch)
        );
    }
    assert_eq!(chain.with(|s| s.posts), 1);
    chain.with(|s| s.hide_last_tx = false);
    assert_eq!(
        s.run_once().await.unwrap().step,
        Step::Settled {
            batch,
            status: BatchStatus::Confirmed,
            delivered: 1
        }
    );
    assert_paid_once(l, &chain).await;
}

async fn underfunded_wallet_waits(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let chain = chain(i128::from(TON)).await;
    let s = sender(&chain, l, config());
    let r = s.run_once().await.unwrap();
    assert!(
        matches!(r.step, Step::Underfunded { balance, .. } if balance == TON),
        "{r:?}"
    );
    assert!(l
        .open_payout_batch(&wallet().address().to_raw())
        .await
        .unwrap()
        .is_none());
    chain.with(|s| s.fund(10 * i128::from(TON)));
    assert!(matches!(
        s.run_once().await.unwrap().step,
        Step::Sent { .. }
    ));
    s.run_once().await.unwrap();
    assert_paid_once(l, &chain).await;
}

/// The indexer answers `walletInformation` with 409 "not a wallet" for a wallet it holds
/// as `nonexist` (here: its only transaction was a bounced deposit). The sender reads the
/// account's state instead: an undeployed wallet holding nothing, so payouts wait; once
/// funded, the first batch deploys it.
async fn not_a_wallet_answer_means_undeployed(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let chain = chain(0).await;
    chain.with(|s| s.bounced_deposit(i128::from(TON)));
    let raw = wallet().address().to_raw();
    let info = chain.api.wallet_information(&raw).await.unwrap();
    assert_eq!(
        (info.status.as_deref(), info.balance.as_deref(), info.seqno),
        (Some("nonexist"), Some("0"), None)
    );
    let s = sender(&chain, l, config());
    let r = s.run_once().await.unwrap();
    assert!(
        matches!(r.step, Step::Underfunded { balance: 0, .. }),
        "{r:?}"
    );
    chain.with(|s| s.fund(10 * i128::from(TON)));
    assert!(matches!(
        s.run_once().await.unwrap().step,
        Step::Sent { seqno: 0, .. }
    ));
    s.run_once().await.unwrap();
    assert_paid_once(l, &chain).await;
    // An address the index holds with code that is not a wallet is an error, not a
    // wallet with seqno 0.
    let other = Address {
        workchain: 0,
        hash: [9; 32],
    };
    chain.with(|s| {
        s.accounts.insert(other, "active");
    });
    let e = chain
        .api
        .wallet_information(&other.to_raw())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a wallet") && e.contains("active"), "{e}");
    // One the index has never seen is an empty undeployed wallet (200 uninit).
    let unseen = chain
        .api
        .wallet_information(
            &Address {
                workchain: 0,
                hash: [8; 32],
            }
            .to_raw(),
        )
        .await
        .unwrap();
    assert_eq!(unseen.status.as_deref(), Some("uninit"));
}

/// `deploy_wallet` (what `cocoon ton deploy-wallet` runs): refused while the wallet holds
/// too little; then one message with the state init and a zero-value self-transfer
/// deploys it; a second call sends nothing. The first payout batch after it needs no
/// state init and uses seqno 1.
async fn deploy_wallet_then_pay(db: &TestDb) {
    let l = &db.ledger;
    let chain = chain(0).await;
    let opts = ton::DeployOptions {
        wait: Duration::from_secs(5),
        poll: Duration::from_millis(20),
        ..ton::DeployOptions::default()
    };
    let e = ton::deploy_wallet(&chain.api, &wallet(), opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds 0 nanoTON"), "{e}");
    assert_eq!(chain.with(|s| s.posts), 0);
    chain.with(|s| s.fund(i128::from(TON)));
    let out = ton::deploy_wallet(&chain.api, &wallet(), opts)
        .await
        .unwrap();
    assert!(
        matches!(out, ton::DeployOutcome::Deployed { seqno: 1, .. }),
        "{out:?}"
    );
    let me = wallet().address();
    chain.with(|s| {
        assert!(s.deployed);
        assert_eq!(s.applied, 1);
        assert_eq!(s.transfers.len(), 1);
        assert_eq!((s.transfers[0].to, s.transfers[0].amount), (me, 0));
        assert_eq!(s.balance, i128::from(TON));
        // Checked; assert_paid_once below counts payouts only.
        s.transfers.clear();
    });
    assert_eq!(
        ton::deploy_wallet(&chain.api, &wallet(), opts)
            .await
            .unwrap(),
        ton::DeployOutcome::AlreadyDeployed { seqno: 1 }
    );
    assert_eq!(chain.with(|s| s.posts), 1);
    // The watcher ignores the deploy and its self-transfer.
    let w = ton::DepositWatcher::new(
        chain.api.clone(),
        l.clone(),
        me,
        ton::DepositConfig {
            confirmations: 0,
            ..ton::DepositConfig::default()
        },
    );
    let r = w.poll_once().await.unwrap();
    assert_eq!((r.credited, r.ignored), (0, 2), "{r:?}");
    worker(l, 1, 3 * TON / 10, true).await;
    chain.with(|s| s.fund(i128::from(TON)));
    let s = sender(
        &chain,
        l,
        PayoutConfig {
            threshold_nanoton: TON / 10,
            ..config()
        },
    );
    assert!(matches!(
        s.run_once().await.unwrap().step,
        Step::Sent { seqno: 1, .. }
    ));
    s.run_once().await.unwrap();
    assert_paid_once(l, &chain).await;
}

/// Two sender processes at once, each killed at random points and restarted, while new
/// earnings keep arriving and broadcasts are sometimes lost: every payout goes out once.
async fn racing_senders_killed_at_random(db: &TestDb) {
    let l = &db.ledger;
    for n in 1..=6 {
        worker(l, n, i64::from(n + 1) * TON, n % 2 == 0).await;
    }
    let chain = chain(1000 * i128::from(TON)).await;
    chain.with(|s| {
        s.apply_then_fail = 2;
        s.fail_posts = 2;
    });
    let cfg = PayoutConfig {
        resend_after_secs: 0,
        max_batch: 4,
        ..config()
    };
    let mut rng = Rng(0x00c0_ffee);
    let mut killed = 0;
    for round in 0..40u32 {
        if round == 5 {
            // More work arrives while senders run.
            for n in 7..=9 {
                worker(l, n, 2 * TON, true).await;
            }
        }
        // Two processes, each with its own ledger connections, gone when it dies. They
        // start up (connect) before the clock of the kill starts.
        let (la, lb) = (
            common::connect(&db.url).await,
            common::connect(&db.url).await,
        );
        let (a, b) = (
            sender(&chain, &la, cfg.clone()),
            sender(&chain, &lb, cfg.clone()),
        );
        let both = async move {
            let (x, y) = tokio::join!(a.run_once(), b.run_once());
            la.close().await;
            lb.close().await;
            x.is_ok() && y.is_ok()
        };
        let mut task = tokio::spawn(both);
        let delay = Duration::from_millis(rng.below(60));
        tokio::select! {
            _ = &mut task => {}
            _ = tokio::time::sleep(delay) => {
                // Dead before the next "process" starts.
                task.abort();
                let _ = task.await;
                killed += 1;
            }
        }
    }
    let (posts, applied, refused) = chain.with(|s| (s.posts, s.applied, s.refused.len()));
    eprintln!("racing senders: {killed} of 40 rounds killed; {posts} broadcasts, {applied} applied, {refused} refused");
    assert!(
        killed > 0 && applied > 0,
        "the chaos must have done something"
    );
    // Then one undisturbed sender finishes the work.
    let s = sender(&chain, l, cfg);
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 50, "never settled");
        let r = s.run_once().await.unwrap();
        if r.step == Step::Idle {
            break;
        }
    }
    assert_eq!(
        l.list_payouts(billing::PayoutFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        9
    );
    assert_paid_once(l, &chain).await;
}

/// The wiring the `cocoon` binary uses: config → watcher and sender; the sender's loop
/// pays out and stops on shutdown.
async fn from_config_and_run_loop(db: &TestDb) {
    let l = &db.ledger;
    worker(l, 1, 3 * TON, true).await;
    let chain = chain(100 * i128::from(TON)).await;
    // The mnemonic from a file (no process-wide environment changes in tests).
    let dir = std::env::temp_dir().join(format!("ton_mnemonic_{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mnemonic");
    std::fs::write(&file, format!("{}\n", WORDS.replace(' ', "\n"))).unwrap();
    let cfg = ton::TonConfig {
        enabled: true,
        network: Network::Testnet,
        api_url: Some(format!("http://{}", chain.addr)),
        mnemonic_file: Some(file.clone()),
        payouts: PayoutConfig {
            poll_interval_secs: 1,
            ..config()
        },
        ..ton::TonConfig::default()
    };
    let (watcher, sender) = ton::from_config(&cfg, l.clone()).unwrap();
    assert_eq!(watcher.wallet(), wallet().address());
    assert_eq!(sender.wallet().address(), wallet().address());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sender.run(async move {
        let _ = stopped.await;
    }));
    for _ in 0..100 {
        let done = l.list_payouts(Default::default()).await.unwrap();
        if !done.is_empty() && done.iter().all(|p| p.status == PayoutStatus::Confirmed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_paid_once(l, &chain).await;

    let bad = ton::TonConfig {
        mnemonic_file: Some(dir.join("missing")),
        ..cfg.clone()
    };
    assert!(matches!(
        ton::from_config(&bad, l.clone()),
        Err(ton::Error::Mnemonic(_))
    ));
    let invalid = ton::TonConfig {
        payouts: PayoutConfig {
            threshold_nanoton: 0,
            ..config()
        },
        ..cfg
    };
    assert!(matches!(
        ton::from_config(&invalid, l.clone()),
        Err(ton::Error::Config(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

on_both_backends!(
    from_config_and_run_loop,
    happy_path,
    crash_after_send_before_confirm,
    crash_before_send,
    expired_batch_is_rebuilt,
    seqno_used_by_another_message,
    failed_transfer_goes_again,
    index_lag_decides_nothing,
    underfunded_wallet_waits,
    not_a_wallet_answer_means_undeployed,
    deploy_wallet_then_pay,
    racing_senders_killed_at_random,
);
