//! `erp-sync publish`: sends a file of events, one JSON envelope per line, to the
//! exchange the way a producer would.

use futures::StreamExt as _;
use serde_json::Value;

use crate::broker::{BrokerError, OutboundMessage, PublishOutcome, Publisher};
use crate::event::routing_key_for;

/// Most messages awaiting their publisher confirm at once.
const CONFIRM_WINDOW: usize = 256;

/// One line of an events file, ready to publish or refused.
#[derive(Debug, Clone)]
pub struct PreparedLine {
    /// Line number in the file, starting at 1.
    pub line: usize,
    pub message: Option<OutboundMessage>,
    /// Why the line could not be published.
    pub problem: Option<String>,
}

/// What happened to the lines of a file.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    pub published: usize,
    /// Lines the broker could not route, with its reply.
    pub unroutable: Vec<(usize, String)>,
    /// Lines that were not sent, with the reason.
    pub skipped: Vec<(usize, String)>,
}

impl PublishReport {
    pub fn is_complete(&self) -> bool {
        self.unroutable.is_empty() && self.skipped.is_empty()
    }
}

/// Splits a file into messages. Each line's routing key is derived from its body
/// (`accounts.<object>.<eventType>`); a line that is not a valid envelope gets
/// `fallback_key`, or is skipped without one. Blank lines are ignored.
pub fn prepare_lines(contents: &[u8], fallback_key: Option<&str>) -> Vec<PreparedLine> {
    contents
        .split(|byte| *byte == b'\n')
        .enumerate()
        .filter_map(|(index, line)| {
            let line_number = index + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            Some(prepare_line(line_number, line, fallback_key))
        })
        .collect()
}

fn prepare_line(line: usize, body: &[u8], fallback_key: Option<&str>) -> PreparedLine {
    let envelope: Option<Value> = serde_json::from_slice(body).ok();
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let derived = envelope.as_ref().and_then(|envelope| {
        let object_type = text(envelope.pointer("/object/objectType"))?;
        let event_type = text(envelope.pointer("/details/eventType"))?;
        routing_key_for(&object_type, &event_type)
    });
    let message_id = envelope
        .as_ref()
        .and_then(|envelope| text(envelope.get("id")));

    let routing_key = match (derived, fallback_key) {
        (Some(key), _) => key,
        (None, Some(fallback)) => fallback.to_owned(),
        (None, None) => {
            return PreparedLine {
                line,
                message: None,
                problem: Some(
                    "not a valid envelope, so no routing key can be derived; pass --routing-key"
                        .to_owned(),
                ),
            };
        }
    };
    PreparedLine {
        line,
        message: Some(OutboundMessage {
            routing_key,
            body: body.to_vec(),
            message_id,
            ..OutboundMessage::default()
        }),
        problem: None,
    }
}

/// Publishes prepared lines with publisher confirms, keeping up to a window of
/// confirms outstanding.
pub async fn publish_lines(
    publisher: &Publisher,
    exchange: &str,
    lines: Vec<PreparedLine>,
) -> Result<PublishReport, BrokerError> {
    let mut report = PublishReport::default();
    let mut sendable = Vec::new();
    for line in lines {
        match line.message {
            Some(message) => sendable.push((line.line, message)),
            None => report
                .skipped
                .push((line.line, line.problem.unwrap_or_default())),
        }
    }

    let mut outcomes =
        futures::stream::iter(sendable.iter())
            .map(|(line, message)| async move {
                (*line, publisher.publish_event(exchange, message).await)
            })
            .buffered(CONFIRM_WINDOW);
    while let Some((line, outcome)) = outcomes.next().await {
        match outcome? {
            PublishOutcome::Confirmed => report.published += 1,
            PublishOutcome::Unroutable { reply } => report.unroutable.push((line, reply)),
            PublishOutcome::Nacked => report
                .unroutable
                .push((line, "refused by the broker".to_owned())),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_comes_from_the_body() {
        let file = br#"{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","object":{"id":"BUY-1234-5678","objectType":"Buyer"},"details":{"eventType":"updated","enqueueTime":"2026-12-04T10:15:00Z"}}"#;
        let lines = prepare_lines(file, None);
        let message = lines[0].message.as_ref().unwrap();
        assert_eq!(message.routing_key, "accounts.buyer.updated");
        assert_eq!(
            message.message_id.as_deref(),
            Some("0f8fad5b-d9cb-469f-a165-70867728950e")
        );
    }

    #[test]
    fn invalid_line_needs_a_fallback_key() {
        let lines = prepare_lines(b"not json\n\n", None);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].message.is_none());
        assert!(lines[0].problem.as_ref().unwrap().contains("--routing-key"));

        let lines = prepare_lines(b"not json\n\xff\xfe\n", Some("accounts.buyer.unknown"));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].message.as_ref().unwrap().body, vec![0xff, 0xfe]);
        assert_eq!(lines[1].line, 2);
    }
}
