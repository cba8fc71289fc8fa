//! Problem Details responses (RFC 9457, formerly RFC 7807) in the platform's two shapes:
//! validation errors map a field to messages, business errors are a list of
//! `{id, message}`.

use std::collections::BTreeMap;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::dataset::ObjectKind;

/// Content type of every error response.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Validation errors: a field, parameter or query part mapped to its messages.
pub type ValidationErrors = BTreeMap<String, Vec<String>>;

/// Title of validation errors, as the platform writes it.
pub const VALIDATION_TITLE: &str = "One or more validation errors occurred";

tokio::task_local! {
    /// W3C trace id (traceparent format) of the request being handled.
    pub(crate) static TRACE_ID: String;
}

/// An error response.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    title: String,
    detail: Option<String>,
    errors: Option<Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
    with_body: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_uri: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    trace_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a Value>,
}

impl Problem {
    /// Builds a Problem with the status's standard title.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: Some(detail.into()),
            errors: None,
            headers: Vec::new(),
            with_body: true,
        }
    }

    /// 404 for an id that no object has.
    pub fn not_found(kind: ObjectKind, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("{} with id '{id}' not found.", kind.name()),
        )
    }

    /// Builds a rejected action's Problem. `status` is the `illegal_transition_status`
    /// setting (400 or 409) and `code` a stable machine-readable reason.
    pub fn business(status: u16, code: &str, message: String) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut problem = Self::new(status, message.clone());
        problem.errors = Some(json!([{ "id": code, "message": message }]));
        problem
    }

    /// 400 with validation errors.
    pub fn validation(errors: ValidationErrors) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            title: VALIDATION_TITLE.to_owned(),
            detail: None,
            errors: Some(json!(errors)),
            headers: Vec::new(),
            with_body: true,
        }
    }

    /// 400 with one validation error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(BTreeMap::from([(field.into(), vec![message.into()])]))
    }

    /// 401 for a missing or unknown bearer token.
    pub fn unauthorized(with_body: bool) -> Self {
        let mut problem = Self::new(
            StatusCode::UNAUTHORIZED,
            "The request has no valid bearer token in the Authorization header.",
        );
        problem.with_body = with_body;
        problem.with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 403 for an action that the token's account may not perform.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Returns the RFC section that describes a status, as the platform's `type` field does.
fn type_uri(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        401 => "https://tools.ietf.org/html/rfc9110#section-15.5.2",
        403 => "https://tools.ietf.org/html/rfc9110#section-15.5.4",
        404 => "https://tools.ietf.org/html/rfc9110#section-15.5.5",
        405 => "https://tools.ietf.org/html/rfc9110#section-15.5.6",
        408 => "https://tools.ietf.org/html/rfc9110#section-15.5.9",
        409 => "https://tools.ietf.org/html/rfc9110#section-15.5.10",
        413 => "https://tools.ietf.org/html/rfc9110#section-15.5.14",
        415 => "https://tools.ietf.org/html/rfc9110#section-15.5.16",
        422 => "https://tools.ietf.org/html/rfc9110#section-15.5.21",
        429 => "https://tools.ietf.org/html/rfc6585#section-4",
        500 => "https://tools.ietf.org/html/rfc9110#section-15.6.1",
        501 => "https://tools.ietf.org/html/rfc9110#section-15.6.2",
        502 => "https://tools.ietf.org/html/rfc9110#section-15.6.3",
        503 => "https://tools.ietf.org/html/rfc9110#section-15.6.4",
        504 => "https://tools.ietf.org/html/rfc9110#section-15.6.5",
        _ => "about:blank",
    }
}

/// Returns the trace id of the request being handled, or a new one outside a request.
pub(crate) fn current_trace_id() -> String {
    TRACE_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| super::pipeline::new_trace_id(None))
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let trace_id = current_trace_id();
        let mut response = if self.with_body {
            let body = ProblemBody {
                type_uri: type_uri(self.status),
                title: &self.title,
                status: self.status.as_u16(),
                detail: self.detail.as_deref(),
                trace_id: &trace_id,
                errors: self.errors.as_ref(),
            };
            let json = serde_json::to_vec(&body).expect("a problem serializes");
            (
                self.status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
                )],
                json,
            )
                .into_response()
        } else {
            self.status.into_response()
        };
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
