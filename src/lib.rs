//! erp-sync keeps the SoftwareOne Marketplace Platform in step with the ERP.
//!
//! The data flow, and the module that owns each step:
//!
//! ```text
//! RabbitMQ work queue --[broker]--> ingest --[event, plan]--> PostgreSQL outbox [storage]
//!                                     |                          |
//!                                     +--> dead letters          +--> dispatch --[platform]--> Accounts API
//! ```
//!
//! - [`event`] validates a raw body into an [`event::Event`] with typed [`ids`], or a
//!   rejection with the contract's dead-letter reason; [`plan`] turns an event into
//!   commands, one per intended effect on the platform.
//! - [`ingest`] consumes batches from the work queue, stores events, commands and
//!   audit rows in one transaction, and acknowledges the batch after the commit.
//! - [`dispatch`] claims due commands, calls the platform through [`platform`], and
//!   records each outcome in a second short transaction; [`retry`] schedules retries.
//! - [`storage`] holds all SQL, [`broker`] all of lapin, [`platform`] all of reqwest.
//! - [`telemetry`] sets up logs, traces and metrics: one trace per delivery, from the
//!   queue to the platform, exported over OTLP when a collector is configured.
//!   [`health`] keeps the readiness flags and serves `/healthz`, `/readyz` and
//!   `/metrics`.
//! - [`simulator`] serves the Accounts API offline for development, the demo and tests.

pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod event;
pub mod exit;
pub mod health;
pub mod ids;
pub mod ingest;
pub mod operator;
pub mod plan;
pub mod platform;
pub mod publish;
pub mod retry;
pub mod shutdown;
pub mod simulator;
pub mod storage;
pub mod telemetry;
pub mod worker;
