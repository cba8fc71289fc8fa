//! A simulator of the Marketplace Platform's Accounts API, for offline development, the
//! demo and tests.
//!
//! It serves the endpoints erp-sync calls (buyers, sellers, ERP links, licensees and
//! accounts under `/public/v1/accounts`) from an in-memory data set, applies the
//! platform's documented business rules, and makes every undocumented choice a
//! setting. Fault rules, a rate limit and a latency distribution make it misbehave on
//! purpose; the control API under `/_sim/` (or [`SimulatorControl`] in process) reads
//! the request log and changes faults, settings and object state.
//!
//! Components:
//! - [`config`]: the `[simulator]` table and the run-time [`Behaviour`];
//! - [`model`], [`dataset`], [`generator`]: the objects, their indexes and lookups, and
//!   the seeded data-set generator;
//! - [`rql`] and `query`: the RQL subset, paging, ordering and `select`;
//! - `rules`: the business rules of the actions;
//! - [`faults`], [`log`], `pipeline`: fault injection, the request log and the
//!   per-request middleware;
//! - `routes`, [`control`], `server`: the API handlers, the control API, and the
//!   accept loop.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use erp_sync::simulator::{self, SimulatorConfig};
//!
//! let config = SimulatorConfig { listen: "127.0.0.1:0".parse()?, ..SimulatorConfig::default() };
//! let simulator = simulator::start(config).await?;
//! println!("Accounts API at {}", simulator.api_url());
//! simulator.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod control;
pub mod dataset;
pub mod faults;
pub mod generator;
pub mod log;
pub mod model;
mod pipeline;
mod problem;
mod query;
mod render;
mod routes;
pub mod rql;
mod rules;
mod server;
mod state;
mod words;

pub use config::{
    Behaviour, ConfigError, CurrencyShape, DEFAULT_SEED, DEFAULT_TOKEN, Latency, RateLimit,
    RepeatedAction, SimulatorConfig, SynchronizeResponse, UnauthorizedBody,
};
pub use control::{DataGuard, DataSummary, ResetOptions, SimulatorControl, WaitTimeout};
pub use dataset::{
    BuyerCase, Collection, DataSet, DataSetError, DataSetFile, Identified, LinkCase, ObjectKind,
    PatchError, SellerCase,
};
pub use faults::{ActiveFault, Fault, FaultRule, RetryAfter};
pub use log::{AppliedFault, LoggedRequest, RequestFilter, Stats};
pub use pipeline::MAX_REQUEST_BODY;
pub use problem::{PROBLEM_CONTENT_TYPE, VALIDATION_TITLE};
pub use routes::API_PREFIX;
pub use server::{RunningSimulator, SHUTDOWN_GRACE, serve, start};
