//! The control API: the same operations from Rust ([`SimulatorControl`]) and over HTTP
//! under `/_sim/`. The HTTP routes need no token, so listen on loopback only.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{Behaviour, ConfigError};
use super::dataset::{DataSet, PatchError, merge_patch};
use super::faults::{ActiveFault, FaultRule};
use super::generator;
use super::log::{LoggedRequest, RequestFilter, Stats};
use super::problem::Problem;
use super::state::{App, load_data};

/// Control of a running simulator from the same process: request log, statistics,
/// fault rules, run-time settings and object state. Cheap to clone.
#[derive(Clone)]
pub struct SimulatorControl {
    app: Arc<App>,
}

/// Read access to the data set; holds the data lock, so drop it before awaiting or
/// calling the API.
pub struct DataGuard<'a>(parking_lot::MutexGuard<'a, DataSet>);

impl std::ops::Deref for DataGuard<'_> {
    type Target = DataSet;

    fn deref(&self) -> &DataSet {
        &self.0
    }
}

/// A wait for log entries that did not complete in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {wanted} matching requests; {found} arrived")]
pub struct WaitTimeout {
    pub timeout: Duration,
    pub wanted: usize,
    pub found: usize,
    /// The matching entries seen by then.
    pub entries: Vec<LoggedRequest>,
}

/// Options of a data-set reset; absent fields keep the start-up configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResetOptions {
    pub seed: Option<u64>,
    pub buyers: Option<usize>,
    pub sellers: Option<usize>,
}

/// Object counts of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataSummary {
    pub accounts: usize,
    pub sellers: usize,
    pub buyers: usize,
    pub erp_links: usize,
    pub licensees: usize,
}

impl SimulatorControl {
    pub(crate) fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    pub(crate) fn app(&self) -> &App {
        &self.app
    }

    /// Returns every entry of the request log, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.find_requests(&RequestFilter::default())
    }

    /// Returns the log entries that match the filter, oldest first.
    pub fn find_requests(&self, filter: &RequestFilter) -> Vec<LoggedRequest> {
        self.app.log.lock().find(filter)
    }

    /// Waits until at least `count` entries match the filter and returns them. Set
    /// `filter.finished` to wait for responses rather than arrivals.
    pub async fn wait_for_requests(
        &self,
        filter: &RequestFilter,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<LoggedRequest>, WaitTimeout> {
        let mut changes = self.app.log_version.subscribe();
        let wait = async {
            loop {
                let entries = self.find_requests(filter);
                if entries.len() >= count {
                    return entries;
                }
                if changes.changed().await.is_err() {
                    // The sender lives as long as the App, which `self` keeps alive.
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(entries) => Ok(entries),
            Err(_) => {
                let entries = self.find_requests(filter);
                Err(WaitTimeout {
                    timeout,
                    wanted: count,
                    found: entries.len(),
                    entries,
                })
            }
        }
    }

    /// Empties the request log; sequence numbers keep counting.
    pub fn clear_requests(&self) {
        self.app.log.lock().clear();
        self.app.log_changed();
    }

    /// Returns the request counters.
    pub fn stats(&self) -> Stats {
        self.app.log.lock().stats()
    }

    /// Sets every counter to zero.
    pub fn reset_stats(&self) {
        self.app.log.lock().reset_stats();
    }

    /// Adds a fault rule after the existing ones and returns its id.
    pub fn add_fault(&self, rule: FaultRule) -> Result<u64, ConfigError> {
        self.app.gate.lock().add(rule)
    }

    /// Removes one fault rule; returns whether it existed.
    pub fn remove_fault(&self, id: u64) -> bool {
        self.app.gate.lock().remove(id)
    }

    /// Returns the fault rules in force, in the order they are tried.
    pub fn faults(&self) -> Vec<ActiveFault> {
        self.app.gate.lock().list()
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.app.gate.lock().clear();
    }

    /// Returns the run-time settings.
    pub fn behaviour(&self) -> Behaviour {
        (*self.app.behaviour()).clone()
    }

    /// Replaces the run-time settings after validating them.
    pub fn set_behaviour(&self, behaviour: Behaviour) -> Result<(), ConfigError> {
        self.app.set_behaviour(behaviour)
    }

    /// Changes some run-time settings, for example
    /// `control.update_behaviour(|b| b.repeated_action = RepeatedAction::Noop)`.
    pub fn update_behaviour(&self, change: impl FnOnce(&mut Behaviour)) -> Result<(), ConfigError> {
        let mut behaviour = self.behaviour();
        change(&mut behaviour);
        self.set_behaviour(behaviour)
    }

    /// Returns read access to the data set.
    pub fn data(&self) -> DataGuard<'_> {
        DataGuard(self.app.data.lock())
    }

    /// Returns a copy of the data set.
    pub fn snapshot(&self) -> DataSet {
        self.app.data.lock().clone()
    }

    /// Returns an object's stored form (see [`DataSet::object_json`]).
    pub fn object(&self, id: &str) -> Option<Value> {
        self.app.data.lock().object_json(id)
    }

    /// Merges fields into an object's stored form, for example
    /// `json!({"status": "Blocked"})` on an ERP link or `json!({"externalIds": null})`
    /// on a buyer. Returns the new stored form.
    pub fn patch_object(&self, id: &str, patch: &Value) -> Result<Value, PatchError> {
        self.app.data.lock().patch_object(id, patch)
    }

    /// Rebuilds the data set from the start-up configuration (fixture or seed). Fault
    /// rules, settings and the request log are kept; pending delayed synchronizations
    /// are dropped.
    pub fn reset(&self) -> anyhow::Result<DataSummary> {
        self.reset_with(&ResetOptions::default())
    }

    /// Rebuilds the data set, generating it with the given seed and sizes when any is
    /// set (the fixture is then ignored).
    pub fn reset_with(&self, options: &ResetOptions) -> anyhow::Result<DataSummary> {
        let config = &self.app.config;
        let data = if *options == ResetOptions::default() {
            load_data(config)?
        } else {
            let mut sized = config.clone();
            sized.fixture = None;
            sized.seed = options.seed.unwrap_or(config.seed);
            sized.buyers = options.buyers.unwrap_or(config.buyers);
            sized.sellers = options.sellers.unwrap_or(config.sellers);
            sized.validate()?;
            generator::generate(sized.seed, sized.buyers, sized.sellers)
        };
        let summary = summarize(&data);
        self.app.reset_data(data);
        Ok(summary)
    }

    /// Serializes the data set in the fixture format.
    pub fn export_json(&self) -> String {
        self.app.data.lock().to_json()
    }

    /// Returns the object counts.
    pub fn summary(&self) -> DataSummary {
        summarize(&self.app.data.lock())
    }
}

fn summarize(data: &DataSet) -> DataSummary {
    DataSummary {
        accounts: data.accounts().len(),
        sellers: data.sellers().len(),
        buyers: data.buyers().len(),
        erp_links: data.erp_links().len(),
        licensees: data.licensees().len(),
    }
}

/// Builds the `/_sim/` routes.
pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/_sim/health", get(health))
        .route("/_sim/requests", get(list_requests).delete(clear_requests))
        .route("/_sim/stats", get(stats).delete(reset_stats))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/_sim/faults/{id}", delete(remove_fault))
        .route(
            "/_sim/config",
            get(get_config).put(update_config).patch(update_config),
        )
        .route(
            "/_sim/objects/{id}",
            get(get_object).put(patch_object).patch(patch_object),
        )
        .route("/_sim/reset", post(reset))
        .route("/_sim/export", get(export))
}

fn control(app: &Arc<App>) -> SimulatorControl {
    SimulatorControl::new(Arc::clone(app))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    serde_json::from_slice(body)
        .map_err(|error| Problem::invalid("body", format!("The request body is invalid: {error}.")))
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "status": "ok", "data": control(&app).summary() }))
}

async fn list_requests(
    State(app): State<Arc<App>>,
    uri: Uri,
) -> Result<Json<Vec<LoggedRequest>>, Problem> {
    let Query(filter) = Query::<RequestFilter>::try_from_uri(&uri)
        .map_err(|rejection| Problem::invalid("query", rejection.body_text()))?;
    Ok(Json(control(&app).find_requests(&filter)))
}

async fn clear_requests(State(app): State<Arc<App>>) -> StatusCode {
    control(&app).clear_requests();
    StatusCode::NO_CONTENT
}

async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    Json(control(&app).stats())
}

async fn reset_stats(State(app): State<Arc<App>>) -> StatusCode {
    control(&app).reset_stats();
    StatusCode::NO_CONTENT
}

async fn list_faults(State(app): State<Arc<App>>) -> Json<Vec<ActiveFault>> {
    Json(control(&app).faults())
}

async fn add_fault(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, Problem> {
    let rule: FaultRule = parse_json(&body)?;
    let id = control(&app)
        .add_fault(rule.clone())
        .map_err(|error| Problem::invalid(error.key, error.message))?;
    Ok((
        StatusCode::CREATED,
        Json(ActiveFault {
            id,
            applied: 0,
            rule,
        }),
    )
        .into_response())
}

async fn clear_faults(State(app): State<Arc<App>>) -> StatusCode {
    control(&app).clear_faults();
    StatusCode::NO_CONTENT
}

async fn remove_fault(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
) -> Result<StatusCode, Problem> {
    if control(&app).remove_fault(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("No fault rule has the id {id}."),
        ))
    }
}

async fn get_config(State(app): State<Arc<App>>) -> Json<Behaviour> {
    Json(control(&app).behaviour())
}

/// Merges the body into the run-time settings (JSON merge patch: `null` resets a key
/// to its default) and returns the new settings.
async fn update_config(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<Json<Behaviour>, Problem> {
    let patch: Value = parse_json(&body)?;
    let control = control(&app);
    let mut current = serde_json::to_value(control.behaviour()).expect("settings serialize");
    merge_patch(&mut current, &patch);
    let behaviour: Behaviour = serde_json::from_value(current)
        .map_err(|error| Problem::invalid("body", format!("The settings are invalid: {error}.")))?;
    control
        .set_behaviour(behaviour.clone())
        .map_err(|error| Problem::invalid(error.key, error.message))?;
    tracing::debug!(?behaviour, "simulator settings changed");
    Ok(Json(behaviour))
}

async fn get_object(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    control(&app).object(&id).map(Json).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("No object has the id `{id}`."),
        )
    })
}

async fn patch_object(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let patch: Value = parse_json(&body)?;
    match control(&app).patch_object(&id, &patch) {
        Ok(value) => Ok(Json(value)),
        Err(PatchError::NotFound) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("No object has the id `{id}`."),
        )),
        Err(PatchError::Invalid(message)) => Err(Problem::invalid("body", message)),
    }
}

async fn reset(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<DataSummary>, Problem> {
    let options: ResetOptions = parse_json(&body)?;
    control(&app)
        .reset_with(&options)
        .map(Json)
        .map_err(|error| Problem::invalid("body", format!("{error:#}")))
}

async fn export(State(app): State<Arc<App>>) -> Response {
    let json = control(&app).export_json();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}
