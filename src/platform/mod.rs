//! The Marketplace Platform's Accounts API client: the only module that uses reqwest.
//!
//! Every request carries `Authorization: Bearer`, `Accept: application/json` and a
//! `User-Agent` naming erp-sync; writes carry the command's `Idempotency-Key`. Each
//! request has an HTTP client span of its own, and its W3C `traceparent` names that
//! span, so the platform's side of the call joins the trace. Requests are bounded by a
//! connect timeout and a total timeout, so a platform that never answers, or stalls in
//! the middle of a body, cannot hold a worker.

mod error;
mod model;
mod retry_after;
mod rql;
mod throttle;

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;
use tracing::field::Empty;
use uuid::Uuid;

pub use error::{PlatformError, ProblemDetails};
pub use model::{Buyer, ErpLink, ListMeta, ObjectRef, Page, Pagination};
pub use retry_after::parse_retry_after;
pub use rql::Rql;
pub use throttle::Throttle;

use crate::config::PlatformConfig;
use crate::ids::{BuyerId, ErpLinkId, SellerId};
use crate::telemetry::context::{TRACEPARENT, TRACESTATE, TraceContext};
use crate::telemetry::metrics::{PlatformCall, metrics};

/// Path of the Accounts API below the platform's origin.
const ACCOUNTS_PATH: &str = "/public/v1/accounts";

/// `User-Agent` of every request.
pub const USER_AGENT_VALUE: &str = concat!("erp-sync/", env!("CARGO_PKG_VERSION"));

/// Pause of every call after a 429 without `Retry-After`.
const DEFAULT_BACK_OFF: Duration = Duration::from_secs(1);

/// Largest error body kept as text when it is not Problem Details, in bytes.
const MAX_ERROR_TEXT: usize = 2048;

/// One request as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    /// The JSON body sent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Per-command facts sent with each call, and the record of the calls made.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub idempotency_key: Option<Uuid>,
    /// The trace context sent when the call's span has none, because no telemetry
    /// is installed.
    pub trace: TraceContext,
    pub calls: Vec<CallRecord>,
}

impl CallContext {
    /// The status of the last response received, if any.
    pub fn last_status(&self) -> Option<u16> {
        self.calls.iter().rev().find_map(|call| call.status)
    }
}

/// A client of the Accounts API.
#[derive(Clone, Debug)]
pub struct PlatformClient {
    http: reqwest::Client,
    /// `<origin>/public/v1/accounts`.
    accounts_root: String,
    /// Host and port of the origin, for the `server.*` attributes.
    server_address: String,
    server_port: u16,
    timeout: Duration,
    page_limit: u32,
    throttle: std::sync::Arc<Throttle>,
}

impl PlatformClient {
    /// Builds a client for the configured origin, token and timeouts.
    pub fn new(config: &PlatformConfig) -> anyhow::Result<PlatformClient> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "platform.token contains characters that cannot be sent in a header"
                )
            })?;
        // Keeps the header out of reqwest's Debug output.
        authorization.set_sensitive(true);

        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, authorization);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));

        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let origin = url::Url::parse(&config.url)?;
        Ok(PlatformClient {
            http,
            accounts_root: format!("{}{ACCOUNTS_PATH}", config.url),
            server_address: origin.host_str().unwrap_or_default().to_owned(),
            server_port: origin.port_or_known_default().unwrap_or(443),
            timeout: config.timeout,
            page_limit: config.page_limit,
            throttle: std::sync::Arc::new(Throttle::new(
                (config.max_rate > 0.0).then_some(config.max_rate),
                config.max_pause,
            )),
        })
    }

    /// `POST /buyers/{id}/synchronize`: reconciles the buyer with the ERP.
    pub async fn synchronize_buyer(
        &self,
        buyer: &BuyerId,
        context: &mut CallContext,
    ) -> Result<(), PlatformError> {
        let path = format!("/buyers/{buyer}/synchronize");
        self.send(
            Method::POST,
            &path,
            "/buyers/{id}/synchronize",
            None,
            None,
            context,
        )
        .await
        .map(drop)
    }

    /// `GET /buyers/{id}`.
    pub async fn get_buyer(
        &self,
        buyer: &BuyerId,
        context: &mut CallContext,
    ) -> Result<Buyer, PlatformError> {
        let path = format!("/buyers/{buyer}");
        decode(
            self.send(Method::GET, &path, "/buyers/{id}", None, None, context)
                .await?,
        )
    }

    /// `GET /erp-links/{id}`.
    pub async fn get_erp_link(
        &self,
        link: &ErpLinkId,
        context: &mut CallContext,
    ) -> Result<ErpLink, PlatformError> {
        let path = format!("/erp-links/{link}");
        decode(
            self.send(Method::GET, &path, "/erp-links/{id}", None, None, context)
                .await?,
        )
    }

    /// `POST /erp-links/{id}/block`, writing `note` on the link when given.
    pub async fn block_erp_link(
        &self,
        link: &ErpLinkId,
        note: Option<&str>,
        context: &mut CallContext,
    ) -> Result<ErpLink, PlatformError> {
        let path = format!("/erp-links/{link}/block");
        let body = note.map(|note| serde_json::json!({ "note": note }));
        decode(
            self.send(
                Method::POST,
                &path,
                "/erp-links/{id}/block",
                None,
                body.as_ref(),
                context,
            )
            .await?,
        )
    }

    /// `POST /erp-links/{id}/unblock`.
    pub async fn unblock_erp_link(
        &self,
        link: &ErpLinkId,
        context: &mut CallContext,
    ) -> Result<ErpLink, PlatformError> {
        let path = format!("/erp-links/{link}/unblock");
        decode(
            self.send(
                Method::POST,
                &path,
                "/erp-links/{id}/unblock",
                None,
                None,
                context,
            )
            .await?,
        )
    }

    /// Finds the link of a buyer and a seller; the pair is unique on the platform.
    pub async fn find_erp_link(
        &self,
        buyer: &BuyerId,
        seller: &SellerId,
        context: &mut CallContext,
    ) -> Result<Option<ErpLink>, PlatformError> {
        let filter = Rql::and([
            Rql::eq("buyer.id", buyer.as_str()),
            Rql::eq("seller.id", seller.as_str()),
        ]);
        let page: Page<ErpLink> = self.list_page("/erp-links", &filter, 0, 2, context).await?;
        Ok(page.data.into_iter().next())
    }

    /// Lists every buyer of a seller, following the pagination to the end.
    pub async fn list_seller_buyers(
        &self,
        seller: &SellerId,
        context: &mut CallContext,
    ) -> Result<Vec<Buyer>, PlatformError> {
        let filter = Rql::any("sellers", Rql::eq("id", seller.as_str()));
        self.list_all("/buyers", &filter, context).await
    }

    /// Reads one page of a collection.
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: &Rql,
        offset: u64,
        limit: u64,
        context: &mut CallContext,
    ) -> Result<Page<T>, PlatformError> {
        let query = format!("{}&limit={limit}&offset={offset}", filter.encoded());
        // A collection path has no ids, so it is its own template.
        decode(
            self.send(
                Method::GET,
                collection,
                collection,
                Some(&query),
                None,
                context,
            )
            .await?,
        )
    }

    /// Reads every page of a collection. Stops at `$meta.pagination.total`, or at the
    /// first short page when the platform gives no total.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: &Rql,
        context: &mut CallContext,
    ) -> Result<Vec<T>, PlatformError> {
        let limit = u64::from(self.page_limit);
        let mut items = Vec::new();
        let mut offset = 0;
        loop {
            let page: Page<T> = self
                .list_page(collection, filter, offset, limit, context)
                .await?;
            let received = page.data.len() as u64;
            items.extend(page.data);

            let pagination = page.meta.pagination.unwrap_or_default();
            // The platform may cap the limit below the one asked for.
            let page_size = if pagination.limit > 0 {
                pagination.limit
            } else {
                limit
            };
            offset += received;
            let finished = match pagination.total {
                Some(total) => offset >= total,
                None => received < page_size,
            };
            if finished || received == 0 {
                return Ok(items);
            }
        }
    }

    /// Sends one request and returns the body of a success response. `template` is
    /// `path` with its ids replaced by `{id}`, for spans and metrics.
    async fn send(
        &self,
        method: Method,
        path: &str,
        template: &str,
        query: Option<&str>,
        body: Option<&serde_json::Value>,
        context: &mut CallContext,
    ) -> Result<bytes::Bytes, PlatformError> {
        let mut url = format!("{}{path}", self.accounts_root);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }

        let mut request = self.http.request(method.clone(), &url);
        if method != Method::GET
            && let Some(key) = context.idempotency_key
        {
            request = request.header("Idempotency-Key", key.to_string());
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }

        self.throttle.acquire().await;
        let template = format!("{ACCOUNTS_PATH}{template}");
        let span = self.request_span(&method, &url, &template);
        let trace = TraceContext::of_span(&span).unwrap_or_else(|| context.trace.clone());
        if let Some(traceparent) = trace.traceparent {
            request = request.header(TRACEPARENT, traceparent);
            if let Some(tracestate) = trace.tracestate {
                request = request.header(TRACESTATE, tracestate);
            }
        }

        let started = Instant::now();
        let result = self.exchange(request).instrument(span.clone()).await;
        let duration = started.elapsed();
        self.record_request(&span, &method, &template, &result, duration);
        let record_path = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        context.calls.push(CallRecord {
            method: method.to_string(),
            path: record_path,
            body: body.cloned(),
            status: match &result {
                Ok((status, _)) => Some(status.as_u16()),
                Err(error) => error.status(),
            },
            duration_ms: duration.as_secs_f64() * 1000.0,
            error: result.as_ref().err().map(PlatformError::kind),
        });
        result.map(|(_, body)| body)
    }

    /// Opens the HTTP client span of one request, as the semantic conventions
    /// describe it, as a child of the current span (the command's attempt).
    fn request_span(&self, method: &Method, url: &str, template: &str) -> tracing::Span {
        tracing::info_span!(
            "platform request",
            otel.name = %format_args!("{method} {template}"),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %method,
            url.full = %url,
            url.template = %template,
            server.address = %self.server_address,
            server.port = self.server_port,
            http.response.status_code = Empty,
            error.type = Empty,
        )
    }

    /// Records the outcome of a request on its span and in the request duration
    /// metric. Any 4xx or 5xx response, and a request without a response, is an error.
    fn record_request(
        &self,
        span: &tracing::Span,
        method: &Method,
        template: &str,
        result: &Result<(StatusCode, bytes::Bytes), PlatformError>,
        duration: Duration,
    ) {
        let (status, error_type) = match result {
            Ok((status, _)) => (Some(status.as_u16()), None),
            Err(error) => (error.status(), Some(error.error_type())),
        };
        if let Some(status) = status {
            span.record("http.response.status_code", i64::from(status));
        }
        if let Some(error_type) = &error_type {
            span.record("error.type", error_type.as_str());
            span.record("otel.status_code", "ERROR");
        }
        metrics().platform_call(PlatformCall {
            method: method.as_str(),
            url_template: template,
            server_address: &self.server_address,
            server_port: self.server_port,
            status,
            error_type: error_type.as_deref(),
            duration,
        });
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes), PlatformError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&error))?;

        if status.is_success() {
            return Ok((status, body));
        }

        let text = String::from_utf8_lossy(&body);
        let problem = ProblemDetails::parse(&text).map(Box::new);
        let body = problem
            .is_none()
            .then(|| text.chars().take(MAX_ERROR_TEXT).collect());
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let date = headers.get(DATE).and_then(|date| date.to_str().ok());
                parse_retry_after(value, date, SystemTime::now())
            });
        if status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
        {
            // Every call slows down, not only the command that got this response.
            self.throttle
                .back_off(retry_after.unwrap_or(DEFAULT_BACK_OFF));
        }
        Err(PlatformError::Status {
            status: status.as_u16(),
            problem,
            body,
            retry_after,
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> PlatformError {
        if error.is_timeout() {
            PlatformError::Timeout(self.timeout)
        } else {
            PlatformError::Connection(error_chain(error))
        }
    }
}

fn decode<T: DeserializeOwned>(body: bytes::Bytes) -> Result<T, PlatformError> {
    serde_json::from_slice(&body).map_err(|error| PlatformError::InvalidBody(error.to_string()))
}

/// Joins an error with its sources, which is where reqwest keeps the useful part.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
