//! The ledger's behaviour, the same test bodies on Postgres and on SQLite. Every test
//! ends with `Ledger::check` finding no violation (see `common::TestDb::finish`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use billing::{
    cost, AccountId, AccountKind, Balance, CaptureOutcome, CreditOutcome, Error, HoldAmount, HoldOutcome,
    HoldStatus, Ledger, LedgerOptions, Price, ReleaseOutcome, StoredReceipt, Usage, Violation,
};
use common::{TestDb, FEE_BPS};
use uuid::Uuid;

const MODEL: &str = "llama-3-8b";
const PRICE: Price = Price {
    prompt: 100_000_000,       // 0.1 TON per 1M prompt tokens
    cached_prompt: 25_000_000, // 0.025
    completion: 300_000_000,   // 0.3
    reasoning: 300_000_000,
};
const TTL: Duration = Duration::from_secs(60);

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        ..Usage::default()
    }
}

/// A priced model, a client credited with `funds`, and a worker.
async fn setup(l: &Ledger, funds: i64) -> (AccountId, AccountId) {
    l.set_price(MODEL, PRICE).await.unwrap();
    let client = l
        .ensure_account(AccountKind::Client, "client-1")
        .await
        .unwrap();
    let worker = l
        .ensure_account(AccountKind::Worker, "worker-1")
        .await
        .unwrap();
    if funds > 0 {
        l.credit(client, funds, "deposit-1", "first deposit")
            .await
            .unwrap();
    }
    (client, worker)
}

async fn placed(l: &Ledger, job: Uuid, client: AccountId, amount: i64) {
    match l.hold(job, client, MODEL, amount, TTL).await.unwrap() {
        HoldOutcome::Placed(h) => assert_eq!((h.amount, h.status), (amount, HoldStatus::Active)),
        other => panic!("expected a new hold, got {other:?}"),
    }
}

fn bal(total: i64, held: i64) -> Balance {
    Balance {
        total,
        held,
        available: total - held,
    }
}

async fn lifecycle(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000_000_000).await;
    assert_eq!(l.balance(client).await.unwrap(), bal(1_000_000_000, 0));
    assert_eq!(
        l.balance(l.clearing_account()).await.unwrap(),
        bal(-1_000_000_000, 0)
    );
    assert_eq!(l.prices().await.unwrap().len(), 1);
    assert_eq!(l.price(MODEL).await.unwrap(), Some(PRICE));
    assert_eq!(l.price("nope").await.unwrap(), None);

    let job = Uuid::now_v7();
    placed(l, job, client, 5_000_000).await;
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000_000, 5_000_000)
    );

    let u = Usage {
        prompt_tokens: 1234,
        cached_prompt_tokens: 200,
        completion_tokens: 777,
        reasoning_tokens: 100,
    };
    let expected = cost(PRICE, u, 1500, FEE_BPS).unwrap();
    assert!(expected.charge > 0 && expected.fee > 0);
    let receipt = match l.capture(job, worker, u, 1500).await.unwrap() {
        CaptureOutcome::Captured(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(receipt.billed, expected);
    assert_eq!(
        (receipt.cost, receipt.shortfall, receipt.held),
        (expected.charge, 0, 5_000_000)
    );
    assert_eq!(
        (receipt.client, receipt.worker, receipt.coefficient),
        (client, worker, 1500)
    );

    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000_000 - expected.charge, 0)
    );
    assert_eq!(l.balance(worker).await.unwrap(), bal(expected.worker, 0));
    assert_eq!(
        l.balance(l.fee_account()).await.unwrap(),
        bal(expected.fee, 0)
    );
    let earnings = l.worker_earnings(worker).await.unwrap();
    assert_eq!(
        (earnings.balance, earnings.earned, earnings.jobs),
        (expected.worker, expected.worker, 1)
    );
    assert_eq!(
        l.find_hold(job).await.unwrap().unwrap().status,
        HoldStatus::Captured
    );

    // A second job released without any charge.
    let job2 = Uuid::now_v7();
    placed(l, job2, client, 1_000).await;
    assert!(
        matches!(l.release(job2).await.unwrap(), ReleaseOutcome::Released(h) if h.status == HoldStatus::Released)
    );
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000_000 - expected.charge, 0)
    );

    // A third job: zero usage charges nothing but is recorded.
    let job3 = Uuid::now_v7();
    placed(l, job3, client, 1_000).await;
    let r3 = l
        .capture(job3, worker, Usage::default(), 1000)
        .await
        .unwrap();
    assert_eq!(r3.receipt().unwrap().billed.charge, 0);

    let history = l.usage(client, 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1], receipt, "oldest last");
    assert_eq!(history[0].job_id, job3);
    assert_eq!(l.usage(client, 1).await.unwrap().len(), 1);
    assert_eq!(l.receipt(job).await.unwrap(), Some(receipt));
    assert_eq!(l.receipt(job2).await.unwrap(), None);
}

async fn idempotency(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 10_000_000).await;

    // Credits by key.
    assert!(matches!(
        l.credit(client, 500, "tx:abc:1", "").await.unwrap(),
        CreditOutcome::Credited(_)
    ));
    let again = l.credit(client, 500, "tx:abc:1", "").await.unwrap();
    assert!(matches!(again, CreditOutcome::AlreadyApplied(_)));
    assert!(matches!(
        l.credit(client, 501, "tx:abc:1", "").await,
        Err(Error::IdempotencyConflict { .. })
    ));
    let other = l
        .ensure_account(AccountKind::Client, "client-2")
        .await
        .unwrap();
    assert!(matches!(
        l.credit(other, 500, "tx:abc:1", "").await,
        Err(Error::IdempotencyConflict { .. })
    ));
    assert_eq!(l.balance(client).await.unwrap().total, 10_000_500);
    assert_eq!(l.balance(other).await.unwrap().total, 0);
    // ensure_account is idempotent too.
    assert_eq!(
        l.ensure_account(AccountKind::Client, "client-1")
            .await
            .unwrap(),
        client
    );
    assert_eq!(
        l.find_account(AccountKind::Client, "client-1")
            .await
            .unwrap()
            .unwrap()
            .id,
        client
    );
    assert!(l
        .find_account(AccountKind::Worker, "client-1")
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        l.ensure_account(AccountKind::Fee, "x").await,
        Err(Error::SystemAccount(_))
    ));

    // Hold twice: the second writes nothing.
    let job = Uuid::new_v4();
    placed(l, job, client, 1_000_000).await;
    match l.hold(job, client, MODEL, 2_000_000, TTL).await.unwrap() {
        HoldOutcome::AlreadyExists(h) => assert_eq!(h.amount, 1_000_000),
        other => panic!("{other:?}"),
    }
    assert_eq!(l.balance(client).await.unwrap().held, 1_000_000);

    // Capture twice: the second changes nothing and returns the first receipt.
    let first = l
        .capture(job, worker, usage(1000, 1000), 1000)
        .await
        .unwrap();
    let before = (
        l.balance(client).await.unwrap(),
        l.balance(worker).await.unwrap(),
    );
    let second = l
        .capture(job, worker, usage(5000, 5000), 2000)
        .await
        .unwrap();
    match (&first, &second) {
        (CaptureOutcome::Captured(a), CaptureOutcome::AlreadyCaptured(b)) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (
            l.balance(client).await.unwrap(),
            l.balance(worker).await.unwrap()
        ),
        before
    );
    // Release after capture: nothing.
    assert!(
        matches!(l.release(job).await.unwrap(), ReleaseOutcome::AlreadyClosed(h) if h.status == HoldStatus::Captured)
    );
    // Hold again after capture: reports the captured hold, reserves nothing.
    assert!(
        matches!(l.hold(job, client, MODEL, 10, TTL).await.unwrap(), HoldOutcome::AlreadyExists(h) if h.status == HoldStatus::Captured)
    );
    assert_eq!(l.balance(client).await.unwrap(), before.0);

    // Release, then capture and release again: nothing.
    let job2 = Uuid::new_v4();
    placed(l, job2, client, 1_000_000).await;
    assert!(matches!(
        l.release(job2).await.unwrap(),
        ReleaseOutcome::Released(_)
    ));
    assert!(matches!(
        l.release(job2).await.unwrap(),
        ReleaseOutcome::AlreadyClosed(_)
    ));
    match l
        .capture(job2, worker, usage(1000, 1000), 1000)
        .await
        .unwrap()
    {
        CaptureOutcome::AlreadyReleased(h) => assert_eq!(h.status, HoldStatus::Released),
        other => panic!("{other:?}"),
    }
    assert_eq!(l.balance(client).await.unwrap(), before.0);
    assert_eq!(l.worker_earnings(worker).await.unwrap().jobs, 1);

    // Unknown job ids.
    assert!(matches!(
        l.capture(Uuid::new_v4(), worker, usage(1, 1), 1000).await,
        Err(Error::UnknownHold(_))
    ));
    assert!(matches!(
        l.release(Uuid::new_v4()).await,
        Err(Error::UnknownHold(_))
    ));
}

async fn insufficient_funds(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000).await;
    let job = Uuid::new_v4();
    match l.hold(job, client, MODEL, 1_001, TTL).await {
        Err(Error::InsufficientFunds { available, needed }) => {
            assert_eq!((available, needed), (1_000, 1_001))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.find_hold(job).await.unwrap(), None, "nothing written");
    placed(l, Uuid::new_v4(), client, 600).await;
    match l.hold(job, client, MODEL, 500, TTL).await {
        Err(Error::InsufficientFunds { available, needed }) => {
            assert_eq!((available, needed), (400, 500))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.find_hold(job).await.unwrap(), None);
    assert_eq!(l.balance(client).await.unwrap(), bal(1_000, 600));

    // Other refusals write nothing either.
    assert!(matches!(
        l.hold(job, client, "unpriced", 1, TTL).await,
        Err(Error::UnknownModel(_))
    ));
    assert!(matches!(
        l.hold(job, worker, MODEL, 1, TTL).await,
        Err(Error::WrongAccountKind { .. })
    ));
    assert!(matches!(
        l.hold(job, AccountId(999_999), MODEL, 1, TTL).await,
        Err(Error::UnknownAccount(_))
    ));
    assert!(matches!(
        l.hold(job, client, MODEL, 0, TTL).await,
        Err(Error::InvalidAmount(0))
    ));
    assert!(matches!(
        l.credit(client, -5, "neg", "").await,
        Err(Error::InvalidAmount(-5))
    ));
    assert!(matches!(
        l.credit(worker, 5, "w", "").await,
        Err(Error::WrongAccountKind { .. })
    ));
    assert_eq!(l.find_hold(job).await.unwrap(), None);
    // Capturing with a non-worker account changes nothing.
    let job2 = Uuid::new_v4();
    placed(l, job2, client, 100).await;
    assert!(matches!(
        l.capture(job2, client, usage(1, 1), 1000).await,
        Err(Error::WrongAccountKind { .. })
    ));
    assert!(matches!(
        l.capture(job2, AccountId(424_242), usage(1, 1), 1000).await,
        Err(Error::UnknownAccount(_))
    ));
    assert_eq!(
        l.find_hold(job2).await.unwrap().unwrap().status,
        HoldStatus::Active
    );
    assert_eq!(l.balance(client).await.unwrap(), bal(1_000, 700));
}

async fn expiry_and_reaper(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000_000).await;
    let short = Uuid::new_v4();
    let long = Uuid::new_v4();
    let late = Uuid::new_v4();
    assert!(matches!(
        l.hold(short, client, MODEL, 1_000, Duration::from_secs(1))
            .await
            .unwrap(),
        HoldOutcome::Placed(_)
    ));
    assert!(matches!(
        l.hold(late, client, MODEL, 2_000, Duration::from_secs(1))
            .await
            .unwrap(),
        HoldOutcome::Placed(_)
    ));
    assert!(matches!(
        l.hold(long, client, MODEL, 4_000, Duration::from_secs(3600))
            .await
            .unwrap(),
        HoldOutcome::Placed(_)
    ));
    assert!(l
        .reap_expired(SystemTime::now() - Duration::from_secs(10))
        .await
        .unwrap()
        .is_empty());

    // Expired but not yet reaped: a capture still goes through.
    let after = SystemTime::now() + Duration::from_secs(2);
    assert!(matches!(
        l.capture(late, worker, usage(10, 10), 1000).await.unwrap(),
        CaptureOutcome::Captured(_)
    ));

    let reaped = l.reap_expired(after).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        (reaped[0].job_id, reaped[0].status),
        (short, HoldStatus::Expired)
    );
    assert!(
        l.reap_expired(after).await.unwrap().is_empty(),
        "reaping is idempotent"
    );
    let charged = l.receipt(late).await.unwrap().unwrap().billed.charge;
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000 - charged, 4_000)
    );
    // A reaped hold cannot be released again.
    assert!(matches!(
        l.release(short).await.unwrap(),
        ReleaseOutcome::AlreadyClosed(_)
    ));
    // Capturing a reaped hold charges late, from the available balance: the answer was
    // delivered past the hold's lifetime (a long stream, a capture from the outbox).
    let late_charge = match l.capture(short, worker, usage(10, 10), 1000).await.unwrap() {
        CaptureOutcome::Captured(r) => {
            assert_eq!(r.held, 0, "nothing was reserved for a late capture");
            // Still never more than the hold: usage(10, 10) costs 4 000, the hold was 1 000.
            assert_eq!((r.cost, r.billed.charge, r.shortfall), (4_000, 1_000, 3_000));
            r.billed.charge
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        l.find_hold(short).await.unwrap().unwrap().status,
        HoldStatus::Captured
    );
    assert!(matches!(
        l.capture(short, worker, usage(10, 10), 1000).await.unwrap(),
        CaptureOutcome::AlreadyCaptured(_)
    ));
    let charged = charged + late_charge;
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000 - charged, 4_000),
        "the late charge leaves the other holds' reservations alone"
    );
    // The long hold goes too once its time has come.
    let reaped = l
        .reap_expired(SystemTime::now() + Duration::from_secs(7200))
        .await
        .unwrap();
    assert_eq!(
        reaped.iter().map(|h| h.job_id).collect::<Vec<_>>(),
        vec![long]
    );
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000 - charged, 0)
    );

    // Many expired holds at once (more than one reaper batch on neither backend is needed
    // for correctness, but check the count).
    for _ in 0..30 {
        l.hold(Uuid::new_v4(), client, MODEL, 10, Duration::from_millis(1))
            .await
            .unwrap();
    }
    let reaped = l
        .reap_expired(SystemTime::now() + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(reaped.len(), 30);
    assert_eq!(l.balance(client).await.unwrap().held, 0);
}

async fn concurrent_holds(db: &TestDb) {
    let l = &db.ledger;
    // Money for exactly 20 holds of 1000.
    let (client, worker) = setup(l, 20_000).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                let job = Uuid::new_v4();
                (job, l.hold(job, client, MODEL, 1_000, TTL).await)
            })
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (job, Ok(HoldOutcome::Placed(_))) => ok.push(job),
            (_, Err(Error::InsufficientFunds { available, needed })) => {
                assert!(available < needed);
                refused += 1;
            }
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!((ok.len(), refused), (20, 30));
    assert_eq!(l.balance(client).await.unwrap(), bal(20_000, 20_000));
    assert!(l.check().await.unwrap().is_empty());

    // Capture them all concurrently, each job from 3 tasks at once: exactly one capture
    // per job; meanwhile more holds race for the money freed.
    let mut tasks = Vec::new();
    for &job in &ok {
        for _ in 0..3 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.capture(job, worker, usage(1, 2), 1000).await
            }));
        }
    }
    let mut captured = HashSet::new();
    let mut repeats = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CaptureOutcome::Captured(r) => assert!(captured.insert(r.job_id)),
            CaptureOutcome::AlreadyCaptured(_) => repeats += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((captured.len(), repeats), (20, 40));
    let per_job = cost(PRICE, usage(1, 2), 1000, FEE_BPS).unwrap();
    assert!(per_job.charge <= 1_000, "within the hold");
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(20_000 - 20 * per_job.charge, 0)
    );
    assert_eq!(
        l.worker_earnings(worker).await.unwrap().earned,
        20 * per_job.worker
    );

    // The same deposit reported 10 times at once is credited once.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.credit(client, 777, "tx:same", "").await.unwrap() })
        })
        .collect();
    let mut credited = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), CreditOutcome::Credited(_)) {
            credited += 1;
        }
    }
    assert_eq!(credited, 1);
    assert_eq!(
        l.balance(client).await.unwrap().total,
        20_000 - 20 * per_job.charge + 777
    );
}

async fn concurrent_mixed(db: &TestDb) {
    // Several clients, holds, captures and releases interleaved; invariants hold at the end.
    let l = &db.ledger;
    l.set_price(MODEL, PRICE).await.unwrap();
    let worker = l.ensure_account(AccountKind::Worker, "w").await.unwrap();
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = l
            .ensure_account(AccountKind::Client, &format!("c{i}"))
            .await
            .unwrap();
        l.credit(c, 50_000, &format!("dep-{i}"), "").await.unwrap();
        clients.push(c);
    }
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let l = l.clone();
            let client = clients[i % clients.len()];
            tokio::spawn(async move {
                let job = Uuid::new_v4();
                match l.hold(job, client, MODEL, 3_000, TTL).await {
                    Ok(_) if i % 3 == 0 => {
                        l.release(job).await.unwrap();
                    }
                    Ok(_) => {
                        l.capture(job, worker, usage(5_000 + i as u64, 1_000), 1000 + i as u32)
                            .await
                            .unwrap();
                    }
                    Err(Error::InsufficientFunds { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for c in clients {
        let b = l.balance(c).await.unwrap();
        assert!(b.total >= 0 && b.held == 0, "{b:?}");
    }
}

async fn over_hold(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 150_000).await;
    let job = Uuid::new_v4();
    let other = Uuid::new_v4();
    placed(l, job, client, 100_000).await;
    placed(l, other, client, 30_000).await;
    // Costs far more than the hold, and more than the balance: capped at the hold.
    let u = usage(10_000, 10_000);
    let full = cost(PRICE, u, 1000, FEE_BPS).unwrap();
    assert!(full.charge > 150_000);
    let r = l.capture(job, worker, u, 1000).await.unwrap();
    let r = r.receipt().unwrap();
    assert_eq!(r.cost, full.charge);
    assert_eq!(r.billed, billing::split(100_000, FEE_BPS).unwrap());
    assert_eq!(r.shortfall, full.charge - 100_000);
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(50_000, 30_000),
        "other hold kept its reservation"
    );
    // The other job can still be captured within its hold.
    let r2 = l
        .capture(other, worker, usage(100, 10), 1000)
        .await
        .unwrap();
    assert_eq!(r2.receipt().unwrap().shortfall, 0);
    assert_eq!(r2.receipt().unwrap().billed.charge, 13_000);
    // A cost above the hold is capped at the hold even when the balance could pay it: the
    // hold is what the request could cost, so the excess is the worker's over-report.
    l.credit(client, 10_000_000, "top-up", "").await.unwrap();
    let job3 = Uuid::new_v4();
    placed(l, job3, client, 1).await;
    let r3 = l.capture(job3, worker, usage(10, 10), 1000).await.unwrap();
    let r3 = r3.receipt().unwrap();
    assert_eq!((r3.billed.charge, r3.shortfall), (1, 3_999));
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(37_000 + 10_000_000 - 1, 0)
    );
}

async fn overflow_rejected(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 0).await;
    l.credit(client, i64::MAX - 10, "big", "").await.unwrap();
    // Would overflow the client's balance and the total deposits: refused, nothing written.
    assert!(matches!(
        l.credit(client, 11, "big-2", "").await,
        Err(Error::Overflow(_))
    ));
    let other = l
        .ensure_account(AccountKind::Client, "other")
        .await
        .unwrap();
    assert!(matches!(
        l.credit(other, 11, "big-3", "").await,
        Err(Error::Overflow(_))
    ));
    l.credit(other, 10, "fits", "").await.unwrap();
    assert_eq!(
        l.balance(l.clearing_account()).await.unwrap().total,
        -i64::MAX
    );
    assert_eq!(l.balance(client).await.unwrap().total, i64::MAX - 10);

    // A cost that does not fit: the capture fails and the hold stays active.
    let job = Uuid::new_v4();
    placed(l, job, client, i64::MAX - 10).await;
    let huge = Usage {
        prompt_tokens: 1 << 62,
        completion_tokens: 1 << 62,
        ..Usage::default()
    };
    assert!(matches!(
        l.capture(job, worker, huge, u32::MAX).await,
        Err(Error::Overflow(_))
    ));
    let too_many = Usage {
        prompt_tokens: u64::MAX,
        ..Usage::default()
    };
    assert!(matches!(
        l.capture(job, worker, too_many, 1000).await,
        Err(Error::Overflow(_))
    ));
    assert_eq!(
        l.find_hold(job).await.unwrap().unwrap().status,
        HoldStatus::Active
    );
    assert!(matches!(
        l.hold(Uuid::new_v4(), client, MODEL, 1, Duration::MAX)
            .await,
        Err(Error::Overflow(_))
    ));
    // A huge but representable capture works and the sums still fit.
    let big = Usage {
        prompt_tokens: 1 << 40,
        ..Usage::default()
    };
    let r = l.capture(job, worker, big, 4000).await.unwrap();
    assert_eq!(
        r.receipt().unwrap().billed,
        cost(PRICE, big, 4000, FEE_BPS).unwrap()
    );
}

async fn price_fixed_at_hold(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000_000_000).await;
    let job = Uuid::new_v4();
    placed(l, job, client, 10_000_000).await;
    let doubled = Price {
        prompt: PRICE.prompt * 2,
        ..PRICE
    };
    l.set_price(MODEL, doubled).await.unwrap();
    assert_eq!(l.price(MODEL).await.unwrap(), Some(doubled));
    let r = l
        .capture(job, worker, usage(1000, 100), 1000)
        .await
        .unwrap();
    assert_eq!(
        r.receipt().unwrap().billed,
        cost(PRICE, usage(1000, 100), 1000, FEE_BPS).unwrap()
    );
    assert!(matches!(
        l.set_price(
            "bad",
            Price {
                prompt: -1,
                ..PRICE
            }
        )
        .await,
        Err(Error::InvalidPrice { .. })
    ));
}

/// A worst-case hold is priced inside the hold from the price row it fixes: after a price
/// change its amount follows the new price, a free model still holds 1 nanoTON, an unpriced
/// model is refused with nothing written, and too little money is refused for the priced
/// amount.
async fn worst_case_hold_priced_in_the_hold(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000_000_000).await;
    let worst = usage(1000, 500);
    let amount = HoldAmount::WorstCase { usage: worst, coefficient: 1500 };
    let hold = |job| async move {
        match l.hold_amount(job, client, MODEL, amount, TTL, None).await.unwrap() {
            HoldOutcome::Placed(h) => h,
            other => panic!("expected a new hold, got {other:?}"),
        }
    };
    let first = hold(Uuid::new_v4()).await;
    assert_eq!(first.amount, cost(PRICE, worst, 1500, FEE_BPS).unwrap().charge);
    let doubled = Price { completion: PRICE.completion * 2, ..PRICE };
    l.set_price(MODEL, doubled).await.unwrap();
    let job = Uuid::new_v4();
    let second = hold(job).await;
    assert_eq!((second.amount, second.price), (cost(doubled, worst, 1500, FEE_BPS).unwrap().charge, doubled));
    // The worst case charged in full stays within its hold: no shortfall.
    let r = l.capture(job, worker, worst, 1500).await.unwrap();
    assert_eq!((r.receipt().unwrap().billed.charge, r.receipt().unwrap().shortfall), (second.amount, 0));

    l.set_price("free", Price { prompt: 0, cached_prompt: 0, completion: 0, reasoning: 0 }).await.unwrap();
    let free = l.hold_amount(Uuid::new_v4(), client, "free", amount, TTL, None).await.unwrap();
    assert_eq!(free.hold().amount, 1);

    let before = l.balance(client).await.unwrap();
    let unpriced = l.hold_amount(Uuid::new_v4(), client, "unpriced", amount, TTL, None).await;
    assert!(matches!(unpriced, Err(Error::UnknownModel(m)) if m == "unpriced"));
    let huge = HoldAmount::WorstCase { usage: usage(0, 10_000_000), coefficient: 1000 };
    let refused = l.hold_amount(Uuid::new_v4(), client, MODEL, huge, TTL, None).await;
    assert!(matches!(refused, Err(Error::InsufficientFunds { needed, .. }) if needed == cost(doubled, usage(0, 10_000_000), 1000, FEE_BPS).unwrap().charge));
    assert_eq!(l.balance(client).await.unwrap(), before);
}

fn stored_receipt(job: Uuid, sig: char) -> StoredReceipt {
    StoredReceipt {
        job_id: job,
        sha256: "a".repeat(64),
        signer: "b".repeat(64),
        signature: sig.to_string().repeat(128),
        receipt: format!("{{\"version\":1,\"job\":\"{job}\"}}"),
    }
}

/// A capture keeps the worker's receipt in its own transaction on every path: within its
/// hold (on Postgres unbatched: the one-statement fast path), over its hold (the locked
/// path), of a released job (the receipt is kept, nothing charged), and a repeated capture
/// keeps the first receipt and charges once. Run batched and unbatched.
async fn captures_keep_their_receipts(db: &TestDb) {
    let batched = &db.ledger;
    let unbatched = Ledger::connect(&db.url, LedgerOptions { group_commit: false, ..common::options() })
        .await
        .unwrap();
    let (client, worker) = setup(batched, 1_000_000_000).await;
    for l in [batched, &unbatched] {
        let job = Uuid::new_v4();
        placed(l, job, client, 10_000_000).await;
        let before = l.balance(client).await.unwrap();
        let first = l.capture_with_receipt(job, worker, usage(100, 10), 1000, Some(&stored_receipt(job, 'c'))).await.unwrap();
        let charge = first.receipt().unwrap().billed.charge;
        assert!(matches!(first, CaptureOutcome::Captured(_)));
        let again = l.capture_with_receipt(job, worker, usage(100, 10), 1000, Some(&stored_receipt(job, 'd'))).await.unwrap();
        assert!(matches!(again, CaptureOutcome::AlreadyCaptured(_)), "{again:?}");
        assert_eq!(l.balance(client).await.unwrap(), bal(before.total - charge, before.held - 10_000_000));
        assert_eq!(l.receipts(&[job]).await.unwrap()[&job].signature, "c".repeat(128), "the first receipt stands");

        let over = Uuid::new_v4();
        placed(l, over, client, 1).await;
        let r = l.capture_with_receipt(over, worker, usage(1000, 1000), 1000, Some(&stored_receipt(over, 'e'))).await.unwrap();
        assert_eq!((r.receipt().unwrap().billed.charge, r.receipt().unwrap().shortfall > 0), (1, true));
        assert!(l.receipts(&[over]).await.unwrap().contains_key(&over));

        let released = Uuid::new_v4();
        placed(l, released, client, 1_000).await;
        l.release(released).await.unwrap();
        let r = l.capture_with_receipt(released, worker, usage(1, 1), 1000, Some(&stored_receipt(released, 'f'))).await.unwrap();
        assert!(matches!(r, CaptureOutcome::AlreadyReleased(_)), "{r:?}");
        assert!(l.receipts(&[released]).await.unwrap().contains_key(&released));
    }
}

async fn reconnect_keeps_books(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000_000).await;
    let job = Uuid::new_v4();
    placed(l, job, client, 5_000).await;
    // A second process on the same database: migrations are already applied.
    let l2 = Ledger::connect(&db.url, common::options()).await.unwrap();
    assert_eq!(l2.fee_account(), l.fee_account());
    assert_eq!(l2.balance(client).await.unwrap(), bal(1_000_000, 5_000));
    assert!(matches!(
        l2.capture(job, worker, usage(10, 10), 1000).await.unwrap(),
        CaptureOutcome::Captured(_)
    ));
    assert!(matches!(
        l.capture(job, worker, usage(10, 10), 1000).await.unwrap(),
        CaptureOutcome::AlreadyCaptured(_)
    ));
    l2.close().await;
}

async fn books_are_append_only(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000).await;
    let job = Uuid::new_v4();
    placed(l, job, client, 100).await;
    l.capture(job, worker, usage(10, 10), 1000).await.unwrap();
    let mut raw = db.raw().await;
    for sql in [
        "UPDATE entries SET amount = amount + 1",
        "DELETE FROM entries",
        "UPDATE transactions SET memo = 'x'",
        "DELETE FROM transactions",
        "UPDATE charges SET charge = 0",
        "DELETE FROM charges",
    ] {
        let err = sqlx::query(sql).execute(&mut raw).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

/// Captures racing releases and the reaper on the same jobs: each job ends exactly one way,
/// and the loser of the race changes nothing (on Postgres this exercises the capture's
/// unlocked fast path losing between its read and its write).
async fn capture_races_release(db: &TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000_000).await;
    let mut jobs = Vec::new();
    for _ in 0..30 {
        let job = Uuid::new_v4();
        // Already expired: the reaper may take any of them.
        l.hold(job, client, MODEL, 5_000, Duration::ZERO)
            .await
            .unwrap();
        jobs.push(job);
    }
    let mut tasks = Vec::new();
    for (i, &job) in jobs.iter().enumerate() {
        let l1 = l.clone();
        tasks.push(tokio::spawn(async move {
            matches!(
                l1.capture(job, worker, usage(10, 10), 1000).await.unwrap(),
                CaptureOutcome::Captured(_)
            )
        }));
        let l2 = l.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                matches!(l2.release(job).await.unwrap(), ReleaseOutcome::Released(_))
            } else {
                false
            }
        }));
    }
    let reaper = {
        let l = l.clone();
        tokio::spawn(async move { l.reap_expired(SystemTime::now()).await.unwrap().len() })
    };
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    let reaped = reaper.await.unwrap();
    // A job the reaper closed may still be captured late (that charges it); otherwise each
    // job is closed exactly once.
    let late = {
        let mut n = 0;
        for &job in &jobs {
            if l.receipt(job).await.unwrap().is_some_and(|r| r.held == 0) {
                n += 1;
            }
        }
        n
    };
    assert_eq!(wins + reaped - late, jobs.len(), "each job closed exactly once");
    let mut charged = 0;
    for &job in &jobs {
        let hold = l.find_hold(job).await.unwrap().unwrap();
        let receipt = l.receipt(job).await.unwrap();
        assert_eq!(
            hold.status == HoldStatus::Captured,
            receipt.is_some(),
            "{hold:?}"
        );
        assert_ne!(hold.status, HoldStatus::Active);
        charged += receipt.map_or(0, |r| r.billed.charge);
    }
    assert_eq!(
        l.balance(client).await.unwrap(),
        bal(1_000_000 - charged, 0)
    );
}

on_both_backends!(
    capture_races_release,
    lifecycle,
    idempotency,
    insufficient_funds,
    expiry_and_reaper,
    concurrent_holds,
    concurrent_mixed,
    over_hold,
    overflow_rejected,
    price_fixed_at_hold,
    worst_case_hold_priced_in_the_hold,
    captures_keep_their_receipts,
    reconnect_keeps_books,
    books_are_append_only,
);

/// The checker is not vacuous: tampered books are reported.
async fn tampered_books_are_reported(db: TestDb) {
    let l = &db.ledger;
    let (client, worker) = setup(l, 1_000).await;
    let job = Uuid::new_v4();
    placed(l, job, client, 100).await;
    l.capture(job, worker, usage(10, 10), 1000).await.unwrap();
    assert!(l.check().await.unwrap().is_empty());
    let mut raw = db.raw().await;
    sqlx::query("UPDATE accounts SET balance = balance + 7 WHERE id = $1")
        .bind(client.0)
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("INSERT INTO transactions (kind, job_id, created_at) VALUES ('capture', $1, 0)")
        .bind(job.to_string())
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("INSERT INTO entries (transaction_id, account_id, amount) VALUES (1, $1, 5)")
        .bind(worker.0)
        .execute(&mut raw)
        .await
        .unwrap();
    let found = l.check().await.unwrap();
    let has = |f: &dyn Fn(&Violation) -> bool| found.iter().any(f);
    assert!(
        has(&|v| matches!(
            v,
            Violation::UnbalancedTransaction {
                transaction: 1,
                sum: 5
            }
        )),
        "{found:#?}"
    );
    assert!(
        has(&|v| matches!(v, Violation::LedgerNotZero { sum: 5 })),
        "{found:#?}"
    );
    assert!(
        has(
            &|v| matches!(v, Violation::CachedBalanceMismatch { account, .. } if *account == client)
        ),
        "{found:#?}"
    );
    assert!(
        has(&|v| matches!(
            v,
            Violation::JobChargedTwice {
                transactions: 2,
                ..
            }
        )),
        "{found:#?}"
    );
    assert!(
        has(&|v| matches!(v, Violation::ChargeMismatch { .. })),
        "{found:#?}"
    );
    for v in &found {
        assert!(!v.to_string().is_empty());
    }
    l.close().await;
}

#[tokio::test]
async fn tampered_books_are_reported_postgres() {
    tampered_books_are_reported(TestDb::postgres().await).await;
}

#[tokio::test]
async fn tampered_books_are_reported_sqlite() {
    tampered_books_are_reported(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn rejects_unknown_urls_and_fees() {
    assert!(matches!(
        Ledger::connect("mysql://x", common::options()).await,
        Err(Error::UnsupportedUrl(_))
    ));
    let opts = billing::LedgerOptions {
        fee_bps: 10_001,
        ..common::options()
    };
    assert!(matches!(
        Ledger::connect("sqlite::memory:", opts).await,
        Err(Error::InvalidFee(10_001))
    ));
    // In-memory SQLite works (one connection serves reads and writes).
    let l = Ledger::connect("sqlite::memory:", common::options())
        .await
        .unwrap();
    let c = l.ensure_account(AccountKind::Client, "m").await.unwrap();
    l.credit(c, 5, "k", "").await.unwrap();
    assert_eq!(l.balance(c).await.unwrap().total, 5);
    assert!(l.check().await.unwrap().is_empty());
}
