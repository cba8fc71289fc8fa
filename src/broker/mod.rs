//! RabbitMQ: the only module that knows lapin.
//!
//! A [`BrokerLink`] is one AMQP connection. It declares the topology of the event
//! contract, opens a [`ConsumerSession`] on the work queue, and publishes dead letters
//! and events with publisher confirms. It never recovers by itself: when a channel or
//! the connection fails, its users drop it and open a new link, so a delivery of a dead
//! channel can never be acknowledged on a new one.

mod consume;
mod publish;
mod topology;

use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

pub use consume::{ConsumerSession, Inbound};
pub use publish::{DeadLetterPublisher, OutboundMessage, PublishOutcome, Publisher};
pub use topology::Topology;

use crate::config::{AmqpConfig, redact_url};

/// Header carrying a dead letter's original routing key.
pub const ROUTING_KEY_HEADER: &str = "x-erp-sync-routing-key";
/// Header carrying a dead letter's machine-readable reason.
pub const REASON_HEADER: &str = "x-erp-sync-reason";
/// Header carrying a dead letter's reason in words.
pub const DETAIL_HEADER: &str = "x-erp-sync-detail";

/// A broker failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or refused the connection.
    #[error("cannot connect to RabbitMQ at {address}: {message}")]
    Connect { address: String, message: String },
    /// An exchange or queue exists with other arguments than the contract's; no retry
    /// can fix it.
    #[error("{message}")]
    TopologyMismatch { message: String },
    /// A channel, the consumer or the connection failed after it was set up.
    #[error("{0}")]
    Channel(String),
    /// A broker operation took longer than `amqp.operation_timeout`.
    #[error("RabbitMQ did not complete {operation} within {}", humantime::format_duration(*timeout))]
    Timeout {
        operation: &'static str,
        timeout: Duration,
    },
}

impl BrokerError {
    /// Whether reconnecting can help.
    pub fn is_recoverable(&self) -> bool {
        !matches!(self, BrokerError::TopologyMismatch { .. })
    }
}

/// One connection to RabbitMQ.
pub struct BrokerLink {
    connection: Connection,
    config: AmqpConfig,
}

impl BrokerLink {
    /// Opens a connection with the configured heartbeat and name.
    pub async fn connect(config: &AmqpConfig) -> Result<BrokerLink, BrokerError> {
        let address = redact_url(config.url.expose());
        let connect_error = |message: String| BrokerError::Connect {
            address: address.clone(),
            message,
        };

        let mut uri: AMQPUri = config.url.expose().parse().map_err(connect_error)?;
        uri.query.heartbeat = Some(u16::try_from(config.heartbeat.as_secs()).unwrap_or(u16::MAX));
        uri.query.connection_timeout =
            Some(u64::try_from(config.operation_timeout.as_millis()).unwrap_or(u64::MAX));

        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.clone().into());
        let connecting = Connection::connect_uri(uri, properties);
        let connection = tokio::time::timeout(config.operation_timeout, connecting)
            .await
            .map_err(|_| {
                connect_error(format!(
                    "no answer within {}",
                    humantime::format_duration(config.operation_timeout)
                ))
            })?
            .map_err(|error| connect_error(error.to_string()))?;
        Ok(BrokerLink {
            connection,
            config: config.clone(),
        })
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Declares the exchanges, queues and bindings of the event contract.
    pub async fn declare_topology(&self) -> Result<(), BrokerError> {
        Topology::from_config(&self.config).declare(self).await
    }

    /// Deletes the configured queues and exchanges, with their messages.
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        Topology::from_config(&self.config).delete(self).await
    }

    /// Closes the connection; unacknowledged deliveries return to their queue.
    pub async fn close(&self) {
        let closing = self.connection.close(200, "erp-sync is stopping".into());
        let _ = tokio::time::timeout(self.config.operation_timeout, closing).await;
    }

    pub(crate) async fn open_channel(&self) -> Result<lapin::Channel, BrokerError> {
        self.bounded("channel.open", self.connection.create_channel())
            .await
    }

    /// Runs a broker operation within `amqp.operation_timeout`.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BrokerError> {
        bounded(self.config.operation_timeout, operation, future).await
    }

    pub(crate) fn config(&self) -> &AmqpConfig {
        &self.config
    }
}

pub(crate) async fn bounded<T>(
    timeout: Duration,
    operation: &'static str,
    future: impl Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(BrokerError::Channel(format!("{operation} failed: {error}"))),
        Err(_) => Err(BrokerError::Timeout { operation, timeout }),
    }
}
