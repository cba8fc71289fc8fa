//! Publishing with publisher confirms: dead letters, and events for `erp-sync publish`
//! and the demo.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};

use super::consume::Inbound;
use super::{BrokerError, BrokerLink, DETAIL_HEADER, REASON_HEADER, ROUTING_KEY_HEADER, bounded};

/// Longest reason text put in a dead letter's header, in bytes.
const MAX_DETAIL_HEADER: usize = 1024;

/// AMQP delivery mode of a message stored on disk.
const PERSISTENT: u8 = 2;

/// What the broker did with a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Routed to at least one queue and confirmed.
    Confirmed,
    /// No queue is bound for the routing key; the broker returned the message.
    Unroutable { reply: String },
    /// The broker refused to take responsibility for the message.
    Nacked,
}

/// A message to publish to an exchange.
#[derive(Debug, Clone, Default)]
pub struct OutboundMessage {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// A channel in confirm mode.
pub struct Publisher {
    channel: lapin::Channel,
    timeout: Duration,
}

/// Publishes the worker's dead letters.
pub struct DeadLetterPublisher {
    publisher: Publisher,
    exchange: String,
}

impl BrokerLink {
    /// Opens a channel in confirm mode for publishing.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let channel = self.open_channel().await?;
        self.bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Publisher {
            channel,
            timeout: self.config().operation_timeout,
        })
    }

    /// Opens the publisher of dead letters.
    pub async fn dead_letter_publisher(&self) -> Result<DeadLetterPublisher, BrokerError> {
        Ok(DeadLetterPublisher {
            publisher: self.publisher().await?,
            exchange: self.config().dead_letter_exchange.clone(),
        })
    }
}

impl Publisher {
    /// Publishes an event the way producers do: JSON, persistent, `message_id` set,
    /// mandatory so that an unroutable message is reported.
    pub async fn publish_event(
        &self,
        exchange: &str,
        message: &OutboundMessage,
    ) -> Result<PublishOutcome, BrokerError> {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &message.traceparent {
            headers.insert("traceparent".into(), text_value(traceparent));
        }
        if let Some(tracestate) = &message.tracestate {
            headers.insert("tracestate".into(), text_value(tracestate));
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        if let Some(id) = &message.message_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        self.publish(exchange, &message.routing_key, &message.body, properties)
            .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublishOutcome, BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = bounded(
            self.timeout,
            "basic.publish",
            self.channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            ),
        )
        .await?;
        let confirmation = bounded(self.timeout, "the publisher confirm", confirm).await?;
        Ok(match confirmation {
            Confirmation::Ack(None) => PublishOutcome::Confirmed,
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                PublishOutcome::Unroutable {
                    reply: returned.reply_text.to_string(),
                }
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => PublishOutcome::Nacked,
        })
    }
}

impl DeadLetterPublisher {
    /// Publishes a copy of `inbound` to the dead-letter exchange with its original
    /// body, properties and routing key, plus the reason headers, and waits for the
    /// broker's confirm.
    pub async fn publish(
        &self,
        inbound: &Inbound,
        reason: &str,
        detail: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = inbound.properties.headers().clone().unwrap_or_default();
        headers.insert(ROUTING_KEY_HEADER.into(), text_value(&inbound.routing_key));
        headers.insert(REASON_HEADER.into(), text_value(reason));
        headers.insert(
            DETAIL_HEADER.into(),
            text_value(truncate(detail, MAX_DETAIL_HEADER)),
        );
        let properties = inbound
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(PERSISTENT);

        let outcome = self
            .publisher
            .publish(
                &self.exchange,
                &inbound.routing_key,
                &inbound.body,
                properties,
            )
            .await?;
        match outcome {
            PublishOutcome::Confirmed => Ok(()),
            PublishOutcome::Unroutable { reply } => Err(BrokerError::Channel(format!(
                "the dead letter could not be routed ({reply}); is the queue bound to {:?}?",
                self.exchange
            ))),
            PublishOutcome::Nacked => Err(BrokerError::Channel(
                "the broker refused the dead letter".to_owned(),
            )),
        }
    }
}

fn text_value(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
