//! Process exit codes, so that a supervisor or a script can tell failures apart.

use crate::broker::BrokerError;
use crate::config::ConfigError;
use crate::storage::SchemaError;

/// The exit codes of `erp-sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what it was asked.
    Success = 0,
    /// A runtime failure: a service stayed unavailable, or an unexpected error.
    Failure = 1,
    /// The command line is invalid (clap prints the usage).
    Usage = 2,
    /// The configuration is invalid; the message names the key and the fix.
    Config = 3,
    /// The database is missing or not migrated; run `erp-sync migrate`.
    Schema = 4,
    /// An exchange or queue exists with other arguments than erp-sync declares.
    Topology = 5,
    /// The demo or a publish did not complete: events unsettled or unroutable.
    Incomplete = 6,
}

impl Exit {
    /// Chooses the exit code for an error that ended a command.
    pub fn for_error(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if cause.is::<ConfigError>() {
                return Exit::Config;
            }
            if cause.is::<SchemaError>() {
                return Exit::Schema;
            }
            if let Some(BrokerError::TopologyMismatch { .. }) = cause.downcast_ref::<BrokerError>()
            {
                return Exit::Topology;
            }
            if cause.is::<Incomplete>() {
                return Exit::Incomplete;
            }
        }
        Exit::Failure
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// A command that ran but could not finish its work, such as a demo with unsettled
/// events.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Incomplete(pub String);
