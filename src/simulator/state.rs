//! State shared by every connection: the data set, the settings, the fault gate and the
//! request log, each behind its own short-held lock.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{HeaderMap, header};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::{Behaviour, ConfigError, SimulatorConfig};
use super::dataset::DataSet;
use super::faults::Gate;
use super::generator;
use super::log::RequestLog;
use super::model::{Actor, now_millis};
use super::rules;

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub actor: Actor,
    /// An operations token; client tokens cannot run operations-only actions.
    pub operations: bool,
}

pub(crate) struct App {
    /// Configuration given at start-up; the run-time behaviour lives in `behaviour`.
    pub config: SimulatorConfig,
    pub data: Mutex<DataSet>,
    /// Bumped by every reset, so delayed work planned on older data is dropped.
    pub data_generation: AtomicU64,
    behaviour: Mutex<Arc<Behaviour>>,
    pub gate: Mutex<Gate>,
    pub log: Mutex<RequestLog>,
    /// Bumped on every request log change; waiters watch it instead of polling.
    pub log_version: watch::Sender<u64>,
    /// Cancelled at shutdown: stops connections and delayed work.
    pub shutdown: CancellationToken,
    operations_tokens: HashSet<String>,
    client_tokens: HashSet<String>,
}

/// Actor named in the audit trail of changes the simulator makes by itself.
fn platform_actor() -> Actor {
    Actor {
        id: "TKN-0000-0001".into(),
        name: "Marketplace Platform".into(),
    }
}

impl App {
    pub(crate) fn new(config: SimulatorConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let data = load_data(&config)?;
        let mut gate = Gate::new(config.seed);
        for rule in &config.faults {
            gate.add(rule.clone())?;
        }
        Ok(Self {
            data: Mutex::new(data),
            data_generation: AtomicU64::new(0),
            behaviour: Mutex::new(Arc::new(config.behaviour())),
            gate: Mutex::new(gate),
            log: Mutex::new(RequestLog::new(config.request_log_capacity)),
            log_version: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
            operations_tokens: config.tokens.iter().cloned().collect(),
            client_tokens: config.client_tokens.iter().cloned().collect(),
            config,
        })
    }

    pub(crate) fn behaviour(&self) -> Arc<Behaviour> {
        self.behaviour.lock().clone()
    }

    pub(crate) fn set_behaviour(&self, behaviour: Behaviour) -> Result<(), ConfigError> {
        behaviour.validate()?;
        *self.behaviour.lock() = Arc::new(behaviour);
        Ok(())
    }

    /// Marks a change in the request log for waiters.
    pub(crate) fn log_changed(&self) {
        self.log_version.send_modify(|version| *version += 1);
    }

    /// Returns the caller of a request with a valid bearer token.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Option<Caller> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        let operations = if self.operations_tokens.contains(token) {
            true
        } else if self.client_tokens.contains(token) {
            false
        } else {
            return None;
        };
        Some(Caller {
            actor: token_actor(token, operations),
            operations,
        })
    }

    /// Replaces the data set with a new one built from the start-up configuration.
    pub(crate) fn reset_data(&self, data: DataSet) {
        self.data_generation.fetch_add(1, Ordering::SeqCst);
        *self.data.lock() = data;
    }

    /// Synchronizes buyers after `delay` on a background task, unless the data set has
    /// been reset or the simulator stopped in the meantime.
    pub(crate) fn synchronize_later(
        self: &Arc<Self>,
        buyer_ids: Vec<String>,
        delay: Duration,
        actor: Option<Actor>,
    ) {
        if buyer_ids.is_empty() {
            return;
        }
        let app = Arc::clone(self);
        let generation = self.data_generation.load(Ordering::SeqCst);
        let actor = actor.unwrap_or_else(platform_actor);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = app.shutdown.cancelled() => return,
            }
            let mut data = app.data.lock();
            if app.data_generation.load(Ordering::SeqCst) != generation {
                return;
            }
            let now = now_millis();
            for buyer_id in &buyer_ids {
                rules::synchronize_buyer(&mut data, buyer_id, &actor, now);
            }
            tracing::debug!(
                buyers = buyer_ids.len(),
                "simulator ran a delayed buyer synchronization"
            );
        });
    }
}

/// Builds the audit actor of a token: the token id of `idt:TKN-…:<secret>` tokens.
fn token_actor(token: &str, operations: bool) -> Actor {
    let id = token
        .strip_prefix("idt:")
        .and_then(|rest| rest.split(':').next())
        .filter(|id| id.starts_with("TKN-"))
        .unwrap_or("TKN-0000-0000");
    let name = if operations {
        "Simulator operations token"
    } else {
        "Simulator client token"
    };
    Actor {
        id: id.to_owned(),
        name: name.to_owned(),
    }
}

/// Loads the fixture file, or generates the data set from the seed.
pub(crate) fn load_data(config: &SimulatorConfig) -> anyhow::Result<DataSet> {
    match &config.fixture {
        Some(path) => DataSet::load(path)
            .with_context(|| format!("failed to load the simulator fixture `{}`", path.display())),
        None => Ok(generator::generate(
            config.seed,
            config.buyers,
            config.sellers,
        )),
    }
}
