//! One attempt of one command against the platform, and the decision that follows it.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::ids::ErpLinkId;
use crate::plan::{CommandSpec, LinkTarget};
use crate::platform::{CallContext, PlatformClient, PlatformError};
use crate::retry::RetryPolicy;
use crate::storage::{AttemptRecord, ClaimedCommand, Finish};

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
    /// The command cannot succeed for a reason the platform did not report as an error.
    Park {
        reason: &'static str,
        message: String,
    },
}

/// Runs one attempt of `command` and decides what happens to it next.
pub async fn execute_attempt(
    client: &PlatformClient,
    policy: &RetryPolicy,
    auth_pause: Duration,
    command: ClaimedCommand,
) -> AttemptRecord {
    let mut context = CallContext {
        idempotency_key: Some(command.idempotency_key),
        traceparent: command.traceparent.clone(),
        tracestate: command.tracestate.clone(),
        calls: Vec::new(),
    };
    let started = Instant::now();
    let result = match &command.spec {
        CommandSpec::SynchronizeBuyer { buyer } => client
            .synchronize_buyer(buyer, &mut context)
            .await
            .map(|()| Effect::Applied("synchronized")),
        CommandSpec::SetErpLinkStatus { link, target, note } => {
            set_link_status(client, link, *target, note.as_deref(), &mut context).await
        }
    };
    let duration = started.elapsed();

    let mut detail = json!({ "calls": context.calls });
    let mut http_status = context.last_status();
    let (finish, error) = match result {
        Ok(Effect::Applied(how)) => {
            detail["effect"] = json!(how);
            (Finish::Applied, None)
        }
        Ok(Effect::Park { reason, message }) => (Finish::Parked { reason }, Some(message)),
        Err(failure) => {
            // The failed call decides, even when a later read succeeded.
            http_status = failure.status().or(http_status);
            if let Some(problem) = failure.problem() {
                detail["problem"] = json!(problem);
            }
            (
                decide_after_failure(&failure, command.attempt, policy, auth_pause),
                Some(failure.to_string()),
            )
        }
    };

    AttemptRecord {
        http_status,
        command,
        finish,
        error,
        duration,
        detail,
    }
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
