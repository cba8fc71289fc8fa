//! The Marketplace Platform's Accounts API client: the only module that uses reqwest.
//!
//! Every request carries `Authorization: Bearer`, `Accept: application/json` and a
//! `User-Agent` naming erp-sync; writes carry the command's `Idempotency-Key`; and a
//! W3C `traceparent` is passed on when the caller has one. Requests are bounded by a
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
use uuid::Uuid;

pub use error::{PlatformError, ProblemDetails};
pub use model::{Buyer, ErpLink, ListMeta, ObjectRef, Page, Pagination};
pub use retry_after::parse_retry_after;
pub use rql::Rql;
pub use throttle::Throttle;

use crate::config::PlatformConfig;
use crate::ids::{BuyerId, ErpLinkId, SellerId};

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
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
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
        Ok(PlatformClient {
            http,
            accounts_root: format!("{}/public/v1/accounts", config.url),
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
        self.send(Method::POST, &path, None, None, context)
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
        decode(self.send(Method::GET, &path, None, None, context).await?)
    }

    /// `GET /erp-links/{id}`.
    pub async fn get_erp_link(
        &self,
        link: &ErpLinkId,
        context: &mut CallContext,
    ) -> Result<ErpLink, PlatformError> {
        let path = format!("/erp-links/{link}");
        decode(self.send(Method::GET, &path, None, None, context).await?)
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
            self.send(Method::POST, &path, None, body.as_ref(), context)
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
        decode(self.send(Method::POST, &path, None, None, context).await?)
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
        decode(
            self.send(Method::GET, collection, Some(&query), None, context)
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

    /// Sends one request and returns the body of a success response.
    async fn send(
        &self,
        method: Method,
        path: &str,
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
        if let Some(traceparent) = &context.traceparent {
            request = request.header("traceparent", traceparent);
            if let Some(tracestate) = &context.tracestate {
                request = request.header("tracestate", tracestate);
            }
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }

        self.throttle.acquire().await;
        let started = Instant::now();
        let result = self.exchange(request).await;
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
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            error: result.as_ref().err().map(PlatformError::kind),
        });
        result.map(|(_, body)| body)
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
