//! What an event asks of the platform: the commands it plans, or why it asks for none.
//!
//! A command is one intended effect on the platform; the reads it needs are steps of
//! the command, not commands of their own.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Event, Subject};
use crate::ids::{BuyerId, ErpLinkId, SellerId};

/// Buyer event types that ask for a synchronization with the ERP.
pub const BUYER_SYNC_EVENT_TYPES: [&str; 5] = [
    "created",
    "updated",
    "activated",
    "enabled",
    "synchronizeRequested",
];

/// The status an ERP-link command brings the link to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkTarget {
    Blocked,
    Active,
}

impl LinkTarget {
    /// The link status the platform reports once the command took effect.
    pub fn status(self) -> &'static str {
        match self {
            LinkTarget::Blocked => "Blocked",
            LinkTarget::Active => "Active",
        }
    }
}

/// One intended effect on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandSpec {
    /// `POST /buyers/{id}/synchronize`.
    SynchronizeBuyer { buyer: BuyerId },
    /// Read the link, then block or unblock it unless it already has the target status.
    SetErpLinkStatus {
        link: ErpLinkId,
        target: LinkTarget,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Find the link of a buyer and a seller; the command then continues as a
    /// [`CommandSpec::SetErpLinkStatus`] on that link.
    ResolveErpLink {
        buyer: BuyerId,
        seller: SellerId,
        target: LinkTarget,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// List the seller's buyers, following the pagination, and plan a synchronization
    /// of each.
    ListSellerBuyers { seller: SellerId },
}

/// Kind name of [`CommandSpec::SynchronizeBuyer`], the only kind that coalesces.
pub const SYNCHRONIZE_BUYER: &str = "synchronize_buyer";
/// Kind name of [`CommandSpec::SetErpLinkStatus`], the kind that can become stale.
pub const SET_ERP_LINK_STATUS: &str = "set_erp_link_status";

impl CommandSpec {
    /// The stored name of the command's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandSpec::SynchronizeBuyer { .. } => SYNCHRONIZE_BUYER,
            CommandSpec::SetErpLinkStatus { .. } => SET_ERP_LINK_STATUS,
            CommandSpec::ResolveErpLink { .. } => "resolve_erp_link",
            CommandSpec::ListSellerBuyers { .. } => "list_seller_buyers",
        }
    }

    /// The platform id of the object the command is about. A link known only by its
    /// pair is filed under its buyer until it is resolved.
    pub fn object_id(&self) -> &str {
        match self {
            CommandSpec::SynchronizeBuyer { buyer } => buyer.as_str(),
            CommandSpec::SetErpLinkStatus { link, .. } => link.as_str(),
            CommandSpec::ResolveErpLink { buyer, .. } => buyer.as_str(),
            CommandSpec::ListSellerBuyers { seller } => seller.as_str(),
        }
    }

    /// The key that serialises commands: commands with the same key never run at the
    /// same time and run in event order.
    pub fn object_key(&self) -> String {
        match self {
            CommandSpec::SynchronizeBuyer { buyer } => format!("buyer:{buyer}"),
            CommandSpec::SetErpLinkStatus { link, .. } => format!("erp-link:{link}"),
            CommandSpec::ResolveErpLink { buyer, seller, .. } => {
                format!("erp-link-pair:{buyer}:{seller}")
            }
            CommandSpec::ListSellerBuyers { seller } => format!("seller:{seller}"),
        }
    }

    /// The `Idempotency-Key` of the command, derived from the event that planned it so
    /// that it is the same on every retry and after a restart.
    pub fn idempotency_key(&self, event_id: Uuid) -> Uuid {
        let name = format!("{event_id}/{}/{}", self.kind(), self.object_id());
        Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes())
    }
}

/// Namespace of the version-5 UUIDs used as idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_5d3a_8e4b_4f0a_9b7d_2a61_c0e8_41f3);

/// What an event leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Commands(Vec<CommandSpec>),
    /// A valid event that asks for no platform call, with the reason.
    Ignored(String),
}

/// Seller event types that lead to a synchronization of every buyer of the seller.
pub const SELLER_FAN_OUT_EVENT_TYPES: [&str; 4] = ["disabled", "activated", "deleted", "updated"];

/// Plans the commands of a validated event.
pub fn plan_event(event: &Event) -> Plan {
    match &event.subject {
        Subject::Buyer(buyer) => {
            if BUYER_SYNC_EVENT_TYPES.contains(&event.event_type.as_str()) {
                Plan::Commands(vec![CommandSpec::SynchronizeBuyer {
                    buyer: buyer.clone(),
                }])
            } else {
                Plan::Ignored(format!(
                    "Buyer event type {:?} asks for no platform call",
                    event.event_type
                ))
            }
        }
        Subject::Seller(seller) => {
            if SELLER_FAN_OUT_EVENT_TYPES.contains(&event.event_type.as_str()) {
                Plan::Commands(vec![CommandSpec::ListSellerBuyers {
                    seller: seller.clone(),
                }])
            } else {
                Plan::Ignored(format!(
                    "Seller event type {:?} asks for no platform call",
                    event.event_type
                ))
            }
        }
        Subject::ErpLink(link) => {
            let (target, note) = link_target(event);
            Plan::Commands(vec![CommandSpec::SetErpLinkStatus {
                link: link.clone(),
                target,
                note,
            }])
        }
        Subject::ErpLinkPair { buyer, seller } => {
            let (target, note) = link_target(event);
            Plan::Commands(vec![CommandSpec::ResolveErpLink {
                buyer: buyer.clone(),
                seller: seller.clone(),
                target,
                note,
            }])
        }
    }
}

/// The status an ERP-link event asks for, with the block reason as the note.
fn link_target(event: &Event) -> (LinkTarget, Option<String>) {
    if event.event_type == "blocked" {
        (LinkTarget::Blocked, event.block_reason().map(str::to_owned))
    } else {
        (LinkTarget::Active, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_event;

    fn event(object: &str, event_type: &str, data: &str) -> Event {
        let body = format!(
            r#"{{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","object":{object},"details":{{"eventType":"{event_type}","enqueueTime":"2026-12-04T10:15:00Z"}}{data}}}"#
        );
        parse_event(body.as_bytes(), 1 << 20).unwrap()
    }

    #[test]
    fn buyer_sync_types_plan_a_synchronization() {
        for event_type in BUYER_SYNC_EVENT_TYPES {
            let plan = plan_event(&event(
                r#"{"id":"BUY-1234-5678","objectType":"Buyer"}"#,
                event_type,
                "",
            ));
            let Plan::Commands(commands) = plan else {
                panic!("{event_type} planned nothing")
            };
            assert_eq!(commands[0].kind(), "synchronize_buyer");
            assert_eq!(commands[0].object_key(), "buyer:BUY-1234-5678");
        }
    }

    #[test]
    fn other_buyer_types_are_ignored() {
        let plan = plan_event(&event(
            r#"{"id":"BUY-1234-5678","objectType":"Buyer"}"#,
            "disabled",
            "",
        ));
        assert!(matches!(plan, Plan::Ignored(_)));
    }

    #[test]
    fn blocked_carries_the_reason_as_note() {
        let plan = plan_event(&event(
            r#"{"id":"ERP-0808-7934-2576","objectType":"ErpLink"}"#,
            "blocked",
            r#","data":{"reason":"Credit limit"}"#,
        ));
        let Plan::Commands(commands) = plan else {
            panic!("nothing planned")
        };
        assert_eq!(
            commands[0],
            CommandSpec::SetErpLinkStatus {
                link: ErpLinkId::parse("ERP-0808-7934-2576").unwrap(),
                target: LinkTarget::Blocked,
                note: Some("Credit limit".into()),
            }
        );
    }

    #[test]
    fn idempotency_key_is_stable_per_event_and_command() {
        let spec = CommandSpec::SynchronizeBuyer {
            buyer: BuyerId::parse("BUY-1234-5678").unwrap(),
        };
        let event_id = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        assert_eq!(
            spec.idempotency_key(event_id),
            spec.idempotency_key(event_id)
        );
        assert_ne!(
            spec.idempotency_key(event_id),
            spec.idempotency_key(Uuid::nil())
        );
    }

    #[test]
    fn command_spec_json_round_trips() {
        let spec = CommandSpec::SetErpLinkStatus {
            link: ErpLinkId::parse("ERP-0808-7934-2576").unwrap(),
            target: LinkTarget::Active,
            note: None,
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["kind"], "set_erp_link_status");
        assert_eq!(serde_json::from_value::<CommandSpec>(json).unwrap(), spec);
    }
}
