//! The request log (a bounded ring buffer) and the per-route statistics.

use std::collections::{BTreeMap, VecDeque};

use axum::http::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::dataset::ObjectKind;
use super::rql::Pattern;

/// Largest request body kept in a log entry, in bytes; longer bodies are cut.
pub const LOGGED_BODY_LIMIT: usize = 64 * 1024;

/// Largest number of distinct routes counted in the statistics; further routes are
/// counted under `other`, so random paths cannot grow the table without bound.
const MAX_ROUTES: usize = 256;

/// One API request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Sequence number, starting at 1 and never reused, even after the log is cleared.
    pub seq: u64,
    /// Arrival time in UTC, RFC 3339 with microseconds.
    #[serde(
        serialize_with = "serialize_micros",
        deserialize_with = "deserialize_time"
    )]
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    /// Raw query string, as sent (still percent-encoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Request headers with lower-case names; repeated headers are joined with ", ".
    /// The secret part of the bearer token is replaced by `***`.
    pub headers: BTreeMap<String, String>,
    /// Body as UTF-8 (lossy), cut at [`LOGGED_BODY_LIMIT`] bytes; absent when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Response status; absent while in flight and for faults that send no status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Fault applied to the request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<AppliedFault>,
}

impl LoggedRequest {
    /// Returns a header value by its name, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Reports whether the outcome is known: a status was sent, or a fault that sends
    /// none (hang, closed connection) was applied.
    pub fn is_finished(&self) -> bool {
        self.status.is_some() || self.fault.is_some()
    }

    /// Parses the body as JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.body.as_deref()?).ok()
    }
}

/// A fault applied to a logged request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFault {
    /// Id of the fault rule; absent for the global rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u64>,
    /// `status`, `delay`, `hang`, `stall_body`, `close_connection` or `rate_limit`.
    pub kind: String,
}

/// Selects log entries; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestFilter {
    /// HTTP method, in any case.
    pub method: Option<String>,
    /// Path glob; `*` matches any run of characters.
    pub path: Option<String>,
    /// Only entries with a sequence number greater than this.
    pub since: Option<u64>,
    /// Only entries with this response status.
    pub status: Option<u16>,
    /// Only entries whose outcome is known (`true`: a status was sent or a hang or
    /// closed-connection fault applied) or still in flight (`false`).
    pub finished: Option<bool>,
    /// Only the first this many matching entries.
    pub limit: Option<usize>,
}

impl RequestFilter {
    /// Builds a filter on a path glob.
    pub fn path(glob: impl Into<String>) -> Self {
        Self {
            path: Some(glob.into()),
            ..Self::default()
        }
    }

    /// Adds a method to the filter.
    pub fn with_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Keeps only entries whose outcome is known.
    pub fn finished(mut self) -> Self {
        self.finished = Some(true);
        self
    }

    /// Adds a lower bound (exclusive) on the sequence number.
    pub fn with_since(mut self, seq: u64) -> Self {
        self.since = Some(seq);
        self
    }

    pub(crate) fn compile(&self) -> CompiledFilter<'_> {
        CompiledFilter {
            filter: self,
            path: self.path.as_deref().map(Pattern::glob),
        }
    }
}

pub(crate) struct CompiledFilter<'a> {
    filter: &'a RequestFilter,
    path: Option<Pattern>,
}

impl CompiledFilter<'_> {
    pub(crate) fn matches(&self, entry: &LoggedRequest) -> bool {
        let filter = self.filter;
        filter.since.is_none_or(|since| entry.seq > since)
            && filter
                .method
                .as_deref()
                .is_none_or(|method| method.eq_ignore_ascii_case(&entry.method))
            && filter
                .status
                .is_none_or(|status| entry.status == Some(status))
            && filter
                .finished
                .is_none_or(|finished| entry.is_finished() == finished)
            && self
                .path
                .as_ref()
                .is_none_or(|pattern| pattern.matches(&entry.path, false))
    }
}

/// Counters of API requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// API requests received.
    pub requests: u64,
    /// Responses per route (`METHOD /path/{id}/action`) and status; requests that got no
    /// status (hang, closed connection) count under `none`.
    pub routes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests that a fault rule matched.
    pub faults: u64,
    /// Requests rejected with 429 by the global rate limit.
    pub rate_limited: u64,
    /// Entries in the request log now.
    pub log_entries: usize,
    /// Capacity of the request log.
    pub log_capacity: usize,
    /// Entries dropped because the log was full.
    pub log_dropped: u64,
}

/// The ring buffer of requests with the running statistics.
pub(crate) struct RequestLog {
    entries: VecDeque<LoggedRequest>,
    capacity: usize,
    next_seq: u64,
    dropped: u64,
    stats: Stats,
    /// Responses per route and status (`None`: no status was sent).
    routes: BTreeMap<String, BTreeMap<Option<u16>, u64>>,
}

impl RequestLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            next_seq: 1,
            dropped: 0,
            stats: Stats::default(),
            routes: BTreeMap::new(),
        }
    }

    /// Records a new request and returns its sequence number.
    pub(crate) fn record_arrival(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.requests += 1;
        if self.capacity == 0 {
            return seq;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.dropped += 1;
        }
        let body = (!body.is_empty()).then(|| {
            let kept = &body[..body.len().min(LOGGED_BODY_LIMIT)];
            String::from_utf8_lossy(kept).into_owned()
        });
        self.entries.push_back(LoggedRequest {
            seq,
            at: Utc::now(),
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            headers: loggable_headers(headers),
            body,
            status: None,
            fault: None,
        });
        seq
    }

    /// Records the response status (or its absence) and the fault of a request.
    pub(crate) fn record_response(
        &mut self,
        seq: u64,
        route: &str,
        status: Option<u16>,
        fault: Option<AppliedFault>,
    ) {
        if let Some(fault) = &fault {
            if fault.rule.is_some() {
                self.stats.faults += 1;
            } else {
                self.stats.rate_limited += 1;
            }
        }
        // Allocates only for a route's first request, since this runs for every request.
        let known = self.routes.contains_key(route);
        let route = if known || self.routes.len() < MAX_ROUTES {
            route
        } else {
            "other"
        };
        if !self.routes.contains_key(route) {
            self.routes.insert(route.to_owned(), BTreeMap::new());
        }
        let counts = self
            .routes
            .get_mut(route)
            .expect("the route was just inserted");
        *counts.entry(status).or_default() += 1;

        let Some(first) = self.entries.front().map(|entry| entry.seq) else {
            return;
        };
        let Some(position) = seq.checked_sub(first) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(position as usize)
            && entry.seq == seq
        {
            entry.status = status;
            entry.fault = fault;
        }
    }

    pub(crate) fn find(&self, filter: &RequestFilter) -> Vec<LoggedRequest> {
        let compiled = filter.compile();
        let limit = filter.limit.unwrap_or(usize::MAX);
        self.entries
            .iter()
            .filter(|entry| compiled.matches(entry))
            .take(limit)
            .cloned()
            .collect()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            log_entries: self.entries.len(),
            log_capacity: self.capacity,
            log_dropped: self.dropped,
            routes: self
                .routes
                .iter()
                .map(|(route, counts)| {
                    let counts = counts
                        .iter()
                        .map(|(status, count)| {
                            (
                                status
                                    .map_or_else(|| "none".to_owned(), |status| status.to_string()),
                                *count,
                            )
                        })
                        .collect();
                    (route.clone(), counts)
                })
                .collect(),
            ..self.stats.clone()
        }
    }

    pub(crate) fn reset_stats(&mut self) {
        self.stats = Stats::default();
        self.routes.clear();
        self.dropped = 0;
    }
}

/// Returns the route of a path for the statistics: id segments become `{id}`.
pub(crate) fn route_key(method: &str, path: &str) -> String {
    let mut route = String::with_capacity(path.len() + method.len() + 1);
    route.push_str(method);
    route.push(' ');
    for (position, segment) in path.split('/').enumerate() {
        if position > 0 {
            route.push('/');
        }
        if ObjectKind::of_id(segment).is_some() {
            route.push_str("{id}");
        } else {
            route.push_str(segment);
        }
    }
    route
}

fn loggable_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut logged: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes());
        let text = if name == axum::http::header::AUTHORIZATION {
            redact_authorization(&text)
        } else {
            text.into_owned()
        };
        logged
            .entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&text);
            })
            .or_insert(text);
    }
    logged
}

/// Keeps the scheme and the token id of an `idt:TKN-…:<secret>` token, and hides the rest.
fn redact_authorization(value: &str) -> String {
    let (scheme, token) = value.split_once(' ').unwrap_or(("", value));
    let shown = match token.rsplit_once(':') {
        Some((id_part, _secret)) if token.starts_with("idt:") => format!("{id_part}:***"),
        _ => "***".to_owned(),
    };
    if scheme.is_empty() {
        shown
    } else {
        format!("{scheme} {shown}")
    }
}

fn serialize_micros<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn deserialize_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| serde::de::Error::custom(format!("invalid time `{text}`: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_key_replaces_ids() {
        assert_eq!(
            route_key(
                "POST",
                "/public/v1/accounts/erp-links/ERP-1111-2222-3333/block"
            ),
            "POST /public/v1/accounts/erp-links/{id}/block"
        );
        assert_eq!(
            route_key("GET", "/public/v1/accounts/buyers"),
            "GET /public/v1/accounts/buyers"
        );
    }

    #[test]
    fn authorization_secret_is_hidden() {
        assert_eq!(
            redact_authorization("Bearer idt:TKN-1234-5678:secret"),
            "Bearer idt:TKN-1234-5678:***"
        );
        assert_eq!(redact_authorization("Bearer eyJhbGciOi"), "Bearer ***");
    }

    #[test]
    fn ring_buffer_drops_oldest() {
        let mut log = RequestLog::new(2);
        let headers = HeaderMap::new();
        for _ in 0..3 {
            log.record_arrival("GET", "/a", None, &headers, b"");
        }
        let seqs: Vec<u64> = log
            .find(&RequestFilter::default())
            .iter()
            .map(|entry| entry.seq)
            .collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(log.stats().log_dropped, 1);
    }
}
