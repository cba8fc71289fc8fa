//! One attempt of one command against the platform, and the decision that follows it.

use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use serde_json::json;
use tracing::field::Empty;
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::ids::{BuyerId, ErpLinkId, SellerId};
use crate::plan::{CommandSpec, LinkTarget};
use crate::platform::{Buyer, CallContext, PlatformClient, PlatformError, Rql};
use crate::retry::RetryPolicy;
use crate::storage::{AttemptRecord, ClaimedCommand, Finish, FollowUp};
use crate::telemetry::context::TraceContext;
use crate::telemetry::metrics::metrics;

/// Most links from an attempt's span to the deliveries of the other events its
/// command serves; the SDK keeps 128 links per span by default.
const MAX_EVENT_LINKS: usize = 128;

/// Park reasons of the contract.
pub mod park_reason {
    pub const PERMANENT_FAILURE: &str = "permanent_failure";
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
    pub const ERP_LINK_NOT_FOUND: &str = "erp_link_not_found";
    pub const ERP_LINK_DISABLED: &str = "erp_link_disabled";
}

/// What a successful attempt found or did.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    /// The effect is in place; the text says how.
    Applied(&'static str),
    /// The seller's buyers were listed; each gets a synchronization.
    Listed(Vec<BuyerId>),
    /// The link of a buyer and a seller was found; the command continues on it.
    Resolved(CommandSpec),
    /// The command cannot succeed for a reason the platform did not report as an error.
    Park {
        reason: &'static str,
        message: String,
    },
}

/// Runs one attempt of `command` and decides what happens to it next. The attempt
/// has a span of its own, a child of the context stored with the command, so every
/// attempt of a command, hours apart too, belongs to the trace of its delivery.
pub async fn execute_attempt(
    client: &PlatformClient,
    policy: &RetryPolicy,
    auth_pause: Duration,
    command: ClaimedCommand,
) -> AttemptRecord {
    let span = attempt_span(&command);
    let attempt_trace = TraceContext::of_span(&span);
    let mut context = CallContext {
        idempotency_key: Some(command.idempotency_key),
        trace: TraceContext::new(command.traceparent.clone(), command.tracestate.clone()),
        calls: Vec::new(),
    };
    let started = Instant::now();
    let result = run_command(client, &command.spec, &mut context)
        .instrument(span.clone())
        .await;
    let duration = started.elapsed();

    let mut detail = json!({ "calls": context.calls });
    let mut http_status = context.last_status();
    let mut follow_up = FollowUp::None;
    let mut error_type = None;
    let (finish, error) = match result {
        Ok(Effect::Applied(how)) => {
            detail["effect"] = json!(how);
            (Finish::Applied, None)
        }
        Ok(Effect::Listed(buyers)) => {
            detail["effect"] = json!(format!("listed {} buyers", buyers.len()));
            follow_up = FollowUp::SynchronizeBuyers(buyers);
            (Finish::Applied, None)
        }
        Ok(Effect::Resolved(spec)) => {
            detail["effect"] = json!(format!("resolved the ERP link {}", spec.object_id()));
            (Finish::Continue { spec }, None)
        }
        Ok(Effect::Park { reason, message }) => {
            error_type = Some(reason.to_owned());
            (Finish::Parked { reason }, Some(message))
        }
        Err(failure) => {
            // The failed call decides, even when a later read succeeded.
            http_status = failure.status().or(http_status);
            if let Some(problem) = failure.problem() {
                detail["problem"] = json!(problem);
            }
            error_type = Some(failure.error_type());
            (
                decide_after_failure(&failure, command.attempt, policy, auth_pause),
                Some(failure.to_string()),
            )
        }
    };

    finish_attempt_span(&span, &finish, http_status, error_type.as_deref());
    metrics().attempt_finished(command.spec.kind(), finish.name(), error_type.as_deref());
    let attempt_trace = attempt_trace.unwrap_or_default();
    AttemptRecord {
        http_status,
        command,
        finish,
        error,
        duration,
        detail,
        follow_up,
        attempt_traceparent: attempt_trace.traceparent,
        attempt_tracestate: attempt_trace.tracestate,
    }
}

/// Opens the span of one attempt, whose parent is the context stored with the command.
/// When several events joined the command, the span links to the deliveries of the
/// others, and each link names its event.
fn attempt_span(command: &ClaimedCommand) -> Span {
    let parent = TraceContext::new(command.traceparent.clone(), command.tracestate.clone());
    let events = command.event_ids.iter().zip(&command.event_traceparents);
    // The event whose delivery is the parent; the newest when none matches.
    let parent_event = events
        .clone()
        .find(|(_, traceparent)| traceparent.is_some() && **traceparent == command.traceparent)
        .map(|(id, _)| *id)
        .or_else(|| command.event_ids.last().copied());

    let span = tracing::info_span!(
        "attempt",
        otel.name = %format_args!("attempt {}", command.spec.kind()),
        otel.status_code = Empty,
        command.id = command.id,
        command.kind = command.spec.kind(),
        object.id = command.spec.object_id(),
        event.id = parent_event.map(tracing::field::display),
        attempt = command.attempt,
        erp_sync.attempt.result = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    );
    parent.adopt(&span);
    for (event_id, traceparent) in events
        .filter(|(id, _)| Some(**id) != parent_event)
        .take(MAX_EVENT_LINKS)
    {
        let linked = TraceContext::new(traceparent.clone(), None);
        if let Some(span_context) = linked.span_context() {
            span.add_link_with_attributes(
                span_context,
                vec![KeyValue::new("event.id", event_id.to_string())],
            );
        }
    }
    span
}

/// Records what the attempt led to on its span; a retry, a park or a deferral marks
/// the span as failed.
fn finish_attempt_span(
    span: &Span,
    finish: &Finish,
    http_status: Option<u16>,
    error_type: Option<&str>,
) {
    span.record("erp_sync.attempt.result", finish.name());
    if let Some(status) = http_status {
        span.record("http.response.status_code", i64::from(status));
    }
    if let Some(error_type) = error_type {
        span.record("error.type", error_type);
    }
    if matches!(
        finish,
        Finish::Retry { .. } | Finish::Parked { .. } | Finish::Deferred { .. }
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Makes the calls of one command.
async fn run_command(
    client: &PlatformClient,
    spec: &CommandSpec,
    context: &mut CallContext,
) -> Result<Effect, PlatformError> {
    match spec {
        CommandSpec::SynchronizeBuyer { buyer } => client
            .synchronize_buyer(buyer, context)
            .await
            .map(|()| Effect::Applied("synchronized")),
        CommandSpec::SetErpLinkStatus { link, target, note } => {
            set_link_status(client, link, *target, note.as_deref(), context).await
        }
        CommandSpec::ResolveErpLink {
            buyer,
            seller,
            target,
            note,
        } => resolve_link(client, buyer, seller, *target, note.clone(), context).await,
        CommandSpec::ListSellerBuyers { seller } => client
            .list_seller_buyers(seller, context)
            .await
            .map(|buyers| Effect::Listed(buyer_ids(buyers))),
    }
}

/// Finds the link of a buyer and a seller, so the command can continue on it.
async fn resolve_link(
    client: &PlatformClient,
    buyer: &BuyerId,
    seller: &SellerId,
    target: LinkTarget,
    note: Option<String>,
    context: &mut CallContext,
) -> Result<Effect, PlatformError> {
    let Some(found) = client.find_erp_link(buyer, seller, context).await? else {
        return Ok(Effect::Park {
            reason: park_reason::ERP_LINK_NOT_FOUND,
            message: format!("no ERP link joins the buyer {buyer} and the seller {seller}"),
        });
    };
    let Some(link) = ErpLinkId::parse(&found.id) else {
        return Err(PlatformError::InvalidBody(format!(
            "the platform returned the ERP link id {:?}",
            found.id
        )));
    };
    Ok(Effect::Resolved(CommandSpec::SetErpLinkStatus {
        link,
        target,
        note,
    }))
}

/// The ids of listed buyers, skipping any the platform returns in another shape.
fn buyer_ids(buyers: Vec<Buyer>) -> Vec<BuyerId> {
    buyers
        .into_iter()
        .filter_map(|buyer| {
            let id = BuyerId::parse(&buyer.id);
            if id.is_none() {
                tracing::warn!(buyer.id = %buyer.id, "the platform listed a buyer id of an unknown shape; skipping it");
            }
            id
        })
        .collect()
}

/// The requests a command would make if it ran now, relative to
/// `/public/v1/accounts`, for `erp-sync replay --dry-run`.
pub fn planned_requests(spec: &CommandSpec, page_limit: u32) -> Vec<String> {
    match spec {
        CommandSpec::SynchronizeBuyer { buyer } => {
            vec![format!("POST /buyers/{buyer}/synchronize")]
        }
        CommandSpec::SetErpLinkStatus { link, target, note } => {
            link_requests(link.as_str(), *target, note.as_deref())
        }
        CommandSpec::ResolveErpLink {
            buyer,
            seller,
            target,
            note,
        } => {
            let filter = Rql::and([
                Rql::eq("buyer.id", buyer.as_str()),
                Rql::eq("seller.id", seller.as_str()),
            ]);
            let mut requests = vec![format!(
                "GET /erp-links?{}&limit=2&offset=0",
                filter.as_str()
            )];
            requests.extend(link_requests("{link found}", *target, note.as_deref()));
            requests
        }
        CommandSpec::ListSellerBuyers { seller } => {
            let filter = Rql::any("sellers", Rql::eq("id", seller.as_str()));
            vec![
                format!(
                    "GET /buyers?{}&limit={page_limit}&offset=0, then the further pages",
                    filter.as_str()
                ),
                "POST /buyers/{id}/synchronize for each buyer listed".to_owned(),
            ]
        }
    }
}

fn link_requests(link: &str, target: LinkTarget, note: Option<&str>) -> Vec<String> {
    let action = match target {
        LinkTarget::Blocked => "block",
        LinkTarget::Active => "unblock",
    };
    let body = note
        .map(|note| format!(" {}", json!({ "note": note })))
        .unwrap_or_default();
    vec![
        format!("GET /erp-links/{link}"),
        format!(
            "POST /erp-links/{link}/{action}{body} (only if the link is not {} already)",
            target.status()
        ),
    ]
}

/// Chooses between retrying, parking and deferring after a failed call.
fn decide_after_failure(
    failure: &PlatformError,
    attempt: u32,
    policy: &RetryPolicy,
    auth_pause: Duration,
) -> Finish {
    if failure.is_unauthorized() {
        return Finish::Deferred { delay: auth_pause };
    }
    if !failure.is_retryable() {
        return Finish::Parked {
            reason: park_reason::PERMANENT_FAILURE,
        };
    }
    if !policy.may_retry(attempt) {
        return Finish::Parked {
            reason: park_reason::RETRIES_EXHAUSTED,
        };
    }
    Finish::Retry {
        delay: policy.delay(attempt, failure.retry_after()),
    }
}

/// Brings an ERP link to `target`: read it first and call only when needed; after a
/// refusal (400 or 409), read it again, because the refusal may mean it is already
/// there.
async fn set_link_status(
    client: &PlatformClient,
    link: &ErpLinkId,
    target: LinkTarget,
    note: Option<&str>,
    context: &mut CallContext,
) -> Result<Effect, PlatformError> {
    let current = client.get_erp_link(link, context).await?;
    match current.status.as_deref() {
        Some(status) if status == target.status() => {
            return Ok(Effect::Applied("already in the target status"));
        }
        Some("Disabled") => {
            return Ok(Effect::Park {
                reason: park_reason::ERP_LINK_DISABLED,
                message: format!(
                    "the ERP link {link} is Disabled; only the platform can leave that status"
                ),
            });
        }
        _ => {}
    }

    let changed = match target {
        LinkTarget::Blocked => client.block_erp_link(link, note, context).await,
        LinkTarget::Active => client.unblock_erp_link(link, context).await,
    };
    match changed {
        Ok(_) => Ok(Effect::Applied(match target {
            LinkTarget::Blocked => "blocked",
            LinkTarget::Active => "unblocked",
        })),
        Err(refusal) if matches!(refusal.status(), Some(400 | 409)) => {
            let again = client.get_erp_link(link, context).await?;
            if again.status.as_deref() == Some(target.status()) {
                Ok(Effect::Applied("refused, but already in the target status"))
            } else {
                Err(refusal)
            }
        }
        Err(failure) => Err(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&Config::defaults().retry)
    }

    fn status(code: u16, retry_after: Option<u64>) -> PlatformError {
        PlatformError::Status {
            status: code,
            problem: None,
            body: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn unauthorized_defers_without_parking() {
        let finish =
            decide_after_failure(&status(401, None), 1, &policy(), Duration::from_secs(30));
        assert_eq!(
            finish,
            Finish::Deferred {
                delay: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn permanent_statuses_park() {
        for code in [400, 403, 404, 409, 422] {
            let finish = decide_after_failure(&status(code, None), 1, &policy(), Duration::ZERO);
            assert_eq!(
                finish,
                Finish::Parked {
                    reason: park_reason::PERMANENT_FAILURE
                },
                "{code}"
            );
        }
    }

    #[test]
    fn transient_failures_retry_until_exhausted() {
        let policy = policy();
        let finish = decide_after_failure(&status(503, None), 1, &policy, Duration::ZERO);
        assert!(matches!(finish, Finish::Retry { .. }));
        let finish = decide_after_failure(&status(503, None), 8, &policy, Duration::ZERO);
        assert_eq!(
            finish,
            Finish::Parked {
                reason: park_reason::RETRIES_EXHAUSTED
            }
        );
    }

    #[test]
    fn retry_after_sets_the_delay() {
        let finish = decide_after_failure(&status(429, Some(2)), 1, &policy(), Duration::ZERO);
        assert_eq!(
            finish,
            Finish::Retry {
                delay: Duration::from_secs(2)
            }
        );
    }
}
