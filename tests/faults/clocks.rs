//! Clocks: the worker's wall clock two minutes behind, then ahead of, the database's
//! (with libfaketime). Retry deadlines are written as the database's `now()` plus a
//! delay and compared with the database's `now()`, so second attempts arrive on
//! schedule by the simulator's real clock either way.

use std::time::Duration;

use chrono::{DateTime, Utc};
use erp_sync::simulator::{Fault, FaultRule, LoggedRequest, RetryAfter};

use crate::support::checks::assert_settled_exactly_once;
use crate::support::{ACCOUNTS, FaultEnv, Resends, envelope};

/// The worker's clock offset in seconds: behind in one run, ahead in the other.
const SKEW_SECONDS: i64 = 120;

/// Delay ceiling of the first retry after a plain 503 in these runs
/// (`retry.initial_delay`); the delay is drawn between zero and it.
const BACKOFF_CEILING: Duration = Duration::from_secs(2);

/// `Retry-After` of the 429, scaled down from 60 s: a skew of two minutes still dwarfs
/// it.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Lateness allowed for a retry: the dispatcher looks for due commands at least every
/// `dispatch.poll_interval` (250 ms), plus time to claim and call on a busy machine.
const LATENESS: Duration = Duration::from_millis(1500);

/// Returns the path of the multi-threaded libfaketime of the `faketime` Debian package.
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib is readable")
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists());
    found
        .unwrap_or_else(|| panic!("libfaketime is missing; install the Debian package faketime"))
        .display()
        .to_string()
}

/// Returns the time from `earlier` to `later` on the simulator's clock.
fn gap(earlier: &LoggedRequest, later: &LoggedRequest) -> Duration {
    (later.at - earlier.at)
        .to_std()
        .expect("the retry came after the first call")
}

/// Runs the worker with its clock shifted by `skew_seconds` and checks both retries by
/// the simulator's clock.
async fn retries_on_schedule_with_clock(skew_seconds: i64) {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_RETRY_INITIAL_DELAY", "2s");
    let buyers = env.active_buyers(2);
    let (unavailable, throttled) = (&buyers[0], &buyers[1]);
    let control = env.simulator.control();
    control
        .add_fault(
            FaultRule::new(
                format!("{ACCOUNTS}/buyers/{unavailable}/synchronize"),
                Fault::status(503),
            )
            .times(1),
        )
        .expect("the fault rule is valid");
    control
        .add_fault(
            FaultRule::new(
                format!("{ACCOUNTS}/buyers/{throttled}/synchronize"),
                Fault::status_retry_after(429, RetryAfter::Seconds(RETRY_AFTER.as_secs())),
            )
            .times(1),
        )
        .expect("the fault rule is valid");

    let worker = env.spawn_worker_with(&[
        ("LD_PRELOAD", libfaketime()),
        ("FAKETIME", format!("{skew_seconds:+}s")),
        // Only the wall clock is skewed; the monotonic clock keeps running as NTP
        // would leave it.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]);
    let started = worker
        .wait_for_log("the worker consuming", Duration::from_secs(30), |line| {
            line.is("INFO", "consuming events")
        })
        .await;
    let worker_time: DateTime<Utc> = started
        .field("timestamp")
        .and_then(|text| text.parse().ok())
        .expect("the log line has a timestamp");
    let skew = (worker_time - Utc::now()).num_seconds();
    assert!(
        (skew - skew_seconds).abs() <= 5,
        "the worker's clock is {skew} s off, not {skew_seconds} s"
    );

    // One at a time, so the pause after the 429 cannot delay the 503's retry.
    let first = envelope("Buyer", unavailable, "updated", None);
    env.producer.publish(&first).await;
    env.wait_until_settled(std::slice::from_ref(&first), Duration::from_secs(20))
        .await;
    let calls = env.posts(&format!("{ACCOUNTS}/buyers/{unavailable}/synchronize"));
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].status, calls[1].status), (Some(503), Some(200)));
    let waited = gap(&calls[0], &calls[1]);
    assert!(
        waited <= BACKOFF_CEILING + LATENESS,
        "the retry after a 503 came {waited:?} later, past its {BACKOFF_CEILING:?} ceiling"
    );

    let second = envelope("Buyer", throttled, "updated", None);
    env.producer.publish(&second).await;
    env.wait_until_settled(std::slice::from_ref(&second), Duration::from_secs(20))
        .await;
    let calls = env.posts(&format!("{ACCOUNTS}/buyers/{throttled}/synchronize"));
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].status, calls[1].status), (Some(429), Some(200)));
    let waited = gap(&calls[0], &calls[1]);
    assert!(
        waited >= RETRY_AFTER && waited <= RETRY_AFTER + LATENESS,
        "the retry after Retry-After: {} came {waited:?} later",
        RETRY_AFTER.as_secs()
    );

    assert_settled_exactly_once(&env, &[first, second], Resends::Never).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_behind_database_keeps_retry_schedule() {
    retries_on_schedule_with_clock(-SKEW_SECONDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_ahead_of_database_keeps_retry_schedule() {
    retries_on_schedule_with_clock(SKEW_SECONDS).await;
}
