//! A producer that keeps publishing through broker faults: it reconnects after a lost
//! connection and publishes again until the broker confirms that it routed the event.

use std::time::Duration;

use erp_sync::broker::{BrokerLink, OutboundMessage, PublishOutcome, Publisher};
use erp_sync::config::{AmqpConfig, Config, Secret};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Longest time one event may take to be published, faults included.
const PUBLISH_LIMIT: Duration = Duration::from_secs(90);

/// A publisher of events to the private broker's events exchange.
pub struct Producer {
    config: AmqpConfig,
    link: Mutex<Option<(BrokerLink, Publisher)>>,
}

impl Producer {
    /// A producer for the default topology of erp-sync on the broker at `url`.
    pub fn new(url: &str) -> Producer {
        let mut config = Config::defaults().amqp;
        config.url = Secret::new(url);
        config.operation_timeout = Duration::from_secs(5);
        Producer {
            config,
            link: Mutex::new(None),
        }
    }

    /// The broker settings of the producer, which name the exchanges and queues.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// Declares the exchanges and queues, so events published before a worker starts
    /// are queued.
    pub async fn declare_topology(&self) {
        let link = BrokerLink::connect(&self.config)
            .await
            .expect("the private broker accepts connections");
        link.declare_topology()
            .await
            .expect("the topology is declared");
        link.close().await;
    }

    /// Publishes an event with the routing key of the contract.
    pub async fn publish(&self, envelope: &Value) {
        let object = envelope["object"]["objectType"].as_str().unwrap_or("Buyer");
        let event_type = envelope["details"]["eventType"]
            .as_str()
            .unwrap_or("updated");
        let routing_key = erp_sync::event::routing_key_for(object, event_type)
            .unwrap_or_else(|| format!("accounts.other.{event_type}"));
        self.publish_body(envelope.to_string().into_bytes(), &routing_key)
            .await;
    }

    /// Publishes any body until the broker confirms it routed the message. A message
    /// whose confirm was lost may be published twice, as with any producer.
    pub async fn publish_body(&self, body: Vec<u8>, routing_key: &str) {
        let message = OutboundMessage {
            routing_key: routing_key.to_owned(),
            body,
            ..OutboundMessage::default()
        };
        let deadline = Instant::now() + PUBLISH_LIMIT;
        let mut last_problem = String::new();
        while Instant::now() < deadline {
            let mut guard = self.link.lock().await;
            if guard.is_none() {
                match self.connect().await {
                    Ok(connected) => *guard = Some(connected),
                    Err(error) => {
                        last_problem = error;
                        drop(guard);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let (_, publisher) = guard.as_ref().expect("connected above");
            match publisher
                .publish_event(&self.config.exchange, &message)
                .await
            {
                Ok(PublishOutcome::Confirmed) => return,
                Ok(other) => last_problem = format!("{other:?}"),
                Err(error) => {
                    last_problem = error.to_string();
                    *guard = None;
                }
            }
            drop(guard);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not publish an event within {PUBLISH_LIMIT:?}: {last_problem}");
    }

    async fn connect(&self) -> Result<(BrokerLink, Publisher), String> {
        let link = BrokerLink::connect(&self.config)
            .await
            .map_err(|error| error.to_string())?;
        let publisher = link.publisher().await.map_err(|error| error.to_string())?;
        Ok((link, publisher))
    }
}
