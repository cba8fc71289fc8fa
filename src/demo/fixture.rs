//! The demo's event file, `fixtures/demo-events.jsonl`, and the generator it comes from.
//!
//! The file is kept in the repository so it can be read and replayed with
//! `erp-sync publish`; a test checks that it is exactly what [`demo_events`] generates
//! from the simulator's default data set, so the two cannot drift apart.

use chrono::{DateTime, Duration, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::simulator::{BuyerCase, DataSet, LinkCase, SellerCase};

/// The committed event file.
pub const DEMO_EVENTS: &[u8] = include_bytes!("../../fixtures/demo-events.jsonl");

/// Path of the event file in the repository.
pub const DEMO_EVENTS_PATH: &str = "fixtures/demo-events.jsonl";

/// Routing key of the lines that are not valid envelopes.
pub const MALFORMED_ROUTING_KEY: &str = "accounts.buyer.updated";

/// Seed of the choices the generator makes (which buyers, which order).
const FIXTURE_SEED: u64 = 20_261_204;

/// Synchronize events (several buyers get more than one).
const SYNCHRONIZE_EVENTS: usize = 700;
/// Distinct buyers among the synchronize events.
const SYNCHRONIZED_BUYERS: usize = 600;
/// Buyer events that ask for no call.
const IGNORED_BUYER_EVENTS: usize = 60;
/// Block events on links that can be blocked, each link once.
const BLOCK_EVENTS: usize = 150;
/// Unblock events on Blocked links, each link once.
const UNBLOCK_EVENTS: usize = 100;
/// Block events on links that are already Blocked: applied without a POST.
const ALREADY_BLOCKED_EVENTS: usize = 10;
/// Seller events, all about the small seller so that they stay cheap to fan out.
const SELLER_EVENTS: usize = 6;
/// ERP-link events in the pair form (buyer and seller instead of the link id).
const PAIR_FORM_EVENTS: usize = 10;
/// Deliveries that repeat an earlier event id.
const DUPLICATES: usize = 20;

/// Buyer event types that ask for a synchronization.
const SYNCHRONIZE_TYPES: [&str; 5] = [
    "created",
    "updated",
    "activated",
    "enabled",
    "synchronizeRequested",
];
/// Buyer event types that ask for no call.
const IGNORED_BUYER_TYPES: [&str; 3] = ["disabled", "deleted", "transferred"];
/// Seller event types.
const SELLER_TYPES: [&str; 4] = ["updated", "activated", "disabled", "deleted"];
/// Reasons an ERP gives for a block.
const BLOCK_REASONS: [&str; 5] = [
    "Credit limit exceeded in the ERP",
    "Overdue invoices beyond 90 days",
    "Customer account on legal hold",
    "Missing tax registration",
    "Payment terms under review",
];

/// Bodies that cannot become events, each with the dead-letter reason it gets.
const MALFORMED: [(&[u8], &str); 8] = [
    (b"not json", "malformed_json"),
    (br#"{"id":"3b1f4c2e-8d1a-4c5e-9f7a-2b6d8e0c1a3f","object":{"id":12345,"objectType":"Buyer"},"details":{"eventType":"updated","enqueueTime":"2026-12-04T08:00:00Z"}}"#, "schema_mismatch"),
    (br#"{"id":"5d2e6f1a-9b3c-4d7e-8a1f-3c5b7d9e1f2a","object":{"id":"INV-1234-5678","objectType":"Invoice"},"details":{"eventType":"created","enqueueTime":"2026-12-04T08:00:00Z"}}"#, "unsupported_event"),
    (b"\xff\xfe", "not_utf8"),
    (br#"{"id":"7e4a8b2c-1d5f-4e9a-b3c7-5d9f1b3e7a4c","object":{"id":"BUY-12","objectType":"Buyer"},"details":{"eventType":"updated","enqueueTime":"2026-12-04T08:00:00Z"}}"#, "invalid_id"),
    (br#"{"id":"9a6c0d4e-3f7b-4a1c-8e5d-7f1b3d5a9c6e","object":{"id":"ERP-1234-5678-9012","objectType":"ErpLink"},"details":{"eventType":"created","enqueueTime":"2026-12-04T08:00:00Z"}}"#, "unsupported_event"),
    (br#"{"id":"b18e2f6a-5c9d-4e3a-9f7b-1d5f7b9c3e8a","object":{"id":"BUY-1234-5678","objectType":"Buyer"},"details":{"eventType":"updated"}}"#, "schema_mismatch"),
    (b"{}", "schema_mismatch"),
];

/// The buyer whose first synchronization the demo fails once with a 503, to show a
/// retry that succeeds.
pub fn transient_failure_buyer(data: &DataSet) -> String {
    chosen_buyers(data)[0].clone()
}

/// The link whose block the platform rejects, because an Active licensee uses it.
pub fn rejected_link(data: &DataSet) -> String {
    data.find_link(LinkCase::WithActiveLicensee)
        .expect("the default data set has a link with an Active licensee")
        .id
        .clone()
}

/// Generates the demo's event file, one line per delivery.
pub fn demo_events(data: &DataSet) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(FIXTURE_SEED);
    let mut events = planned_events(data, &mut rng);
    events.shuffle(&mut rng);

    let base: DateTime<Utc> = "2026-12-04T08:00:00Z".parse().expect("a valid time");
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (index, (object_type, object_id, name, event_type, data)) in events.into_iter().enumerate()
    {
        let enqueue_time = base + Duration::milliseconds(250 * index as i64);
        let object = EnvelopeObject {
            object_type,
            id: object_id.as_deref(),
            name: name.as_deref(),
        };
        let envelope = envelope(&mut rng, object, event_type, enqueue_time, data);
        lines.push(serde_json::to_vec(&envelope).expect("an envelope serializes"));
    }

    for _ in 0..DUPLICATES {
        let original = rng.random_range(0..lines.len());
        let position = rng.random_range(original + 1..=lines.len());
        let copy = lines[original].clone();
        lines.insert(position, copy);
    }
    for (body, _) in MALFORMED {
        let position = rng.random_range(0..=lines.len());
        lines.insert(position, body.to_vec());
    }
    lines
}

/// The committed file's lines, without the trailing empty line.
pub fn committed_lines() -> Vec<&'static [u8]> {
    DEMO_EVENTS
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .collect()
}

/// The generated lines as file contents.
pub fn file_contents(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut contents = Vec::new();
    for line in lines {
        contents.extend_from_slice(line);
        contents.push(b'\n');
    }
    contents
}

/// An event before it gets its id and time: object type, object id, display name,
/// event type and data.
type PlannedEvent = (
    &'static str,
    Option<String>,
    Option<String>,
    &'static str,
    Option<Value>,
);

fn planned_events(data: &DataSet, rng: &mut ChaCha8Rng) -> Vec<PlannedEvent> {
    let mut events: Vec<PlannedEvent> = Vec::new();

    let buyer_event = |id: &str, event_type| {
        let name = data.buyer(id).map(|buyer| buyer.name.clone());
        ("Buyer", Some(id.to_owned()), name, event_type, None)
    };
    let link_event = |id: &str, event_type, reason: Option<&str>| {
        let name = data.erp_link(id).map(|link| link.name.clone());
        let data = reason.map(|reason| json!({ "reason": reason }));
        ("ErpLink", Some(id.to_owned()), name, event_type, data)
    };

    let buyers = chosen_buyers(data);
    for index in 0..SYNCHRONIZE_EVENTS {
        let buyer = &buyers[index % SYNCHRONIZED_BUYERS];
        let event_type = SYNCHRONIZE_TYPES[rng.random_range(0..SYNCHRONIZE_TYPES.len())];
        events.push(buyer_event(buyer, event_type));
    }
    for index in 0..IGNORED_BUYER_EVENTS {
        let buyer = &buyers[SYNCHRONIZED_BUYERS + index % (buyers.len() - SYNCHRONIZED_BUYERS)];
        events.push(buyer_event(
            buyer,
            IGNORED_BUYER_TYPES[index % IGNORED_BUYER_TYPES.len()],
        ));
    }

    for link in data.find_links(LinkCase::Blockable).take(BLOCK_EVENTS) {
        let reason = BLOCK_REASONS[rng.random_range(0..BLOCK_REASONS.len())];
        events.push(link_event(&link.id, "blocked", Some(reason)));
    }
    let mut blocked = data.find_links(LinkCase::Unblockable);
    for link in blocked.by_ref().take(UNBLOCK_EVENTS) {
        events.push(link_event(&link.id, "unblocked", None));
    }
    for link in blocked.take(ALREADY_BLOCKED_EVENTS) {
        let reason = BLOCK_REASONS[rng.random_range(0..BLOCK_REASONS.len())];
        events.push(link_event(&link.id, "blocked", Some(reason)));
    }
    events.push(link_event(
        &rejected_link(data),
        "blocked",
        Some("Credit limit exceeded in the ERP"),
    ));

    let seller = data
        .find_seller_with_buyers(SellerCase::Changeable, 1..=10)
        .expect("the default data set has a small seller");
    for index in 0..SELLER_EVENTS {
        let event_type = SELLER_TYPES[index % SELLER_TYPES.len()];
        events.push((
            "Seller",
            Some(seller.id.clone()),
            Some(seller.name.clone()),
            event_type,
            None,
        ));
    }
    for link in data
        .find_links(LinkCase::Blockable)
        .skip(BLOCK_EVENTS)
        .take(PAIR_FORM_EVENTS)
    {
        let pair = json!({ "buyerId": link.buyer.id, "sellerId": link.seller.id, "reason": "Credit limit exceeded in the ERP" });
        events.push((
            "ErpLink",
            None,
            Some(link.name.clone()),
            "blocked",
            Some(pair),
        ));
    }
    events
}

/// Active buyers for the buyer events, in a fixed order: the synchronized ones first,
/// then those that only get ignored events.
fn chosen_buyers(data: &DataSet) -> Vec<String> {
    data.find_buyers(BuyerCase::Active)
        .take(SYNCHRONIZED_BUYERS + IGNORED_BUYER_EVENTS)
        .map(|buyer| buyer.id.clone())
        .collect()
}

/// The `object` part of an envelope.
struct EnvelopeObject<'a> {
    object_type: &'a str,
    id: Option<&'a str>,
    name: Option<&'a str>,
}

fn envelope(
    rng: &mut ChaCha8Rng,
    object: EnvelopeObject<'_>,
    event_type: &str,
    enqueue_time: DateTime<Utc>,
    data: Option<Value>,
) -> Value {
    let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let EnvelopeObject {
        object_type,
        id: object_id,
        name,
    } = object;
    let mut object = json!({ "objectType": object_type });
    if let Some(object_id) = object_id {
        object["id"] = json!(object_id);
    }
    if let Some(name) = name {
        object["name"] = json!(name);
    }
    let mut envelope = json!({
        "id": id.to_string(),
        "object": object,
        "details": {
            "eventType": event_type,
            "enqueueTime": enqueue_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        },
    });
    if let Some(data) = data {
        envelope["data"] = data;
    }
    envelope
}

/// The reasons the malformed lines of the file are dead-lettered with.
pub fn malformed_reasons() -> impl Iterator<Item = &'static str> {
    MALFORMED.iter().map(|(_, reason)| *reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::SimulatorConfig;
    use crate::simulator::generator::generate;

    fn default_data() -> DataSet {
        let config = SimulatorConfig::default();
        generate(config.seed, config.buyers, config.sellers)
    }

    #[test]
    fn committed_file_matches_the_generator() {
        let generated = file_contents(&demo_events(&default_data()));
        if std::env::var_os("ERP_SYNC_WRITE_FIXTURE").is_some() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_EVENTS_PATH);
            std::fs::write(path, &generated).expect("the fixture file is writable");
            return;
        }
        assert!(
            DEMO_EVENTS == generated.as_slice(),
            "{DEMO_EVENTS_PATH} differs from the generator's output; regenerate it with \
             ERP_SYNC_WRITE_FIXTURE=1 cargo nextest run committed_file_matches_the_generator"
        );
    }

    #[test]
    fn file_has_every_kind_of_delivery() {
        let lines = committed_lines();
        assert!(lines.len() >= 1000, "{} lines", lines.len());

        let mut ids = std::collections::HashSet::new();
        let repeated = lines
            .iter()
            .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
            .filter_map(|envelope| envelope["id"].as_str().map(str::to_owned))
            .filter(|id| !ids.insert(id.clone()))
            .count();
        assert_eq!(repeated, DUPLICATES);

        let rejected: Vec<&str> = lines
            .iter()
            .filter_map(|line| crate::event::parse_event(line, 256 * 1024).err())
            .map(|rejection| rejection.reason.as_str())
            .collect();
        let mut expected: Vec<&str> = malformed_reasons().collect();
        let mut found = rejected.clone();
        expected.sort();
        found.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn object_ids_exist_in_the_default_data_set() {
        let data = default_data();
        for line in committed_lines() {
            let Ok(event) = crate::event::parse_event(line, 256 * 1024) else {
                continue;
            };
            let known = match &event.subject {
                crate::event::Subject::Buyer(id) => data.buyer(id.as_str()).is_some(),
                crate::event::Subject::Seller(id) => data.seller(id.as_str()).is_some(),
                crate::event::Subject::ErpLink(id) => data.erp_link(id.as_str()).is_some(),
                crate::event::Subject::ErpLinkPair { buyer, seller } => {
                    data.link_of_pair(buyer.as_str(), seller.as_str()).is_some()
                }
            };
            assert!(
                known,
                "event {} names an object the simulator does not have",
                event.id
            );
        }
    }
}
