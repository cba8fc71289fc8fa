//! The input contract: a raw AMQP body becomes a validated [`Event`] with typed ids, or
//! a [`Rejection`] with the machine-readable reason it is dead-lettered with.
//!
//! Checks run in a fixed order (size, UTF-8, JSON, schema, id format, support), so one
//! body always gets the same reason.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::ids::{BuyerId, ErpLinkId, SellerId};

/// Why a message could not become an event. The names are the contract's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooLarge,
    NotUtf8,
    MalformedJson,
    SchemaMismatch,
    InvalidId,
    UnsupportedEvent,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::TooLarge,
        RejectReason::NotUtf8,
        RejectReason::MalformedJson,
        RejectReason::SchemaMismatch,
        RejectReason::InvalidId,
        RejectReason::UnsupportedEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::SchemaMismatch => "schema_mismatch",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::UnsupportedEvent => "unsupported_event",
        }
    }

    pub fn parse(text: &str) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// A sentence for the operator, naming the field and what was expected.
    pub detail: String,
    /// The envelope `id`, when the body had a readable one.
    pub event_id: Option<Uuid>,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            event_id: None,
        }
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Buyer(BuyerId),
    Seller(SellerId),
    ErpLink(ErpLinkId),
    /// An ERP link known only by its buyer and seller; resolved through the platform.
    ErpLinkPair {
        buyer: BuyerId,
        seller: SellerId,
    },
}

impl Subject {
    /// The contract's `objectType`.
    pub fn object_type(&self) -> &'static str {
        match self {
            Subject::Buyer(_) => "Buyer",
            Subject::Seller(_) => "Seller",
            Subject::ErpLink(_) | Subject::ErpLinkPair { .. } => "ErpLink",
        }
    }

    /// The platform id of the object, when the event names it.
    pub fn object_id(&self) -> Option<&str> {
        match self {
            Subject::Buyer(id) => Some(id.as_str()),
            Subject::Seller(id) => Some(id.as_str()),
            Subject::ErpLink(id) => Some(id.as_str()),
            Subject::ErpLinkPair { .. } => None,
        }
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Uuid,
    pub subject: Subject,
    pub event_type: String,
    /// `details.enqueueTime`, normalised to UTC; orders the events about one object.
    pub enqueue_time: DateTime<Utc>,
    /// `data`, or an empty object.
    pub data: Map<String, Value>,
    /// The whole envelope as received, unknown fields included.
    pub envelope: Value,
}

impl Event {
    /// `data.reason` of a `blocked` event: the note written on the ERP link.
    pub fn block_reason(&self) -> Option<&str> {
        self.data.get("reason").and_then(Value::as_str)
    }
}

/// Event types of an ERP link that the worker acts on.
pub const ERP_LINK_EVENT_TYPES: [&str; 2] = ["blocked", "unblocked"];

/// Validates a raw message body into an event.
pub fn parse_event(body: &[u8], max_bytes: usize) -> Result<Event, Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "the body is {} bytes, more than the limit of {max_bytes} bytes",
                body.len()
            ),
        ));
    }

    let text = std::str::from_utf8(body).map_err(|error| {
        Rejection::new(
            RejectReason::NotUtf8,
            format!("the body is not UTF-8: {error}"),
        )
    })?;

    let envelope: Value = serde_json::from_str(text).map_err(|error| {
        let detail = if text.trim().is_empty() {
            "the body is empty; expected a JSON object".to_owned()
        } else {
            format!("the body is not JSON: {error}")
        };
        Rejection::new(RejectReason::MalformedJson, detail)
    })?;

    let readable_id = envelope
        .get("id")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok());
    parse_envelope(envelope).map_err(|mut rejection| {
        rejection.event_id = readable_id;
        rejection
    })
}

fn parse_envelope(envelope: Value) -> Result<Event, Rejection> {
    let schema = |detail: String| Rejection::new(RejectReason::SchemaMismatch, detail);

    let root = envelope.as_object().ok_or_else(|| {
        schema(format!(
            "the body is JSON {}, expected an object",
            json_kind(&envelope)
        ))
    })?;

    let id_text = required_str(root, "id", "id")?;
    let id = Uuid::parse_str(id_text)
        .map_err(|_| schema(format!("`id` is {id_text:?}, expected a UUID")))?;

    let object = required_object(root, "object", "object")?;
    let object_type = required_str(object, "objectType", "object.objectType")?;
    let object_id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(other) => {
            return Err(schema(format!(
                "`object.id` is a JSON {}, expected a string",
                json_kind(other)
            )));
        }
    };

    let details = required_object(root, "details", "details")?;
    let event_type = required_str(details, "eventType", "details.eventType")?;
    let enqueue_text = required_str(details, "enqueueTime", "details.enqueueTime")?;
    let enqueue_time = DateTime::parse_from_rfc3339(enqueue_text)
        .map_err(|_| {
            schema(format!(
                "`details.enqueueTime` is {enqueue_text:?}, expected RFC 3339 with an offset such as 2026-12-04T10:15:00.120Z"
            ))
        })?
        .with_timezone(&Utc);

    let data = match root.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data.clone(),
        Some(other) => {
            return Err(schema(format!(
                "`data` is a JSON {}, expected an object",
                json_kind(other)
            )));
        }
    };
    if let Some(reason) = data.get("reason")
        && !reason.is_string()
        && !reason.is_null()
    {
        return Err(schema(format!(
            "`data.reason` is a JSON {}, expected a string",
            json_kind(reason)
        )));
    }

    let subject = parse_subject(object_type, object_id, event_type, &data)?;
    let event_type = event_type.to_owned();
    Ok(Event {
        id,
        subject,
        event_type,
        enqueue_time,
        data,
        envelope,
    })
}

fn parse_subject(
    object_type: &str,
    object_id: Option<&str>,
    event_type: &str,
    data: &Map<String, Value>,
) -> Result<Subject, Rejection> {
    let missing_id = || {
        Rejection::new(
            RejectReason::SchemaMismatch,
            format!("`object.id` is missing; a {object_type} event needs it"),
        )
    };
    let invalid_id = |id: &str, example: &str| {
        Rejection::new(
            RejectReason::InvalidId,
            format!("`object.id` {id:?} is not a {object_type} id; expected the form {example}"),
        )
    };

    let subject = match object_type {
        "Buyer" => {
            let id = object_id.ok_or_else(missing_id)?;
            Subject::Buyer(BuyerId::parse(id).ok_or_else(|| invalid_id(id, BuyerId::EXAMPLE))?)
        }
        "Seller" => {
            let id = object_id.ok_or_else(missing_id)?;
            Subject::Seller(SellerId::parse(id).ok_or_else(|| invalid_id(id, SellerId::EXAMPLE))?)
        }
        "ErpLink" => match object_id {
            Some(id) => Subject::ErpLink(
                ErpLinkId::parse(id).ok_or_else(|| invalid_id(id, ErpLinkId::EXAMPLE))?,
            ),
            None => parse_pair(data)?,
        },
        other => {
            return Err(Rejection::new(
                RejectReason::UnsupportedEvent,
                format!(
                    "`object.objectType` {other:?} is not supported; expected Buyer, Seller or ErpLink"
                ),
            ));
        }
    };

    if object_type == "ErpLink" && !ERP_LINK_EVENT_TYPES.contains(&event_type) {
        return Err(Rejection::new(
            RejectReason::UnsupportedEvent,
            format!(
                "ErpLink event type {event_type:?} is not supported; expected blocked or unblocked"
            ),
        ));
    }
    Ok(subject)
}

/// Reads the pair form of an ERP-link event: `data.buyerId` and `data.sellerId`.
fn parse_pair(data: &Map<String, Value>) -> Result<Subject, Rejection> {
    let buyer = data.get("buyerId").and_then(Value::as_str);
    let seller = data.get("sellerId").and_then(Value::as_str);
    let (Some(buyer), Some(seller)) = (buyer, seller) else {
        return Err(Rejection::new(
            RejectReason::SchemaMismatch,
            "`object.id` is missing; an ErpLink event needs it, or both `data.buyerId` and `data.sellerId`",
        ));
    };

    let buyer = BuyerId::parse(buyer).ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidId,
            format!(
                "`data.buyerId` {buyer:?} is not a buyer id; expected the form {}",
                BuyerId::EXAMPLE
            ),
        )
    })?;
    let seller = SellerId::parse(seller).ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidId,
            format!(
                "`data.sellerId` {seller:?} is not a seller id; expected the form {}",
                SellerId::EXAMPLE
            ),
        )
    })?;
    Ok(Subject::ErpLinkPair { buyer, seller })
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<&'a str, Rejection> {
    match object.get(field) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(Rejection::new(
            RejectReason::SchemaMismatch,
            format!("`{path}` is missing"),
        )),
        Some(other) => Err(Rejection::new(
            RejectReason::SchemaMismatch,
            format!("`{path}` is a JSON {}, expected a string", json_kind(other)),
        )),
    }
}

fn required_object<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, Rejection> {
    match object.get(field) {
        Some(Value::Object(inner)) => Ok(inner),
        None | Some(Value::Null) => Err(Rejection::new(
            RejectReason::SchemaMismatch,
            format!("`{path}` is missing"),
        )),
        Some(other) => Err(Rejection::new(
            RejectReason::SchemaMismatch,
            format!(
                "`{path}` is a JSON {}, expected an object",
                json_kind(other)
            ),
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The routing key the contract derives from an event: `accounts.<object>.<eventType>`.
pub fn routing_key_for(object_type: &str, event_type: &str) -> Option<String> {
    let object = match object_type {
        "Buyer" => "buyer",
        "Seller" => "seller",
        "ErpLink" => "erp-link",
        _ => return None,
    };
    Some(format!("accounts.{object}.{event_type}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 256 * 1024;

    fn envelope(object: &str, details: &str, data: &str) -> String {
        format!(
            r#"{{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","object":{object},"details":{details}{data}}}"#
        )
    }

    fn reason_of(body: &[u8]) -> RejectReason {
        parse_event(body, LIMIT).unwrap_err().reason
    }

    const DETAILS: &str = r#"{"eventType":"blocked","enqueueTime":"2026-12-04T10:15:00.120Z"}"#;

    #[test]
    fn blocked_event_parses_with_reason() {
        let body = envelope(
            r#"{"id":"ERP-0808-7934-2576","objectType":"ErpLink","name":"AGCO"}"#,
            DETAILS,
            r#","data":{"reason":"Credit limit exceeded in the ERP"}"#,
        );
        let event = parse_event(body.as_bytes(), LIMIT).unwrap();
        assert_eq!(
            event.subject,
            Subject::ErpLink(ErpLinkId::parse("ERP-0808-7934-2576").unwrap())
        );
        assert_eq!(event.event_type, "blocked");
        assert_eq!(
            event.block_reason(),
            Some("Credit limit exceeded in the ERP")
        );
        assert_eq!(
            event.enqueue_time.to_rfc3339(),
            "2026-12-04T10:15:00.120+00:00"
        );
    }

    #[test]
    fn enqueue_time_offset_is_normalised_to_utc() {
        let body = envelope(
            r#"{"id":"BUY-1234-5678","objectType":"Buyer"}"#,
            r#"{"eventType":"updated","enqueueTime":"2026-12-04T12:15:00+02:00"}"#,
            "",
        );
        let event = parse_event(body.as_bytes(), LIMIT).unwrap();
        assert_eq!(event.enqueue_time.to_rfc3339(), "2026-12-04T10:15:00+00:00");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = r#"{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","extra":1,"object":{"id":"BUY-1234-5678","objectType":"Buyer","x":[]},"details":{"eventType":"updated","enqueueTime":"2026-12-04T10:15:00Z","deliveryTime":"later"}}"#;
        assert!(parse_event(body.as_bytes(), LIMIT).is_ok());
    }

    #[test]
    fn pair_form_parses() {
        let body = envelope(
            r#"{"objectType":"ErpLink"}"#,
            DETAILS,
            r#","data":{"buyerId":"BUY-0808-7934","sellerId":"SEL-1968-2576"}"#,
        );
        let event = parse_event(body.as_bytes(), LIMIT).unwrap();
        assert!(matches!(event.subject, Subject::ErpLinkPair { .. }));
    }

    #[test]
    fn reasons_follow_the_contract_order() {
        assert_eq!(reason_of(&vec![b' '; LIMIT + 1]), RejectReason::TooLarge);
        assert_eq!(reason_of(&[0xff, 0xfe]), RejectReason::NotUtf8);
        assert_eq!(reason_of(b"not json"), RejectReason::MalformedJson);
        assert_eq!(reason_of(b""), RejectReason::MalformedJson);
        assert_eq!(reason_of(b"[1,2]"), RejectReason::SchemaMismatch);

        let numeric_id = envelope(r#"{"id":12345,"objectType":"Buyer"}"#, DETAILS, "");
        assert_eq!(
            reason_of(numeric_id.as_bytes()),
            RejectReason::SchemaMismatch
        );

        let bad_uuid = r#"{"id":"42","object":{"id":"BUY-1234-5678","objectType":"Buyer"},"details":{"eventType":"updated","enqueueTime":"2026-12-04T10:15:00Z"}}"#;
        assert_eq!(reason_of(bad_uuid.as_bytes()), RejectReason::SchemaMismatch);

        let bad_time = envelope(
            r#"{"id":"BUY-1234-5678","objectType":"Buyer"}"#,
            r#"{"eventType":"updated","enqueueTime":"2026-12-04 10:15"}"#,
            "",
        );
        assert_eq!(reason_of(bad_time.as_bytes()), RejectReason::SchemaMismatch);

        let wrong_prefix = envelope(
            r#"{"id":"SEL-1234-5678","objectType":"Buyer"}"#,
            DETAILS,
            "",
        );
        assert_eq!(reason_of(wrong_prefix.as_bytes()), RejectReason::InvalidId);

        let short = envelope(r#"{"id":"BUY-12","objectType":"Buyer"}"#, DETAILS, "");
        assert_eq!(reason_of(short.as_bytes()), RejectReason::InvalidId);

        let invoice = envelope(
            r#"{"id":"INV-1234-5678","objectType":"Invoice"}"#,
            DETAILS,
            "",
        );
        assert_eq!(
            reason_of(invoice.as_bytes()),
            RejectReason::UnsupportedEvent
        );

        let link_created = envelope(
            r#"{"id":"ERP-0808-7934-2576","objectType":"ErpLink"}"#,
            r#"{"eventType":"created","enqueueTime":"2026-12-04T10:15:00Z"}"#,
            "",
        );
        assert_eq!(
            reason_of(link_created.as_bytes()),
            RejectReason::UnsupportedEvent
        );
    }

    #[test]
    fn rejection_keeps_a_readable_event_id() {
        let invoice = envelope(
            r#"{"id":"INV-1234-5678","objectType":"Invoice"}"#,
            DETAILS,
            "",
        );
        let rejection = parse_event(invoice.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(
            rejection.event_id.unwrap().to_string(),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
    }

    #[test]
    fn routing_keys_follow_the_contract() {
        assert_eq!(
            routing_key_for("Buyer", "synchronizeRequested").unwrap(),
            "accounts.buyer.synchronizeRequested"
        );
        assert_eq!(
            routing_key_for("ErpLink", "blocked").unwrap(),
            "accounts.erp-link.blocked"
        );
        assert_eq!(routing_key_for("Invoice", "created"), None);
    }
}
