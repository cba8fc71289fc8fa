//! Consuming the work queue in batches.

use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BrokerError, BrokerLink, bounded};

/// A delivery from the work queue.
pub struct Inbound {
    pub body: Vec<u8>,
    /// The exchange the message was published to; empty for the default exchange.
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub message_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub delivery_tag: u64,
    /// When the delivery was taken from the consumer.
    pub received_at: std::time::Instant,
    pub(crate) properties: BasicProperties,
    acker: lapin::Acker,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("delivery_tag", &self.delivery_tag)
            .field("routing_key", &self.routing_key)
            .field("size", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Inbound {
    fn from_delivery(delivery: lapin::message::Delivery) -> Inbound {
        let header = |name: &str| {
            delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get(name))
                .and_then(header_text)
        };
        Inbound {
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            delivery_tag: delivery.delivery_tag,
            received_at: std::time::Instant::now(),
            properties: delivery.properties,
            body: delivery.data,
            acker: delivery.acker,
        }
    }
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        AMQPValue::ByteArray(bytes) => Some(String::from_utf8_lossy(bytes.as_slice()).into_owned()),
        _ => None,
    }
}

/// A consumer on the work queue, on a channel of its own. It ends with its
/// connection ([`BrokerLink::close`]), which returns unacknowledged deliveries to the
/// queue.
pub struct ConsumerSession {
    /// Held so the channel stays open: lapin closes a channel when its last handle is
    /// dropped.
    _channel: lapin::Channel,
    consumer: lapin::Consumer,
    timeout: Duration,
}

impl BrokerLink {
    /// Starts consuming the work queue with the configured prefetch.
    pub async fn consume(&self, tag: &str) -> Result<ConsumerSession, BrokerError> {
        let channel = self.open_channel().await?;
        self.bounded(
            "basic.qos",
            channel.basic_qos(self.config().prefetch, BasicQosOptions::default()),
        )
        .await?;
        let consumer = self
            .bounded(
                "basic.consume",
                channel.basic_consume(
                    self.config().queue.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        Ok(ConsumerSession {
            _channel: channel,
            consumer,
            timeout: self.config().operation_timeout,
        })
    }
}

impl ConsumerSession {
    /// Waits for the next delivery, then gathers more for at most `linger` or until
    /// `max` are there. Returns an empty batch once `shutdown` is cancelled, and an
    /// error when the broker cancelled the consumer or the channel failed; a partial
    /// batch is then dropped, because its deliveries return to the queue anyway.
    pub async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Inbound>, BrokerError> {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Vec::new()),
            next = self.consumer.next() => next,
        };
        let mut batch = vec![self.accept(first)?];

        let deadline = Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Err(_) => break,
                Ok(next) => batch.push(self.accept(next)?),
            }
        }
        Ok(batch)
    }

    fn accept(
        &self,
        next: Option<lapin::Result<lapin::message::Delivery>>,
    ) -> Result<Inbound, BrokerError> {
        match next {
            Some(Ok(delivery)) => Ok(Inbound::from_delivery(delivery)),
            Some(Err(error)) => Err(BrokerError::Channel(format!(
                "the consumer channel failed: {error}"
            ))),
            None => Err(BrokerError::Channel(
                "the broker cancelled the consumer (was the queue deleted?)".to_owned(),
            )),
        }
    }

    /// Acknowledges every delivery of the batch with one `basic.ack` (multiple).
    ///
    /// When the channel closed while the batch was being stored, the error carries the
    /// broker's reason, such as a 406 for an acknowledgement that came after
    /// `consumer_timeout`.
    pub async fn ack(&mut self, batch: &[Inbound]) -> Result<(), BrokerError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let acked = bounded(
            self.timeout,
            "basic.ack",
            last.acker.ack(BasicAckOptions { multiple: true }),
        )
        .await?;
        if acked {
            return Ok(());
        }
        let reason = match self.channel_error() {
            Some(error) => format!(" ({error})"),
            None => String::new(),
        };
        Err(BrokerError::Channel(format!(
            "the channel closed before the acknowledgement{reason}; the broker will deliver the batch again"
        )))
    }

    /// Returns the error that ended the consumer's channel, when the consumer has
    /// received it. Deliveries still buffered before it are discarded without waiting:
    /// their channel is gone, so the broker delivers them again.
    fn channel_error(&mut self) -> Option<String> {
        while let Some(next) = self.consumer.next().now_or_never() {
            match next {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Some(error.to_string()),
                None => return None,
            }
        }
        None
    }
}
