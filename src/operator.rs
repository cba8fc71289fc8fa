//! The operator commands: `status`, `audit`, `replay` and `dead-letters`. They read
//! and repair the outbox without SQL; every repair is audited with the operating
//! system user who ran it and the reason given.

use std::fmt::Write as _;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::broker::{BrokerLink, OutboundMessage, PublishOutcome};
use crate::config::Config;
use crate::dispatch::planned_requests;
use crate::exit::Incomplete;
use crate::storage::{
    Database, DeadLetterSelector, ParkedCommand, ParkedSelector, ReplayResult, StatusReport,
    TimelineRow,
};

/// The operating system user running the command, for audit rows.
pub fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Prints the status summary as a table or as JSON.
pub async fn print_status(database: &Database, json_output: bool) -> anyhow::Result<()> {
    let report = database.status_report().await?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&status_json(&report))?);
    } else {
        print!("{}", status_table(&report));
    }
    Ok(())
}

fn status_json(report: &StatusReport) -> Value {
    let commands: serde_json::Map<String, Value> = report
        .commands
        .iter()
        .map(|(state, count)| (state.clone(), json!(count)))
        .collect();
    let parked: serde_json::Map<String, Value> = report
        .parked
        .iter()
        .map(|(reason, count)| (reason.clone(), json!(count)))
        .collect();
    json!({
        "commands": commands,
        "due": report.due,
        "oldestDueAgeSeconds": report.oldest_due_age_seconds,
        "parkedByReason": parked,
        "unsettledEvents": report.unsettled_events,
        "deadLetters": { "waiting": report.dead_letters_waiting, "recorded": report.dead_letters_recorded },
    })
}

/// The status summary as a table.
pub fn status_table(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<28}{:>10}", "commands", "count");
    for (state, count) in &report.commands {
        let _ = writeln!(out, "  {state:<26}{count:>10}");
    }
    let _ = writeln!(out, "  {:<26}{:>10}", "due now", report.due);
    let oldest = report
        .oldest_due_age_seconds
        .map(|seconds| {
            humantime::format_duration(std::time::Duration::from_secs(seconds.max(0.0) as u64))
                .to_string()
        })
        .unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(out, "  {:<26}{:>10}", "oldest due waiting", oldest);
    let _ = writeln!(out, "{:<28}{:>10}", "parked by reason", "");
    if report.parked.is_empty() {
        let _ = writeln!(out, "  {:<26}{:>10}", "(none)", "");
    }
    for (reason, count) in &report.parked {
        let _ = writeln!(out, "  {reason:<26}{count:>10}");
    }
    let _ = writeln!(
        out,
        "{:<28}{:>10}",
        "events unsettled", report.unsettled_events
    );
    let _ = writeln!(
        out,
        "{:<28}{:>10}",
        "dead letters waiting", report.dead_letters_waiting
    );
    let _ = writeln!(
        out,
        "{:<28}{:>10}",
        "dead letters recorded", report.dead_letters_recorded
    );
    out
}

/// Prints the audit timeline of an event, command or object id.
pub async fn print_timeline(
    database: &Database,
    id: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    let rows = database.timeline(id).await?;
    if rows.is_empty() {
        anyhow::bail!(
            "nothing in the audit trail for {id:?}; give an event id (UUID), a command id or a platform object id"
        );
    }
    if json_output {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", timeline_table(&rows));
    }
    Ok(())
}

/// The audit timeline as a table, oldest first.
pub fn timeline_table(rows: &[TimelineRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<18} {:<36} {:>8} {:<20} {:>3} {:>6} {:>9}  detail",
        "time (UTC)", "step", "event", "command", "object", "try", "status", "ms"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<24} {:<18} {:<36} {:>8} {:<20} {:>3} {:>6} {:>9}  {}",
            row.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            row.step,
            row.event_id.map(|id| id.to_string()).unwrap_or_default(),
            row.command_id.map(|id| id.to_string()).unwrap_or_default(),
            row.object_id.as_deref().unwrap_or(""),
            row.attempt
                .map(|attempt| attempt.to_string())
                .unwrap_or_default(),
            row.http_status
                .map(|status| status.to_string())
                .unwrap_or_default(),
            row.duration_ms
                .map(|ms| format!("{ms:.1}"))
                .unwrap_or_default(),
            summarize_detail(row),
        );
    }
    out
}

/// A one-line summary of an audit row's detail.
fn summarize_detail(row: &TimelineRow) -> String {
    let Some(detail) = &row.detail else {
        return row
            .actor
            .as_deref()
            .map(|actor| format!("by {actor}"))
            .unwrap_or_default();
    };
    let text = |key: &str| detail.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut parts = Vec::new();
    if let Some(event_type) = text("eventType") {
        parts.push(format!(
            "{} {event_type}",
            text("objectType").unwrap_or_default()
        ));
    }
    for key in ["result", "effect", "reason", "error", "detail"] {
        if let Some(value) = text(key) {
            parts.push(format!("{key}: {value}"));
        }
    }
    if let Some(spec) = detail.get("spec") {
        parts.push(spec.to_string());
    }
    if let Some(calls) = detail.get("calls").and_then(Value::as_array) {
        let calls: Vec<String> = calls
            .iter()
            .map(|call| {
                format!(
                    "{} {} {}",
                    call["method"].as_str().unwrap_or(""),
                    call["path"].as_str().unwrap_or(""),
                    call.get("status")
                        .map(Value::to_string)
                        .unwrap_or_else(|| call["error"].to_string())
                )
            })
            .collect();
        parts.push(format!("calls: {}", calls.join("; ")));
    }
    if let Some(delay) = detail.get("nextAttemptInMs") {
        parts.push(format!("next attempt in {delay} ms"));
    }
    if let Some(actor) = &row.actor
        && matches!(row.step.as_str(), "replayed" | "republished")
    {
        parts.push(format!("by {actor}"));
    }
    parts.join(", ")
}

/// Options of `erp-sync replay`.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub selector: ParkedSelector,
    pub reason: String,
    pub dry_run: bool,
}

/// Replays parked commands, or shows what a replay would send.
pub async fn replay(
    database: &Database,
    config: &Config,
    request: &ReplayRequest,
) -> anyhow::Result<()> {
    if request.selector.is_empty() {
        anyhow::bail!(
            "choose the commands to replay with --command, --event, --object or --park-reason"
        );
    }
    let parked = database.parked_commands(&request.selector).await?;
    if parked.is_empty() {
        println!("no parked command matches");
        return Ok(());
    }

    for command in &parked {
        print!("{}", describe_parked(command, config.platform.page_limit));
    }
    if request.dry_run {
        println!(
            "dry run: {} command(s) would be replayed; nothing was changed",
            parked.len()
        );
        return Ok(());
    }

    let ids: Vec<i64> = parked.iter().map(|command| command.id).collect();
    let actor = os_user();
    let (results, _) = database
        .replay_commands(&ids, &actor, &request.reason)
        .await?;
    let mut replayed = 0;
    for result in &results {
        match result {
            ReplayResult::Replayed { .. } => replayed += 1,
            ReplayResult::Superseded { command_id } => {
                println!(
                    "command {command_id}: not replayed; a newer event about the same ERP link decides instead"
                );
            }
            ReplayResult::NotParked { command_id } => {
                println!("command {command_id}: not replayed; it is no longer parked");
            }
        }
    }
    println!(
        "replayed {replayed} command(s) as {actor:?}: {}",
        request.reason
    );
    Ok(())
}

/// What a parked command is, why it stopped, what a replay sends now and what its last
/// attempt sent.
pub fn describe_parked(command: &ParkedCommand, page_limit: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "command {} {} {} parked: {} after {} attempt(s){}",
        command.id,
        command.spec.kind(),
        command.spec.object_id(),
        command.park_reason.as_deref().unwrap_or("unknown"),
        command.attempts,
        command
            .last_status
            .map(|status| format!(", last status {status}"))
            .unwrap_or_default()
    );
    if let Some(error) = &command.last_error {
        let _ = writeln!(out, "  error:      {error}");
    }
    let events: Vec<String> = command.event_ids.iter().map(Uuid::to_string).collect();
    let _ = writeln!(out, "  events:     {}", events.join(", "));
    let _ = writeln!(out, "  idempotency key: {}", command.idempotency_key);
    let _ = writeln!(out, "  would send now:");
    for request in planned_requests(&command.spec, page_limit) {
        let _ = writeln!(out, "    {request}");
    }
    match command.last_calls.as_ref().and_then(Value::as_array) {
        Some(calls) if !calls.is_empty() => {
            let _ = writeln!(out, "  sent last time:");
            for call in calls {
                let body = call
                    .get("body")
                    .map(|body| format!(" {body}"))
                    .unwrap_or_default();
                let answer = call
                    .get("status")
                    .map(|status| format!("answered {status}"))
                    .unwrap_or_else(|| {
                        format!("failed: {}", call["error"].as_str().unwrap_or("no answer"))
                    });
                let _ = writeln!(
                    out,
                    "    {} {}{body} ({answer})",
                    call["method"].as_str().unwrap_or(""),
                    call["path"].as_str().unwrap_or("")
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "  sent last time: nothing; the command never reached the platform"
            );
        }
    }
    out
}

/// Lists recorded dead letters.
pub async fn list_dead_letters(
    database: &Database,
    selector: &DeadLetterSelector,
    json_output: bool,
) -> anyhow::Result<()> {
    let letters = database.dead_letters(selector).await?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    println!(
        "{:>6} {:<24} {:<18} {:>9} {:>10} {:<32} detail",
        "id", "received (UTC)", "reason", "bytes", "republished", "routing key"
    );
    for letter in &letters {
        println!(
            "{:>6} {:<24} {:<18} {:>9} {:>10} {:<32} {}",
            letter.id,
            letter.received_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            letter.reason,
            letter.size_bytes,
            letter.republish_count,
            letter.routing_key,
            letter.detail
        );
    }
    println!("{} dead letter(s)", letters.len());
    Ok(())
}

/// Publishes chosen dead letters to the events exchange again, after a fix.
pub async fn republish_dead_letters(
    database: &Database,
    config: &Config,
    selector: &DeadLetterSelector,
    reason: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    if selector.ids.is_empty() && selector.reason.is_none() {
        anyhow::bail!("choose the dead letters to publish again with --id or --dead-letter-reason");
    }
    let letters = database.dead_letters(selector).await?;
    if letters.is_empty() {
        println!("no dead letter matches");
        return Ok(());
    }

    let link = if dry_run {
        None
    } else {
        Some(BrokerLink::connect(&config.amqp).await?)
    };
    let publisher = match &link {
        Some(link) => Some(link.publisher().await?),
        None => None,
    };
    let actor = os_user();
    let mut skipped = 0;
    for letter in &letters {
        let Some(body) = &letter.body else {
            println!(
                "dead letter {}: not published; its body of {} bytes was over the size limit and was not kept",
                letter.id, letter.size_bytes
            );
            skipped += 1;
            continue;
        };
        let Some(publisher) = &publisher else {
            println!(
                "dead letter {}: would publish {} bytes to {:?} with routing key {:?}",
                letter.id,
                body.len(),
                config.amqp.exchange,
                letter.routing_key
            );
            continue;
        };
        let message = OutboundMessage {
            routing_key: letter.routing_key.clone(),
            body: body.clone(),
            message_id: letter.message_id.clone(),
            ..OutboundMessage::default()
        };
        match publisher
            .publish_event(&config.amqp.exchange, &message)
            .await?
        {
            PublishOutcome::Confirmed => {
                database
                    .record_republished(letter.id, &config.amqp.exchange, &actor, reason)
                    .await?;
                println!("dead letter {}: published again", letter.id);
            }
            outcome => {
                println!("dead letter {}: not published: {outcome:?}", letter.id);
                skipped += 1;
            }
        }
    }
    if let Some(link) = link {
        link.close().await;
    }
    if dry_run {
        println!("dry run: nothing was published");
    }
    if skipped > 0 {
        return Err(Incomplete(format!("{skipped} dead letter(s) were not published")).into());
    }
    Ok(())
}
