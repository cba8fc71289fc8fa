//! The checks every fault test ends with: each event settled exactly once, nothing
//! lost, nothing left open, and no platform call repeated except a retry with the
//! same `Idempotency-Key`.

use std::collections::{BTreeMap, HashMap, HashSet};

use erp_sync::simulator::LoggedRequest;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ACCOUNTS, DATABASE, FaultEnv, id_of};

/// Outcomes that settle an event, as audit steps with the event's id.
const EVENT_OUTCOMES: [&str; 4] = ["applied", "ignored", "superseded", "parked"];

/// Whether a command may have reached the platform more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resends {
    /// Nothing crashed or timed out: one successful POST per idempotency key.
    Never,
    /// A worker died or gave up during a call: the command may be sent again, but only
    /// with its own idempotency key.
    SameKeyOnly,
}

/// A command as stored, with what the checks need.
#[derive(Debug)]
struct StoredCommand {
    id: i64,
    kind: String,
    state: String,
    object_id: String,
    idempotency_key: Uuid,
    applied_rows: i64,
}

/// Runs every check against the worker's database and the simulator's request log.
pub async fn assert_settled_exactly_once(env: &FaultEnv, events: &[Value], resends: Resends) {
    let url = env.cluster.url(DATABASE);
    assert_settled_exactly_once_at(env, &url, events, resends).await;
}

/// Runs every check against the database at `database_url` and the simulator's
/// request log.
pub async fn assert_settled_exactly_once_at(
    env: &FaultEnv,
    database_url: &str,
    events: &[Value],
    resends: Resends,
) {
    let pool = FaultEnv::connect_to(database_url).await;
    assert_every_event_settled_once(&pool, events).await;
    let commands = stored_commands(&pool).await;
    assert_no_command_open(&commands);
    assert_one_success_per_command(&commands);
    let posts = env.posts(&format!("{ACCOUNTS}/*"));
    assert_posts_carry_their_command_key(&commands, &posts, resends);
    pool.close().await;
}

/// Checks that every event is stored, has an outcome, and has exactly one outcome row
/// in the audit trail.
async fn assert_every_event_settled_once(pool: &PgPool, events: &[Value]) {
    let ids: Vec<Uuid> = events.iter().map(id_of).collect();
    let rows: Vec<(Uuid, Option<String>, i64)> = sqlx::query_as(
        "SELECT e.id, e.outcome, \
                (SELECT count(*) FROM audit a WHERE a.event_id = e.id AND a.step = ANY($2)) \
         FROM events e WHERE e.id = ANY($1)",
    )
    .bind(&ids)
    .bind(EVENT_OUTCOMES.as_slice())
    .fetch_all(pool)
    .await
    .expect("the events are read");
    let stored: HashMap<Uuid, (Option<String>, i64)> = rows
        .into_iter()
        .map(|(id, outcome, rows)| (id, (outcome, rows)))
        .collect();

    let lost: Vec<&Uuid> = ids.iter().filter(|id| !stored.contains_key(id)).collect();
    assert!(lost.is_empty(), "{} events were lost: {lost:?}", lost.len());
    let unsettled: Vec<&Uuid> = ids.iter().filter(|id| stored[*id].0.is_none()).collect();
    assert!(
        unsettled.is_empty(),
        "{} events are unsettled: {unsettled:?}",
        unsettled.len()
    );
    let settled_twice: Vec<(&Uuid, i64)> = ids
        .iter()
        .map(|id| (id, stored[id].1))
        .filter(|(_, rows)| *rows != 1)
        .collect();
    assert!(
        settled_twice.is_empty(),
        "events without exactly one outcome row in the audit trail (id, rows): {settled_twice:?}"
    );
}

async fn stored_commands(pool: &PgPool) -> Vec<StoredCommand> {
    let rows: Vec<(i64, String, String, String, Uuid, i64)> = sqlx::query_as(
        "SELECT c.id, c.kind, c.state, c.object_id, c.idempotency_key, \
                (SELECT count(*) FROM audit a WHERE a.command_id = c.id AND a.step = 'applied') \
         FROM commands c ORDER BY c.id",
    )
    .fetch_all(pool)
    .await
    .expect("the commands are read");
    rows.into_iter()
        .map(
            |(id, kind, state, object_id, idempotency_key, applied_rows)| StoredCommand {
                id,
                kind,
                state,
                object_id,
                idempotency_key,
                applied_rows,
            },
        )
        .collect()
}

fn assert_no_command_open(commands: &[StoredCommand]) {
    let open: Vec<(i64, &str)> = commands
        .iter()
        .filter(|command| command.state == "pending" || command.state == "running")
        .map(|command| (command.id, command.state.as_str()))
        .collect();
    assert!(open.is_empty(), "commands left open: {open:?}");
}

/// Checks that an applied command has one `applied` row in the audit trail and any
/// other command has none.
fn assert_one_success_per_command(commands: &[StoredCommand]) {
    for command in commands {
        let expected = i64::from(command.state == "applied");
        assert_eq!(
            command.applied_rows, expected,
            "command {} ({}, {}) has {} applied rows in the audit trail",
            command.id, command.kind, command.state, command.applied_rows
        );
    }
}

/// Checks that every POST carries the idempotency key of a command about the object in
/// its path and that each applied synchronization was called successfully. Unless
/// `resends` allows it, no key may have been called successfully twice.
fn assert_posts_carry_their_command_key(
    commands: &[StoredCommand],
    posts: &[LoggedRequest],
    resends: Resends,
) {
    let by_key: HashMap<Uuid, &StoredCommand> = commands
        .iter()
        .map(|command| (command.idempotency_key, command))
        .collect();
    let mut successes: BTreeMap<Uuid, usize> = BTreeMap::new();
    for post in posts {
        let key = post
            .header("idempotency-key")
            .and_then(|key| Uuid::parse_str(key).ok())
            .unwrap_or_else(|| panic!("POST {} has no idempotency key", post.path));
        let command = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("POST {} carries the unknown key {key}", post.path));
        assert!(
            post.path.contains(&command.object_id),
            "POST {} carries the key of command {} about {}",
            post.path,
            command.id,
            command.object_id
        );
        if post
            .status
            .is_some_and(|status| (200..300).contains(&status))
        {
            *successes.entry(key).or_default() += 1;
        }
    }

    for command in commands
        .iter()
        .filter(|command| command.kind == "synchronize_buyer" && command.state == "applied")
    {
        assert!(
            successes.contains_key(&command.idempotency_key),
            "applied command {} about {} has no successful call",
            command.id,
            command.object_id
        );
    }
    if resends == Resends::Never {
        let repeated: Vec<(&Uuid, &usize)> =
            successes.iter().filter(|(_, count)| **count > 1).collect();
        assert!(
            repeated.is_empty(),
            "successful calls repeated without a crash (key, calls): {repeated:?}"
        );
    }
}

/// Reads the attempt rows about one object, in the order the audit trail recorded them.
pub async fn attempt_rows(pool: &PgPool, object_id: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT step, command_id FROM audit WHERE object_id = $1 \
         AND step IN ('attempt_started', 'attempt_finished', 'attempt_abandoned', 'lease_expired') \
         ORDER BY id",
    )
    .bind(object_id)
    .fetch_all(pool)
    .await
    .expect("the attempt rows are read")
}

/// Checks that the attempts about one object never overlapped.
///
/// A start normally follows the finish (or the abandonment at shutdown) of the attempt
/// before it. Another worker may also start once the object's lease has expired,
/// because the worker holding it was killed mid-attempt. The audit trail records that
/// expiry (`lease_expired`) only when a worker next releases expired leases, which can
/// come after the new start. Such an interrupted attempt must never finish later,
/// because a finish would mean its worker was alive and two calls overlapped.
pub fn assert_attempts_never_overlap(object_id: &str, rows: &[(String, i64)]) {
    let mut running: Option<i64> = None;
    let mut interrupted: HashSet<i64> = HashSet::new();
    for (step, command) in rows {
        match step.as_str() {
            "attempt_started" => {
                if let Some(previous) = running {
                    interrupted.insert(previous);
                }
                running = Some(*command);
            }
            "lease_expired" => {
                interrupted.remove(command);
                if running == Some(*command) {
                    running = None;
                }
            }
            _ => {
                assert!(
                    !interrupted.contains(command),
                    "{object_id}: command {command} finished after another attempt started: {rows:?}"
                );
                assert!(
                    running.is_none_or(|current| current == *command),
                    "{object_id}: {step} of command {command} while command {running:?} ran: {rows:?}"
                );
                running = None;
            }
        }
    }
    assert!(
        interrupted.is_empty(),
        "{object_id}: attempts of {interrupted:?} were overtaken without their leases expiring: {rows:?}"
    );
}
