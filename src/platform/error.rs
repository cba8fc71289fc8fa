//! Failures of platform calls, classified so that callers never look at transport
//! details to decide whether to try again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// An error body in the Problem Details shape (RFC 9457), read tolerantly: `title` may
/// come as `message`, `status` as `statusCode`, `detail` as `details`, and `errors`
/// is either a map of field names to messages (validation errors) or a list of
/// business errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProblemDetails {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Every message of `errors`, prefixed with its field name for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ProblemDetails {
    /// Reads a Problem Details body; `None` when the body is not a JSON object.
    pub fn parse(body: &str) -> Option<ProblemDetails> {
        let value: Value = serde_json::from_str(body).ok()?;
        let object = value.as_object()?;
        let text = |keys: &[&str]| {
            keys.iter()
                .find_map(|key| object.get(*key).and_then(Value::as_str))
                .map(str::to_owned)
        };
        let status = ["status", "statusCode"]
            .iter()
            .find_map(|key| object.get(*key).and_then(Value::as_u64))
            .and_then(|status| u16::try_from(status).ok());

        Some(ProblemDetails {
            problem_type: text(&["type"]),
            title: text(&["title", "message"]),
            status,
            detail: text(&["detail", "details"]),
            trace_id: text(&["traceId"]),
            errors: object.get("errors").map(error_messages).unwrap_or_default(),
        })
    }

    /// One line for logs and park reasons: the title, the detail and the errors.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(title) = &self.title {
            parts.push(title.clone());
        }
        if let Some(detail) = &self.detail {
            parts.push(detail.clone());
        }
        // Business errors often repeat the detail word for word.
        let errors: Vec<&str> = self
            .errors
            .iter()
            .map(String::as_str)
            .filter(|error| Some(*error) != self.detail.as_deref())
            .collect();
        if !errors.is_empty() {
            parts.push(errors.join("; "));
        }
        if parts.is_empty() {
            "no details given".to_owned()
        } else {
            parts.join(": ")
        }
    }
}

fn error_messages(errors: &Value) -> Vec<String> {
    match errors {
        Value::Object(fields) => {
            let fields: BTreeMap<&String, &Value> = fields.iter().collect();
            fields
                .into_iter()
                .flat_map(|(field, messages)| {
                    let messages = match messages {
                        Value::Array(items) => items.iter().map(message_of).collect(),
                        other => vec![message_of(other)],
                    };
                    messages
                        .into_iter()
                        .map(move |message| format!("{field}: {message}"))
                })
                .collect()
        }
        Value::Array(items) => items.iter().map(message_of).collect(),
        other => vec![message_of(other)],
    }
}

fn message_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Object(object) => object
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string()),
        other => other.to_string(),
    }
}

/// A failed platform call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlatformError {
    /// No complete answer within the configured time limit: the request may or may not
    /// have taken effect.
    #[error("the platform did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection could not be opened, or broke before the answer was complete.
    #[error("cannot reach the platform: {0}")]
    Connection(String),
    /// The platform answered with an error status.
    #[error("the platform answered {status}: {}", .problem.as_deref().map(ProblemDetails::summary).or_else(|| .body.clone()).unwrap_or_default())]
    Status {
        status: u16,
        problem: Option<Box<ProblemDetails>>,
        /// The body as text when it is not Problem Details.
        body: Option<String>,
        retry_after: Option<Duration>,
    },
    /// A success status whose body is not what the endpoint returns.
    #[error("the platform's answer could not be read: {0}")]
    InvalidBody(String),
}

impl PlatformError {
    /// Whether trying again later may succeed: timeouts, broken connections, 429 and
    /// 5xx answers that signal a passing condition.
    pub fn is_retryable(&self) -> bool {
        match self {
            PlatformError::Timeout(_)
            | PlatformError::Connection(_)
            | PlatformError::InvalidBody(_) => true,
            PlatformError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
        }
    }

    /// Whether the token was refused, which no retry of this command can fix.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, PlatformError::Status { status: 401, .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            PlatformError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The delay the platform asked for; honoured for 429 and 503 only.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PlatformError::Status {
                status: 429 | 503,
                retry_after,
                ..
            } => *retry_after,
            _ => None,
        }
    }

    pub fn problem(&self) -> Option<&ProblemDetails> {
        match self {
            PlatformError::Status { problem, .. } => problem.as_deref(),
            _ => None,
        }
    }

    /// Returns the failure as the semantic conventions' `error.type`: the status code
    /// of an error response, otherwise the short name of [`PlatformError::kind`].
    pub fn error_type(&self) -> String {
        match self {
            PlatformError::Status { status, .. } => status.to_string(),
            other => other.kind(),
        }
    }

    /// A short name of the failure for metrics and audit rows.
    pub fn kind(&self) -> String {
        match self {
            PlatformError::Timeout(_) => "timeout".to_owned(),
            PlatformError::Connection(_) => "connection".to_owned(),
            PlatformError::Status { status, .. } => format!("http_{status}"),
            PlatformError::InvalidBody(_) => "invalid_body".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_are_read() {
        let body = r#"{"type":"https://tools.ietf.org/html/rfc9110#section-15.5.1","title":"One or more validation errors occurred.","status":400,"traceId":"00-abc-def-01","errors":{"mistake":["Unknown expression group."]}}"#;
        let problem = ProblemDetails::parse(body).unwrap();
        assert_eq!(problem.status, Some(400));
        assert_eq!(problem.errors, vec!["mistake: Unknown expression group."]);
        assert_eq!(problem.trace_id.as_deref(), Some("00-abc-def-01"));
    }

    #[test]
    fn business_errors_are_read() {
        let body = r#"{"title":"Bad Request","status":400,"detail":"Cannot block","errors":[{"id":"ACC-1","message":"An active licensee exists"}]}"#;
        let problem = ProblemDetails::parse(body).unwrap();
        assert_eq!(problem.errors, vec!["An active licensee exists"]);
        assert_eq!(
            problem.summary(),
            "Bad Request: Cannot block: An active licensee exists"
        );
    }

    #[test]
    fn alternative_field_names_are_accepted() {
        let problem = ProblemDetails::parse(
            r#"{"message":"Not Found","statusCode":404,"details":"No such link"}"#,
        )
        .unwrap();
        assert_eq!(problem.title.as_deref(), Some("Not Found"));
        assert_eq!(problem.status, Some(404));
        assert_eq!(problem.detail.as_deref(), Some("No such link"));
    }

    #[test]
    fn non_json_body_is_not_problem_details() {
        assert_eq!(ProblemDetails::parse("<html>Bad gateway</html>"), None);
    }

    #[test]
    fn retryable_statuses_follow_the_contract() {
        let status = |status| PlatformError::Status {
            status,
            problem: None,
            body: None,
            retry_after: None,
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 415, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        assert!(PlatformError::Timeout(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn retry_after_only_counts_for_429_and_503() {
        let with = |status| PlatformError::Status {
            status,
            problem: None,
            body: None,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(with(429).retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(with(503).retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(with(500).retry_after(), None);
    }
}
