//! From the outbox to the platform: claim due commands, execute them with bounded
//! concurrency, record the outcomes.
//!
//! No transaction is open while a call is in flight. A claim is one short transaction,
//! and the call runs on its own. The recorder task then records the outcomes of many
//! calls in another short transaction.

mod execute;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use execute::{execute_attempt, park_reason, planned_requests};

use crate::config::DispatchConfig;
use crate::health::Readiness;
use crate::platform::PlatformClient;
use crate::retry::RetryPolicy;
use crate::storage::{AttemptRecord, Database, Finish, trace_id_of};
use crate::telemetry::report_settled;

/// Most commands claimed by one statement.
const MAX_CLAIM: usize = 256;

/// Most outcomes recorded in one transaction.
const MAX_RECORD_BATCH: usize = 512;

/// Longest pause between two attempts to record outcomes while the database is down.
const MAX_RECORD_RETRY_DELAY: Duration = Duration::from_secs(5);

/// State shared by the claim loop, the attempts and the recorder.
#[derive(Default)]
struct Shared {
    /// Commands this worker holds a lease on, until their outcome is recorded.
    in_flight: Mutex<HashSet<i64>>,
    /// Signalled when an outcome was recorded, which may make another command due.
    wake: Notify,
    /// Signalled when an attempt handed its outcome to the recorder and gave back its
    /// permit, so the claim loop can fill the place without waiting for the recording.
    freed: Notify,
    /// Dispatch is paused until then after the platform refused the token.
    paused_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn in_flight_ids(&self) -> Vec<i64> {
        self.in_flight
            .lock()
            .expect("in-flight set lock")
            .iter()
            .copied()
            .collect()
    }

    fn pause_until(&self, until: Instant) {
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }
}

/// Executes due commands against the platform.
pub struct Dispatcher {
    pub database: Database,
    pub client: PlatformClient,
    pub policy: RetryPolicy,
    pub config: DispatchConfig,
    pub worker_id: String,
    pub readiness: Arc<Readiness>,
}

impl Dispatcher {
    /// Runs until `shutdown`, then lets in-flight attempts finish within
    /// `dispatch.shutdown_grace` and puts the rest back in line.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if !self.config.enabled {
            warn!(
                "dispatch is disabled (dispatch.enabled = false); events are stored but no platform call is made"
            );
            shutdown.cancelled().await;
            return Ok(());
        }

        let shared = Arc::new(Shared::default());
        let (records, outcomes) =
            mpsc::channel::<AttemptRecord>(self.config.concurrency.max(16) * 2);
        let recorder_stop = CancellationToken::new();
        let recorder = tokio::spawn(record_outcomes(
            self.database.clone(),
            outcomes,
            self.worker_id.clone(),
            shared.clone(),
            self.readiness.clone(),
            recorder_stop.clone(),
        ));
        let housekeeping_stop = CancellationToken::new();
        let housekeeping = tokio::spawn(keep_leases(
            self.database.clone(),
            self.config.lease,
            self.worker_id.clone(),
            shared.clone(),
            housekeeping_stop.clone(),
        ));

        let mut attempts = JoinSet::new();
        self.claim_loop(&shared, &records, &mut attempts, &shutdown)
            .await;
        info!(in_flight = attempts.len(), "dispatch stopping");

        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while attempts.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            attempts.abort_all();
            let abandoned = shared.in_flight_ids();
            warn!(
                commands = abandoned.len(),
                "attempts still running after the shutdown grace period; they will be retried"
            );
            if let Err(error) = self
                .database
                .abandon_commands(&abandoned, &self.worker_id)
                .await
            {
                warn!(%error, "cannot record the abandoned attempts; their leases will expire instead");
            }
        }

        drop(records);
        if tokio::time::timeout(self.config.shutdown_grace, recorder)
            .await
            .is_err()
        {
            recorder_stop.cancel();
            warn!(
                "outcomes not recorded before the shutdown grace period ended; their leases will expire and they will be retried"
            );
        }
        housekeeping_stop.cancel();
        let _ = housekeeping.await;
        Ok(())
    }

    async fn claim_loop(
        &self,
        shared: &Arc<Shared>,
        records: &mpsc::Sender<AttemptRecord>,
        attempts: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let semaphore = Arc::new(Semaphore::new(self.config.concurrency));
        let mut listener = match self.database.listen_for_commands().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                warn!(%error, "cannot listen for new commands; polling instead");
                None
            }
        };
        let mut claim_error_logged = false;

        while !shutdown.is_cancelled() {
            while attempts.try_join_next().is_some() {}
            if self.wait_while_paused(shared, shutdown).await {
                break;
            }

            let free = semaphore.available_permits().min(MAX_CLAIM);
            if free == 0 {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = shared.freed.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }

            let claimed = match self
                .database
                .claim_due_commands(free, self.config.lease, &self.worker_id)
                .await
            {
                Ok(claimed) => {
                    claim_error_logged = false;
                    self.readiness.set_database_reachable(true);
                    claimed
                }
                Err(error) => {
                    self.readiness.set_database_reachable(false);
                    self.database.discard_connections_after(&error);
                    if !claim_error_logged {
                        error!(%error, "cannot claim commands; retrying");
                        claim_error_logged = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };

            let filled = claimed.len() == free;
            for command in claimed {
                let permit = semaphore
                    .clone()
                    .try_acquire_owned()
                    .expect("a permit per claimed command");
                shared
                    .in_flight
                    .lock()
                    .expect("in-flight set lock")
                    .insert(command.id);
                let client = self.client.clone();
                let policy = self.policy.clone();
                let auth_pause = self.config.auth_pause;
                let records = records.clone();
                let shared = shared.clone();
                attempts.spawn(async move {
                    debug!(
                        command.id = command.id,
                        object.id = command.spec.object_id(),
                        attempt = command.attempt,
                        "attempt started"
                    );
                    let record = execute_attempt(&client, &policy, auth_pause, command).await;
                    if let Finish::Deferred { delay } = record.finish {
                        shared.pause_until(Instant::now() + delay);
                    }
                    // The permit is released only once the recorder has the outcome,
                    // so claims never run ahead of recording: at most `concurrency`
                    // attempts plus the recorder's queue are outstanding at any time.
                    let _ = records.send(record).await;
                    drop(permit);
                    shared.freed.notify_one();
                });
            }
            if filled {
                continue;
            }

            let wait = match self.database.next_due_in().await {
                Ok(Some(due_in)) => due_in.min(self.config.poll_interval),
                _ => self.config.poll_interval,
            };
            tokio::select! {
                _ = wait_for_notification(&mut listener, wait) => {}
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// Sleeps while dispatch is paused after a 401. Returns true when shutdown came.
    async fn wait_while_paused(&self, shared: &Shared, shutdown: &CancellationToken) -> bool {
        let paused_until = *shared.paused_until.lock().expect("pause lock");
        let Some(until) = paused_until else {
            return false;
        };
        if until > Instant::now() {
            if !self.readiness.is_dispatch_paused() {
                error!(
                    pause_s = self.config.auth_pause.as_secs(),
                    "the platform refused the API token (401); dispatch paused. Check ERP_SYNC_PLATFORM_TOKEN"
                );
                self.readiness.set_dispatch_paused(true);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = shutdown.cancelled() => return true,
            }
            return false;
        }
        *shared.paused_until.lock().expect("pause lock") = None;
        self.readiness.set_dispatch_paused(false);
        info!("dispatch resumed; trying the token again");
        false
    }
}

/// Waits for a notification on the commands channel. Without a listener it never
/// returns; when the listener's connection fails it returns after `fallback`, so the
/// caller polls until the listener has reconnected.
async fn wait_for_notification(
    listener: &mut Option<sqlx::postgres::PgListener>,
    fallback: Duration,
) {
    let Some(active) = listener.as_mut() else {
        return std::future::pending().await;
    };
    match active.try_recv().await {
        Ok(Some(_)) => {}
        // The connection was lost; the listener reconnects on the next call.
        Ok(None) => tokio::time::sleep(fallback).await,
        Err(error) => {
            debug!(%error, "notification listener failed");
            tokio::time::sleep(fallback).await;
        }
    }
}

/// Records outcomes in batches until the channel closes or `stop` is cancelled.
async fn record_outcomes(
    database: Database,
    mut outcomes: mpsc::Receiver<AttemptRecord>,
    worker_id: String,
    shared: Arc<Shared>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_RECORD_BATCH);
    while outcomes.recv_many(&mut batch, MAX_RECORD_BATCH).await > 0 {
        let mut delay = Duration::from_millis(100);
        let mut logged = false;
        let settled = loop {
            match database.record_attempts(&batch, &worker_id).await {
                Ok(settled) => {
                    readiness.set_database_reachable(true);
                    break settled;
                }
                Err(error) => {
                    readiness.set_database_reachable(false);
                    database.discard_connections_after(&error);
                    if !logged {
                        error!(%error, outcomes = batch.len(), "cannot record attempt outcomes; retrying");
                        logged = true;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECORD_RETRY_DELAY);
        };

        {
            let mut in_flight = shared.in_flight.lock().expect("in-flight set lock");
            for record in &batch {
                in_flight.remove(&record.command.id);
            }
        }
        for record in &batch {
            log_attempt(record);
        }
        report_settled(&settled);
        batch.clear();
        shared.wake.notify_one();
    }
}

fn log_attempt(record: &AttemptRecord) {
    let command = &record.command;
    let error = record.error.as_deref().unwrap_or("");
    let trace_id = record.traceparent().and_then(trace_id_of);
    match &record.finish {
        Finish::Applied => {
            debug!(
                command.id = command.id,
                object.id = command.spec.object_id(),
                attempt = command.attempt,
                "command applied"
            );
        }
        Finish::Retry { delay } => {
            warn!(
                command.id = command.id,
                object.id = command.spec.object_id(),
                attempt = command.attempt,
                status = record.http_status,
                retry_in_ms = delay.as_millis() as u64,
                error,
                trace_id,
                "platform call failed; retrying"
            );
        }
        Finish::Parked { reason } => {
            error!(
                command.id = command.id,
                object.id = command.spec.object_id(),
                attempt = command.attempt,
                status = record.http_status,
                reason,
                error,
                trace_id,
                "command parked; it waits for an operator"
            );
        }
        Finish::Deferred { .. } => {
            debug!(
                command.id = command.id,
                "attempt deferred until the token is accepted"
            );
        }
        Finish::Continue { spec } => {
            info!(
                command.id = command.id,
                object.id = spec.object_id(),
                "ERP link resolved from its buyer and seller"
            );
        }
    }
}

/// Renews the leases of in-flight commands and releases expired ones of stopped
/// workers, every third of the lease.
async fn keep_leases(
    database: Database,
    lease: Duration,
    worker_id: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(lease / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        // While the database is unavailable a round waits for a connection; shutdown
        // does not wait for it. Abandoning either statement is harmless: a renewal only
        // extends leases, and a release only frees leases that have already ended.
        tokio::select! {
            _ = tend_leases(&database, lease, &worker_id, &shared) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Renews this worker's leases, then releases the expired leases of any worker.
async fn tend_leases(database: &Database, lease: Duration, worker_id: &str, shared: &Shared) {
    if let Err(error) = database
        .renew_leases(&shared.in_flight_ids(), lease, worker_id)
        .await
    {
        warn!(%error, "cannot renew command leases");
    }
    match database.release_expired_leases().await {
        Ok(0) => {}
        Ok(released) => {
            warn!(
                commands = released,
                "released commands whose worker stopped during an attempt; they will be retried"
            );
            shared.wake.notify_one();
        }
        Err(error) => warn!(%error, "cannot release expired leases"),
    }
}
