//! The TON settlement tables of the ledger (deposit codes, deposits, cursor, payout
//! outbox and batches), the same bodies on Postgres and on SQLite. Every test ends with
//! `Ledger::check` and `Ledger::check_ton` finding nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use billing::{
    deposit_key, AccountId, AccountKind, BatchItem, BatchResult, BatchStatus, CaptureOutcome,
    CreditOutcome, DepositFilter, DepositInput, DepositOutcome, DepositStatus, Error, Ledger,
    NewBatch, PayoutFilter, PayoutStatus, PrepareOutcome, Price, RejectReason, Rejection, Usage,
};
use common::TestDb;
use uuid::Uuid;

const MODEL: &str = "m";
const WALLET: &str = "0:1111111111111111111111111111111111111111111111111111111111111111";

fn addr(n: u8) -> String {
    format!("0:{}", hex_byte(n).repeat(32))
}

fn hex_byte(n: u8) -> String {
    format!("{n:02x}")
}

fn input(hash: &str, lt: u64, value: &str, comment: Option<&str>) -> DepositInput {
    DepositInput {
        tx_hash: hash.to_owned(),
        lt,
        source: Some(addr(0xee)),
        value: value.to_owned(),
        comment: comment.map(str::to_owned),
        utime: 1_700_000_000,
        rejection: None,
    }
}

async fn finish(db: &TestDb) {
    let v = db.ledger.check_ton().await.unwrap();
    assert!(v.is_empty(), "check_ton: {v:#?}");
}

/// A client with `funds` and a worker that has earned (roughly) `earn` nanoTON.
async fn worker_with(l: &Ledger, name: &str, earn: i64) -> AccountId {
    l.set_price(
        MODEL,
        Price {
            prompt: 1_000_000_000, // 1000 nanoTON per token
            ..Price::default()
        },
    )
    .await
    .unwrap();
    let client = l
        .ensure_account(AccountKind::Client, &format!("payer-{name}"))
        .await
        .unwrap();
    let worker = l.ensure_account(AccountKind::Worker, name).await.unwrap();
    if earn > 0 {
        let charge = earn * 2;
        l.credit(
            client,
            charge,
            &format!("fund-{name}-{}", Uuid::new_v4()),
            "",
        )
        .await
        .unwrap();
        let job = Uuid::new_v4();
        l.hold(job, client, MODEL, charge, Duration::from_secs(60))
            .await
            .unwrap();
        let tokens = u64::try_from(earn / 1000).unwrap();
        let r = l
            .capture(
                job,
                worker,
                Usage {
                    prompt_tokens: tokens,
                    ..Usage::default()
                },
                1000,
            )
            .await
            .unwrap();
        assert!(matches!(r, CaptureOutcome::Captured(_)));
    }
    worker
}

async fn balance(l: &Ledger, a: AccountId) -> i64 {
    l.balance(a).await.unwrap().total
}

async fn deposit_codes(db: &TestDb) {
    let l = &db.ledger;
    let a = l.ensure_account(AccountKind::Client, "a").await.unwrap();
    let b = l.ensure_account(AccountKind::Client, "b").await.unwrap();
    let w = l.ensure_account(AccountKind::Worker, "w").await.unwrap();
    let ca = l.deposit_code(a).await.unwrap();
    assert_eq!(ca.len(), billing::DEPOSIT_CODE_LEN);
    assert_eq!(l.deposit_code(a).await.unwrap(), ca, "stable");
    let cb = l.deposit_code(b).await.unwrap();
    assert_ne!(ca, cb);
    assert!(matches!(
        l.deposit_code(w).await,
        Err(Error::WrongAccountKind { .. })
    ));
    assert!(matches!(
        l.deposit_code(AccountId(999_999)).await,
        Err(Error::UnknownAccount(_))
    ));
    assert_eq!(l.deposit_code_owner(&ca).await.unwrap(), Some(a));
    let typed = format!(" {}-{} ", &ca[..4].to_lowercase(), &ca[4..]);
    assert_eq!(l.deposit_code_owner(&typed).await.unwrap(), Some(a));
    assert_eq!(l.deposit_code_owner("hello").await.unwrap(), None);
    finish(db).await;
}

async fn deposits(db: &TestDb) {
    let l = &db.ledger;
    let a = l.ensure_account(AccountKind::Client, "a").await.unwrap();
    let code = l.deposit_code(a).await.unwrap();

    let d = l
        .record_deposit(&input("h1", 10, "1500000000", Some(&code)))
        .await
        .unwrap();
    let DepositOutcome::Credited(d1) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (d1.status, d1.account, d1.amount),
        (DepositStatus::Credited, Some(a), Some(1_500_000_000))
    );
    assert_eq!(balance(l, a).await, 1_500_000_000);

    // The same (hash, lt) again, even with other data: a duplicate, nothing moves.
    let again = l
        .record_deposit(&input("h1", 10, "999", Some("whatever")))
        .await
        .unwrap();
    assert_eq!(again, DepositOutcome::Duplicate(d1.clone()));
    assert_eq!(balance(l, a).await, 1_500_000_000);
    // Same hash, other lt: a different transaction.
    assert!(matches!(
        l.record_deposit(&input("h1", 11, "5", Some(&code.to_lowercase())))
            .await
            .unwrap(),
        DepositOutcome::Credited(_)
    ));
    assert_eq!(balance(l, a).await, 1_500_000_005);

    // Every kind of bad input is recorded, never credited.
    let cases: Vec<(DepositInput, RejectReason)> = vec![
        (
            DepositInput {
                rejection: Some(Rejection {
                    reason: RejectReason::Bounced,
                    detail: "bounced".into(),
                }),
                ..input("b", 20, "100", Some(&code))
            },
            RejectReason::Bounced,
        ),
        (
            DepositInput {
                rejection: Some(Rejection {
                    reason: RejectReason::Failed,
                    detail: "aborted".into(),
                }),
                ..input("f", 21, "100", Some(&code))
            },
            RejectReason::Failed,
        ),
        (input("z", 22, "0", Some(&code)), RejectReason::ZeroValue),
        (
            input("big", 23, "9223372036854775808", Some(&code)),
            RejectReason::BadAmount,
        ),
        (
            input("nan", 24, "12abc", Some(&code)),
            RejectReason::BadAmount,
        ),
        (input("neg", 25, "-5", Some(&code)), RejectReason::BadAmount),
        (input("nc", 26, "100", None), RejectReason::NotAComment),
        (
            input("wrong", 27, "100", Some("ZZZZZZZZ")),
            RejectReason::UnknownCode,
        ),
        (
            input("text", 28, "100", Some("thanks for the GPUs")),
            RejectReason::UnknownCode,
        ),
        (
            input("huge", 29, "100", Some(&"x".repeat(100_000))),
            RejectReason::UnknownCode,
        ),
    ];
    for (inp, reason) in &cases {
        let out = l.record_deposit(inp).await.unwrap();
        let DepositOutcome::Rejected(d) = out else {
            panic!("{} should be rejected: {out:?}", inp.tx_hash)
        };
        assert_eq!(
            (d.status, d.reason),
            (DepositStatus::Rejected, Some(*reason)),
            "{}",
            inp.tx_hash
        );
        assert!(d.transaction.is_none() && d.account.is_none());
        if let Some(c) = &d.comment {
            assert!(c.chars().count() <= 256, "stored comments are bounded");
        }
        assert!(matches!(
            l.record_deposit(inp).await.unwrap(),
            DepositOutcome::Duplicate(_)
        ));
    }
    assert_eq!(balance(l, a).await, 1_500_000_005);
    let rejected = l
        .list_deposits(DepositFilter {
            status: Some(DepositStatus::Rejected),
            ..DepositFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rejected.len(), cases.len());
    assert!(
        rejected.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let mine = l
        .list_deposits(DepositFilter {
            account: Some(a),
            limit: 1,
            ..DepositFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].lt, 11);

    // An operator credits an unknown-code deposit by hand; bounced ones cannot be.
    let wrong = l.find_deposit("wrong", 27).await.unwrap().unwrap();
    let resolved = l.resolve_deposit(wrong.id, a).await.unwrap();
    assert_eq!(
        (
            resolved.status,
            resolved.account,
            resolved.resolved_at_ms.is_some()
        ),
        (DepositStatus::Credited, Some(a), true)
    );
    assert_eq!(balance(l, a).await, 1_500_000_105);
    assert_eq!(
        l.resolve_deposit(wrong.id, a).await.unwrap(),
        resolved,
        "idempotent"
    );
    let bounced = l.find_deposit("b", 20).await.unwrap().unwrap();
    assert!(matches!(
        l.resolve_deposit(bounced.id, a).await,
        Err(Error::InvalidInput(_))
    ));
    let zero = l.find_deposit("z", 22).await.unwrap().unwrap();
    assert!(matches!(
        l.resolve_deposit(zero.id, a).await,
        Err(Error::InvalidInput(_))
    ));
    // A record by the watcher after the resolution stays a duplicate.
    assert!(matches!(
        l.record_deposit(&input("wrong", 27, "100", Some(&code)))
            .await
            .unwrap(),
        DepositOutcome::Duplicate(_)
    ));
    assert_eq!(balance(l, a).await, 1_500_000_105);

    // lt beyond i64 is refused outright (the chain's lts are far below).
    assert!(matches!(
        l.record_deposit(&input("x", u64::MAX, "1", Some(&code)))
            .await,
        Err(Error::Overflow(_))
    ));
    finish(db).await;
}

/// A crash after the credit and before the deposit row: the next attempt writes the row
/// and reports a duplicate; the money moved once.
async fn deposit_crash_between_credit_and_row(db: &TestDb) {
    let l = &db.ledger;
    let a = l.ensure_account(AccountKind::Client, "a").await.unwrap();
    let code = l.deposit_code(a).await.unwrap();
    let first = l
        .credit(a, 700, &deposit_key("hc", 5), "interrupted")
        .await
        .unwrap();
    let CreditOutcome::Credited(tx) = first else {
        panic!()
    };
    let out = l
        .record_deposit(&input("hc", 5, "700", Some(&code)))
        .await
        .unwrap();
    let DepositOutcome::Duplicate(d) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (d.status, d.transaction),
        (DepositStatus::Credited, Some(tx))
    );
    assert_eq!(balance(l, a).await, 700);
    finish(db).await;
}

async fn concurrent_deposits(db: &TestDb) {
    let l = &db.ledger;
    let a = l.ensure_account(AccountKind::Client, "a").await.unwrap();
    let code = l.deposit_code(a).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let l = l.clone();
        let code = code.clone();
        tasks.push(tokio::spawn(async move {
            // Four transfers, each recorded by two racing watchers.
            l.record_deposit(&input(
                &format!("t{}", i % 4),
                100 + i % 4,
                "1000",
                Some(&code),
            ))
            .await
            .unwrap()
        }));
    }
    let mut credited = 0;
    for t in tasks {
        credited += usize::from(matches!(t.await.unwrap(), DepositOutcome::Credited(_)));
    }
    assert_eq!(credited, 4);
    assert_eq!(balance(l, a).await, 4000);
    finish(db).await;
}

async fn cursor(db: &TestDb) {
    let l = &db.ledger;
    assert_eq!(l.ton_cursor("deposits").await.unwrap(), None);
    assert!(l.advance_ton_cursor("deposits", 10, "a").await.unwrap());
    assert!(!l.advance_ton_cursor("deposits", 10, "b").await.unwrap());
    assert!(!l.advance_ton_cursor("deposits", 9, "c").await.unwrap());
    assert!(l.advance_ton_cursor("deposits", 12, "d").await.unwrap());
    let c = l.ton_cursor("deposits").await.unwrap().unwrap();
    assert_eq!((c.lt, c.tx_hash.as_str()), (12, "d"));
    assert_eq!(l.ton_cursor("other").await.unwrap(), None);
    finish(db).await;
}

fn new_batch(seqno: u32, ids: &[i64], tag: &str) -> NewBatch {
    NewBatch {
        wallet: WALLET.to_owned(),
        seqno,
        valid_until: 1_700_000_060,
        prev_lt: 42,
        boc: format!("boc-{tag}"),
        msg_hash: format!("hash-{tag}"),
        items: ids
            .iter()
            .map(|&payout_id| BatchItem {
                payout_id,
                bounce: false,
            })
            .collect(),
    }
}

async fn payouts(db: &TestDb) {
    let l = &db.ledger;
    let w1 = worker_with(l, "w1", 12_000_000).await;
    let w2 = worker_with(l, "w2", 30_000_000).await;
    let poor = worker_with(l, "poor", 1_000_000).await;
    let nowhere = worker_with(l, "nowhere", 50_000_000).await;
    let b1 = balance(l, w1).await;
    let b2 = balance(l, w2).await;
    assert!(b1 >= 10_000_000 && b2 >= 10_000_000);

    assert!(matches!(
        l.set_payout_address(w1, "EQabc", true).await,
        Err(Error::InvalidInput(_))
    ));
    let client = l.ensure_account(AccountKind::Client, "c").await.unwrap();
    assert!(matches!(
        l.set_payout_address(client, &addr(1), true).await,
        Err(Error::WrongAccountKind { .. })
    ));
    l.set_payout_address(w1, &addr(0xaa), false).await.unwrap();
    l.set_payout_address(w1, &addr(1), true).await.unwrap();
    l.set_payout_address(w2, &addr(2), false).await.unwrap();
    l.set_payout_address(poor, &addr(3), true).await.unwrap();
    let a1 = l.payout_address(w1).await.unwrap().unwrap();
    assert_eq!(
        (a1.address.as_str(), a1.bounceable),
        (addr(1).as_str(), true)
    );
    assert_eq!(l.payout_address(nowhere).await.unwrap(), None);

    assert!(matches!(
        l.create_payouts(0).await,
        Err(Error::InvalidAmount(0))
    ));
    let clearing_before = balance(l, l.clearing_account()).await;
    let created = l.create_payouts(10_000_000).await.unwrap();
    assert_eq!(
        created.len(),
        2,
        "poor is under the threshold, nowhere has no address"
    );
    let p1 = created.iter().find(|p| p.worker == w1).unwrap().clone();
    let p2 = created.iter().find(|p| p.worker == w2).unwrap().clone();
    assert_eq!(
        (
            p1.amount,
            p1.status,
            p1.address.as_str(),
            p1.bounceable,
            p1.worker_name.as_str()
        ),
        (b1, PayoutStatus::Pending, addr(1).as_str(), true, "w1")
    );
    assert_eq!((p2.amount, p2.bounceable), (b2, false));
    assert_eq!(balance(l, w1).await, 0);
    assert_eq!(balance(l, w2).await, 0);
    assert_eq!(
        balance(l, l.clearing_account()).await,
        clearing_before + b1 + b2
    );
    assert_eq!(l.worker_earnings(w1).await.unwrap().balance, 0);
    assert!(
        l.create_payouts(10_000_000).await.unwrap().is_empty(),
        "nothing twice"
    );
    assert_eq!(l.pending_payouts(0).await.unwrap().len(), 2);

    // Batch 1 carries both.
    let PrepareOutcome::Prepared(batch) = l
        .prepare_payout_batch(&new_batch(7, &[p1.id, p2.id], "1"))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (batch.status, batch.seqno, batch.items.len()),
        (BatchStatus::Prepared, 7, 2)
    );
    assert_eq!(
        l.payout(p1.id).await.unwrap().unwrap().status,
        PayoutStatus::Sending
    );
    assert_eq!(l.payout(p1.id).await.unwrap().unwrap().seqno, Some(7));
    // While it is open nothing else can be prepared for the wallet.
    assert!(matches!(
        l.prepare_payout_batch(&new_batch(8, &[p1.id], "x")).await.unwrap(),
        PrepareOutcome::Busy(b) if b.id == batch.id
    ));
    assert_eq!(
        l.open_payout_batch(WALLET).await.unwrap().unwrap().id,
        batch.id
    );
    // In a batch: not cancellable.
    assert!(matches!(
        l.cancel_payout(p1.id).await,
        Err(Error::InvalidInput(_))
    ));

    let sent = l.mark_payout_batch_sent(batch.id).await.unwrap();
    assert_eq!(sent.status, BatchStatus::Sent);
    assert!(sent.sent_at_ms.is_some());
    assert_eq!(
        l.payout(p2.id).await.unwrap().unwrap().status,
        PayoutStatus::Sent
    );

    // It landed, but only p1's transfer went out (p2's action failed).
    let landed = BatchResult::Landed {
        tx_hash: "txh".into(),
        tx_lt: 99,
        delivered: vec![p1.id],
    };
    assert!(matches!(
        l.settle_payout_batch(
            batch.id,
            &BatchResult::Landed {
                tx_hash: "txh".into(),
                tx_lt: 99,
                delivered: vec![12345],
            }
        )
        .await,
        Err(Error::InvalidInput(_))
    ));
    let settled = l.settle_payout_batch(batch.id, &landed).await.unwrap();
    assert_eq!(
        (settled.status, settled.tx_hash.as_deref(), settled.tx_lt),
        (BatchStatus::Confirmed, Some("txh"), Some(99))
    );
    let c1 = l.payout(p1.id).await.unwrap().unwrap();
    assert_eq!(
        (c1.status, c1.tx_hash.as_deref()),
        (PayoutStatus::Confirmed, Some("txh"))
    );
    let back = l.payout(p2.id).await.unwrap().unwrap();
    assert_eq!((back.status, back.batch_id), (PayoutStatus::Pending, None));
    // Settling again, even differently, changes nothing.
    assert_eq!(
        l.settle_payout_batch(batch.id, &BatchResult::Expired)
            .await
            .unwrap(),
        settled
    );
    assert_eq!(
        l.payout(p1.id).await.unwrap().unwrap().status,
        PayoutStatus::Confirmed
    );
    // Marking a closed batch sent changes nothing either.
    assert_eq!(
        l.mark_payout_batch_sent(batch.id).await.unwrap().status,
        BatchStatus::Confirmed
    );

    // p2 goes into batch 2, which expires, then batch 3, superseded, then batch 4, lands.
    for (seqno, tag, result) in [
        (8, "2", BatchResult::Expired),
        (8, "3", BatchResult::Superseded),
    ] {
        let PrepareOutcome::Prepared(b) = l
            .prepare_payout_batch(&new_batch(seqno, &[p2.id], tag))
            .await
            .unwrap()
        else {
            panic!()
        };
        let closed = l.settle_payout_batch(b.id, &result).await.unwrap();
        assert!(!closed.status.is_open());
        assert_eq!(
            l.payout(p2.id).await.unwrap().unwrap().status,
            PayoutStatus::Pending
        );
    }
    let PrepareOutcome::Prepared(b4) = l
        .prepare_payout_batch(&new_batch(9, &[p2.id], "4"))
        .await
        .unwrap()
    else {
        panic!()
    };
    l.settle_payout_batch(
        b4.id,
        &BatchResult::Landed {
            tx_hash: "txh4".into(),
            tx_lt: 120,
            delivered: vec![p2.id],
        },
    )
    .await
    .unwrap();
    let c2 = l.payout(p2.id).await.unwrap().unwrap();
    assert_eq!(
        (c2.status, c2.tx_hash.as_deref(), c2.seqno),
        (PayoutStatus::Confirmed, Some("txh4"), Some(9))
    );

    // A stale batch (payout no longer pending) is refused.
    assert!(matches!(
        l.prepare_payout_batch(&new_batch(10, &[p1.id], "5"))
            .await
            .unwrap(),
        PrepareOutcome::Stale
    ));
    assert!(matches!(
        l.prepare_payout_batch(&new_batch(10, &[], "6")).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        l.prepare_payout_batch(&new_batch(10, &[p1.id, p1.id], "7"))
            .await,
        Err(Error::InvalidInput(_))
    ));

    // Cancelling a pending payout gives the money back.
    let w3 = worker_with(l, "w3", 20_000_000).await;
    l.set_payout_address(w3, &addr(4), true).await.unwrap();
    let b3 = balance(l, w3).await;
    let p3 = l.create_payouts(10_000_000).await.unwrap().pop().unwrap();
    assert_eq!(balance(l, w3).await, 0);
    let cancelled = l.cancel_payout(p3.id).await.unwrap();
    assert_eq!(cancelled.status, PayoutStatus::Cancelled);
    assert_eq!(balance(l, w3).await, b3);
    assert_eq!(
        l.cancel_payout(p3.id).await.unwrap(),
        cancelled,
        "idempotent"
    );
    assert!(matches!(
        l.cancel_payout(p1.id).await,
        Err(Error::InvalidInput(_))
    ));

    // Listings.
    let all = l.list_payouts(PayoutFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![p3.id, p2.id, p1.id]
    );
    let confirmed = l
        .list_payouts(PayoutFilter {
            status: Some(PayoutStatus::Confirmed),
            ..PayoutFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(confirmed.len(), 2);
    assert_eq!(
        l.payouts_for_worker(w2, 10).await.unwrap(),
        vec![c2.clone()]
    );
    let page = l
        .list_payouts(PayoutFilter {
            before_id: Some(p2.id),
            ..PayoutFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, p1.id);
    finish(db).await;
}

/// Many senders at once: one payout per worker, one open batch per wallet.
async fn concurrent_payouts(db: &TestDb) {
    let l = &db.ledger;
    let w = worker_with(l, "w", 40_000_000).await;
    l.set_payout_address(w, &addr(9), true).await.unwrap();
    let earned = balance(l, w).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            l.create_payouts(1).await.unwrap().len()
        }));
    }
    let mut made = 0;
    for t in tasks {
        made += t.await.unwrap();
    }
    assert_eq!(made, 1);
    let p = l.pending_payouts(0).await.unwrap().pop().unwrap();
    assert_eq!(p.amount, earned);

    let mut tasks = Vec::new();
    for i in 0..6 {
        let l = l.clone();
        let b = new_batch(1, &[p.id], &format!("c{i}"));
        tasks.push(tokio::spawn(async move {
            l.prepare_payout_batch(&b).await.unwrap()
        }));
    }
    let mut prepared = 0;
    for t in tasks {
        prepared += usize::from(matches!(t.await.unwrap(), PrepareOutcome::Prepared(_)));
    }
    assert_eq!(prepared, 1);
    finish(db).await;
}

/// `check_ton` is not vacuous: tampered rows are reported.
async fn tampering_is_reported(db: &TestDb) {
    let l = &db.ledger;
    let w = worker_with(l, "w", 20_000_000).await;
    l.set_payout_address(w, &addr(7), true).await.unwrap();
    let p = l.create_payouts(1).await.unwrap().pop().unwrap();
    let a = l.ensure_account(AccountKind::Client, "a").await.unwrap();
    let code = l.deposit_code(a).await.unwrap();
    let d = l
        .record_deposit(&input("t", 1, "1000", Some(&code)))
        .await
        .unwrap();
    assert!(l.check_ton().await.unwrap().is_empty());
    let mut raw = db.raw().await;
    sqlx::query("UPDATE payouts SET amount = amount + 1 WHERE id = $1")
        .bind(p.id)
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE ton_deposits SET amount = 999 WHERE id = $1")
        .bind(d.deposit().id)
        .execute(&mut raw)
        .await
        .unwrap();
    let found = l.check_ton().await.unwrap();
    assert!(
        matches!(found.as_slice(), [
            billing::TonViolation::PayoutEntriesMismatch { payout, .. },
            billing::TonViolation::DepositEntriesMismatch { .. },
        ] if *payout == p.id),
        "{found:#?}"
    );
    // Put it back so that the final checks pass.
    sqlx::query("UPDATE payouts SET amount = amount - 1 WHERE id = $1")
        .bind(p.id)
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE ton_deposits SET amount = 1000 WHERE id = $1")
        .bind(d.deposit().id)
        .execute(&mut raw)
        .await
        .unwrap();
    finish(db).await;
}

on_both_backends!(
    tampering_is_reported,
    deposit_codes,
    deposits,
    deposit_crash_between_credit_and_row,
    concurrent_deposits,
    cursor,
    payouts,
    concurrent_payouts,
);

/// A ledger created before the TON migration, with money in it, upgrades in place.
mod upgrade {
    use super::*;
    use sqlx::migrate::Migrator;
    use sqlx::Connection;
    use std::borrow::Cow;
    use std::path::Path;

    async fn only_first(dir: &str, url: &str) {
        let full = Migrator::new(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dir),
        )
        .await
        .unwrap();
        let first: Vec<_> = full
            .migrations
            .iter()
            .filter(|m| m.version == 1)
            .cloned()
            .collect();
        assert_eq!(first.len(), 1);
        let m = Migrator {
            migrations: Cow::Owned(first),
            ..Migrator::DEFAULT
        };
        let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
        m.run(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO accounts (kind, external_id, created_at) VALUES ('client', 'old', 1)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }

    async fn after_upgrade(l: &Ledger) {
        let old = l
            .find_account(AccountKind::Client, "old")
            .await
            .unwrap()
            .unwrap()
            .id;
        l.credit(old, 10, "pre", "").await.unwrap();
        let w = worker_with(l, "w", 20_000_000).await;
        l.set_payout_address(w, &addr(5), false).await.unwrap();
        assert_eq!(l.create_payouts(1).await.unwrap().len(), 1);
        assert!(l.check().await.unwrap().is_empty());
        assert!(l.check_ton().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = std::env::temp_dir().join(format!("ton_upgrade_{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}?mode=rwc", dir.join("l.db").display());
        sqlx::any::install_default_drivers();
        only_first("sqlite", &url).await;
        let l = Ledger::connect(&url, common::options()).await.unwrap();
        after_upgrade(&l).await;
        l.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        sqlx::any::install_default_drivers();
        let admin = common::admin_url();
        let name = format!("ton_upgrade_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
        let url = format!("{base}/{name}");
        only_first("postgres", &url).await;
        let l = Ledger::connect(&url, common::options()).await.unwrap();
        after_upgrade(&l).await;
        l.close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
