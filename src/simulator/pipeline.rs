//! The middleware every API request passes: it logs the request, applies the rate
//! limit, fault rules and latency, checks the bearer token, and records the response.
//! Control routes under `/_sim/` skip all of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::config::{Behaviour, UnauthorizedBody};
use super::faults::{Fault, Outcome, RetryAfter};
use super::log::{AppliedFault, route_key};
use super::problem::{Problem, TRACE_ID};
use super::server::ConnectionControl;
use super::state::App;

/// Largest accepted request body, in bytes; larger bodies get 413.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Reports whether a path belongs to the control API.
pub(crate) fn is_control_path(path: &str) -> bool {
    path == "/_sim" || path.starts_with("/_sim/")
}

/// Returns a W3C trace id in traceparent form (`00-<trace id>-<span id>-01`): the trace id
/// of a valid incoming `traceparent` header, or a new random one, with a new span id.
pub(crate) fn new_trace_id(traceparent: Option<&HeaderValue>) -> String {
    let incoming = traceparent
        .and_then(|value| value.to_str().ok())
        .and_then(trace_id_of_traceparent);
    let trace = incoming.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// Returns the trace id of a valid `traceparent` value. A valid value has a version,
/// a 32-digit trace id, a 16-digit parent id and flags, all in lower-case hex, and
/// a trace id that is not all zeros.
fn trace_id_of_traceparent(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |text: &str, length: usize| {
        text.len() == length
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    let [version, trace, parent, flags, ..] = parts.as_slice() else {
        return None;
    };
    let valid = hex(version, 2)
        && *version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|byte| byte != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then(|| (*trace).to_owned())
}

/// Runs the API request steps; control routes pass straight through.
pub(crate) async fn pipeline(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if is_control_path(request.uri().path()) {
        return next.run(request).await;
    }
    let trace_id = new_trace_id(request.headers().get("traceparent"));
    TRACE_ID
        .scope(trace_id, handle_api_request(app, request, next))
        .await
}

async fn handle_api_request(app: Arc<App>, request: Request, next: Next) -> Response {
    let connection = request.extensions().get::<ConnectionControl>().cloned();
    let (parts, body) = request.into_parts();
    let (body, too_large) = match to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(body) => (body, false),
        Err(_) => (Bytes::new(), true),
    };
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let route = route_key(&method, &path);
    let seq =
        app.log
            .lock()
            .record_arrival(&method, &path, parts.uri.query(), &parts.headers, &body);
    app.log_changed();
    tracing::debug!(seq, %method, %path, "simulator received a request");

    let behaviour = app.behaviour();
    let decision = app.gate.lock().decide(
        &method,
        &path,
        Instant::now(),
        behaviour.rate_limit.as_ref(),
        behaviour.latency.as_ref(),
    );
    if let Some(latency) = decision.latency {
        tokio::time::sleep(latency).await;
    }

    let (response, fault) = match decision.outcome {
        Outcome::Normal if too_large => (payload_too_large(), None),
        Outcome::Normal => (dispatch(&app, parts, body, next, &behaviour).await, None),
        Outcome::RateLimited { retry_after } => {
            let response = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "The simulator's rate limit is exceeded.",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after))
            .into_response();
            (
                response,
                Some(AppliedFault {
                    rule: None,
                    kind: "rate_limit".into(),
                }),
            )
        }
        Outcome::Fault {
            rule_id,
            fault,
            process_request,
        } => {
            let applied = Some(AppliedFault {
                rule: Some(rule_id),
                kind: fault.kind_name().into(),
            });
            tracing::debug!(
                seq,
                rule = rule_id,
                kind = fault.kind_name(),
                "simulator injected a fault"
            );
            match fault {
                Fault::Status {
                    status,
                    retry_after,
                    detail,
                } => {
                    if process_request {
                        dispatch(&app, parts, body, next, &behaviour).await;
                    }
                    (status_fault(status, retry_after, detail), applied)
                }
                Fault::Delay { delay } => {
                    tokio::time::sleep(delay).await;
                    (dispatch(&app, parts, body, next, &behaviour).await, applied)
                }
                Fault::StallBody => {
                    let response = dispatch(&app, parts, body, next, &behaviour).await;
                    (stall_body(response).await, applied)
                }
                Fault::Hang | Fault::CloseConnection { .. } => {
                    if process_request {
                        dispatch(&app, parts, body, next, &behaviour).await;
                    }
                    app.log.lock().record_response(seq, &route, None, applied);
                    app.log_changed();
                    if let (Fault::CloseConnection { reset }, Some(connection)) =
                        (&fault, &connection)
                    {
                        connection.close(*reset);
                    }
                    // The connection task drops this future when the client goes away,
                    // the connection is closed, or the simulator shuts down.
                    std::future::pending::<()>().await;
                    unreachable!("a pending future never completes");
                }
            }
        }
    };

    app.log
        .lock()
        .record_response(seq, &route, Some(response.status().as_u16()), fault);
    app.log_changed();
    response
}

/// Checks the bearer token and runs the handler.
async fn dispatch(
    app: &App,
    mut parts: Parts,
    body: Bytes,
    next: Next,
    behaviour: &Behaviour,
) -> Response {
    match app.authenticate(&parts.headers) {
        Some(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        None => Problem::unauthorized(behaviour.unauthorized_body == UnauthorizedBody::Problem)
            .into_response(),
    }
}

fn payload_too_large() -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("The request body is larger than {MAX_REQUEST_BODY} bytes."),
    )
    .into_response()
}

fn status_fault(status: u16, retry_after: Option<RetryAfter>, detail: Option<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let detail =
        detail.unwrap_or_else(|| "The simulator injected this error with a fault rule.".to_owned());
    let mut problem = Problem::new(status, detail);
    if let Some(retry_after) = retry_after {
        problem = problem.with_header(header::RETRY_AFTER, retry_after_value(retry_after));
    }
    problem.into_response()
}

fn retry_after_value(retry_after: RetryAfter) -> HeaderValue {
    match retry_after {
        RetryAfter::Seconds(seconds) => HeaderValue::from(seconds),
        RetryAfter::HttpDate(seconds) => {
            // HTTP dates have whole seconds: round up so the wait is never shorter.
            let at = SystemTime::now() + Duration::from_secs(seconds);
            let nanos = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|since| since.subsec_nanos())
                .unwrap_or(0);
            let at = if nanos > 0 {
                at + Duration::from_nanos(u64::from(1_000_000_000 - nanos))
            } else {
                at
            };
            HeaderValue::from_str(&httpdate::fmt_http_date(at))
                .expect("HTTP dates are valid header values")
        }
    }
}

/// Sends the status, the headers with the full `Content-Length`, and the first half of
/// the body, then stalls forever.
async fn stall_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let declared = bytes.len().max(1);
    let sent = bytes.slice(..bytes.len() / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
    let first = futures::stream::iter((!sent.is_empty()).then_some(Ok::<_, Infallible>(sent)));
    let stream = first.chain(futures::stream::pending());
    Response::from_parts(parts, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_trace_id_is_kept() {
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let trace_id = new_trace_id(Some(&value));
        assert!(
            trace_id.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{trace_id}"
        );
        assert_eq!(trace_id.len(), 55);
    }

    #[test]
    fn invalid_traceparent_is_replaced() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let trace_id = new_trace_id(Some(&HeaderValue::from_static(bad)));
            assert!(
                !trace_id.contains("4bf92f3577b34da6"),
                "{bad} gave {trace_id}"
            );
            assert!(
                !trace_id.starts_with("00-00000000000000000000000000000000"),
                "{bad} gave {trace_id}"
            );
        }
    }
}
