//! The exchanges, queues and bindings of the event contract, declared idempotently.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{ErrorKind, ExchangeKind};

use super::{BrokerError, BrokerLink};
use crate::config::AmqpConfig;

/// AMQP reply code of a declaration whose arguments differ from the existing object.
const PRECONDITION_FAILED: u16 = 406;

/// Names of the objects the worker declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub binding_key: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Topology {
    pub fn from_config(config: &AmqpConfig) -> Topology {
        Topology {
            exchange: config.exchange.clone(),
            queue: config.queue.clone(),
            binding_key: config.binding_key.clone(),
            dead_letter_exchange: config.dead_letter_exchange.clone(),
            dead_letter_queue: config.dead_letter_queue.clone(),
        }
    }

    /// Declares everything: the topic exchange, the dead-letter exchange and queue,
    /// and the quorum work queue whose broker-level dead-letter exchange is ours, so a
    /// message the broker drops (a delivery limit, a reject) is kept, not lost.
    ///
    /// Each declaration runs on a fresh channel, because a refused declaration closes
    /// its channel.
    pub async fn declare(&self, link: &BrokerLink) -> Result<(), BrokerError> {
        self.declare_exchange(link, &self.exchange, ExchangeKind::Topic)
            .await?;
        self.declare_exchange(link, &self.dead_letter_exchange, ExchangeKind::Fanout)
            .await?;

        let dead_letter_arguments = quorum_arguments();
        self.declare_queue(link, &self.dead_letter_queue, dead_letter_arguments)
            .await?;
        self.bind(
            link,
            &self.dead_letter_queue,
            &self.dead_letter_exchange,
            "",
        )
        .await?;

        let mut work_arguments = quorum_arguments();
        work_arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        self.declare_queue(link, &self.queue, work_arguments)
            .await?;
        self.bind(link, &self.queue, &self.exchange, &self.binding_key)
            .await?;
        Ok(())
    }

    /// Deletes the queues and exchanges, with any messages in them. Objects that do not
    /// exist are skipped.
    pub async fn delete(&self, link: &BrokerLink) -> Result<(), BrokerError> {
        for queue in [&self.queue, &self.dead_letter_queue] {
            let channel = link.open_channel().await?;
            let deleted =
                channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default());
            // A missing queue closes the channel with 404, which is what "deleted" means.
            let _ = link.bounded("queue.delete", deleted).await;
        }
        for exchange in [&self.exchange, &self.dead_letter_exchange] {
            let channel = link.open_channel().await?;
            let deleted =
                channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default());
            let _ = link.bounded("exchange.delete", deleted).await;
        }
        Ok(())
    }

    async fn declare_exchange(
        &self,
        link: &BrokerLink,
        name: &str,
        kind: ExchangeKind,
    ) -> Result<(), BrokerError> {
        let channel = link.open_channel().await?;
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let declared = channel.exchange_declare(name.into(), kind, options, FieldTable::default());
        let result = tokio::time::timeout(link.config().operation_timeout, declared).await;
        finish_declaration(&channel, result, "exchange", name, link).await
    }

    async fn declare_queue(
        &self,
        link: &BrokerLink,
        name: &str,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        let channel = link.open_channel().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel.queue_declare(name.into(), options, arguments);
        let result = tokio::time::timeout(link.config().operation_timeout, declared)
            .await
            .map(|result| result.map(drop));
        finish_declaration(&channel, result, "queue", name, link).await
    }

    async fn bind(
        &self,
        link: &BrokerLink,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        let channel = link.open_channel().await?;
        let bound = channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        let result = tokio::time::timeout(link.config().operation_timeout, bound).await;
        finish_declaration(&channel, result, "binding of queue", queue, link).await
    }
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments
}

/// Turns the result of one declaration into a clear error and closes its channel.
async fn finish_declaration(
    channel: &lapin::Channel,
    result: Result<lapin::Result<()>, tokio::time::error::Elapsed>,
    what: &str,
    name: &str,
    link: &BrokerLink,
) -> Result<(), BrokerError> {
    let outcome = match result {
        Err(_) => Err(BrokerError::Timeout {
            operation: "a declaration",
            timeout: link.config().operation_timeout,
        }),
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(declaration_error(&error, what, name)),
    };
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    outcome
}

fn declaration_error(error: &lapin::Error, what: &str, name: &str) -> BrokerError {
    if let ErrorKind::ProtocolError(amqp) = error.kind()
        && amqp.get_id() == PRECONDITION_FAILED
    {
        return BrokerError::TopologyMismatch {
            message: format!(
                "the {what} {name:?} already exists with other arguments than erp-sync declares ({}); \
                 delete it so erp-sync can declare it, or configure another name",
                amqp.get_message()
            ),
        };
    }
    BrokerError::Channel(format!("declaring the {what} {name:?} failed: {error}"))
}
