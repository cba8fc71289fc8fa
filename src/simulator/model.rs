//! Objects of the Accounts API as the simulator stores them.
//!
//! The serde form is the data-set file format (`GET /_sim/export`, the `fixture` key):
//! the platform's camelCase field names, null fields left out, `audit` always present.
//! References (`buyer`, `seller`, `account`) are stored by id; responses fill in the
//! referenced object's current name and status, so a stored name may be stale.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Status of a buyer. Only `Active`, `Enabled` and `Disabled` change through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BuyerStatus {
    Active,
    Enabled,
    Disabled,
    Deleted,
    Unassigned,
    Conflict,
    Mismatch,
}

/// Status of a seller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SellerStatus {
    Active,
    Disabled,
    Offline,
    Deleted,
}

/// Status of an ERP link. `Disabled` is set only by buyer synchronization while the
/// link's seller is Disabled or Deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErpLinkStatus {
    Active,
    Blocked,
    Disabled,
}

/// Status of a licensee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LicenseeStatus {
    Active,
    Enabled,
    Disabled,
    Deleted,
}

/// Status of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountStatus {
    Active,
    Enabled,
    Disabled,
}

/// Kind of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountType {
    Client,
    Vendor,
    Operations,
}

macro_rules! status_names {
    ($($status:ident { $($variant:ident),* })*) => {
        $(impl $status {
            /// Returns the name the API uses for this status.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant),)*
                }
            }
        })*
    };
}

status_names! {
    BuyerStatus { Active, Enabled, Disabled, Deleted, Unassigned, Conflict, Mismatch }
    SellerStatus { Active, Disabled, Offline, Deleted }
    ErpLinkStatus { Active, Blocked, Disabled }
    LicenseeStatus { Active, Enabled, Disabled, Deleted }
    AccountStatus { Active, Enabled, Disabled }
    AccountType { Client, Vendor, Operations }
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub address_line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_line2: Option<String>,
    pub post_code: String,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
}

/// A contact person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub name: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// ERP identifiers of a buyer or an ERP link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalIds {
    /// ERP company contact, unique across buyers, such as `US-CON-183485`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erp_company_contact: Option<String>,
    /// ERP customer number, such as `US-SCU-117126`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erp_customer: Option<String>,
    /// The account's Customer Discount Group (CDG), such as `WW-100502`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_external_id: Option<String>,
}

impl ExternalIds {
    /// Reports whether the ERP identifiers that make a buyer ERP-activated are present.
    pub fn has_erp_ids(&self) -> bool {
        let present = |value: &Option<String>| value.as_deref().is_some_and(|id| !id.is_empty());
        present(&self.erp_customer) && present(&self.erp_company_contact)
    }
}

/// A reference to another object, stored by id. `name` is informational in the stored
/// form: responses always show the referenced object's current name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Reference {
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: Some(name.into()),
        }
    }
}

/// Author of an audited event: a user (`USR-…`) or an API token (`TKN-…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    pub name: String,
}

/// The latest occurrence of one audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UTC time, written with milliseconds as the platform does.
    #[serde(
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_time"
    )]
    pub at: DateTime<Utc>,
    pub by: Actor,
}

/// Audit trail of an object: only the latest occurrence of each event is kept. Each
/// object kind uses a subset of these events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unblocked: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassigned: Option<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<AuditEvent>,
}

/// A reconciliation error on a buyer; it drives the Conflict and Mismatch statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub message: String,
}

/// One currency of a seller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Currency {
    /// ISO 4217 code.
    pub value: String,
    pub billing_enabled: bool,
    pub is_default: bool,
}

/// Kinds of buyer a licensee may purchase for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eligibility {
    pub client: bool,
    pub partner: bool,
}

/// A client, vendor or operations account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub id: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    pub status: AccountStatus,
    pub name: String,
    /// The Customer Discount Group (CDG) of a client account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    pub revision: u64,
    #[serde(default)]
    pub audit: Audit,
}

/// A SoftwareOne selling entity, such as "SoftwareONE Argentina".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seller {
    pub id: String,
    pub name: String,
    /// ERP instance code, such as `AR` or `SWO_CH`.
    pub external_id: String,
    pub status: SellerStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default)]
    pub currencies: Vec<Currency>,
    pub revision: u64,
    #[serde(default)]
    pub audit: Audit,
}

/// A legal entity that SoftwareOne invoices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Buyer {
    pub id: String,
    pub name: String,
    pub status: BuyerStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    /// ERP identifiers; a buyer without them is not ERP-activated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<ExternalIds>,
    /// The client account; absent while the buyer is Unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Reference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<BuyerError>,
    pub revision: u64,
    #[serde(default)]
    pub audit: Audit,
}

impl Buyer {
    /// Reports whether the buyer has ERP ids, which synchronize, block and unblock need.
    pub fn is_erp_activated(&self) -> bool {
        self.external_ids
            .as_ref()
            .is_some_and(ExternalIds::has_erp_ids)
    }
}

/// The link between one buyer and one seller in that seller's ERP instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErpLink {
    pub id: String,
    /// `<buyer name> - <seller name>`.
    pub name: String,
    pub status: ErpLinkStatus,
    /// Free text; the ERP integration writes the block reason here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<ExternalIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// The buyer's name in this seller's ERP instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    pub buyer: Reference,
    pub seller: Reference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    pub revision: u64,
    #[serde(default)]
    pub audit: Audit,
    /// Status to restore when a Disabled link's seller is no longer Disabled. Kept in
    /// the data-set file only; responses never show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_before_disabled: Option<ErpLinkStatus>,
}

/// An entity that consumes what a buyer purchases from one seller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Licensee {
    pub id: String,
    pub name: String,
    pub status: LicenseeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub use_buyer_address: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligibility: Option<Eligibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    pub buyer: Reference,
    pub seller: Reference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    pub revision: u64,
    #[serde(default)]
    pub audit: Audit,
}

impl Licensee {
    /// Reports whether the licensee is Active or Enabled, which blocks the pair's link
    /// and the seller's status changes.
    pub fn is_in_use(&self) -> bool {
        matches!(
            self.status,
            LicenseeStatus::Active | LicenseeStatus::Enabled
        )
    }
}

/// Returns the current time truncated to milliseconds, the precision audit times keep.
pub fn now_millis() -> DateTime<Utc> {
    truncate_to_millis(Utc::now())
}

pub(crate) fn truncate_to_millis(time: DateTime<Utc>) -> DateTime<Utc> {
    let millis = time.timestamp_millis();
    DateTime::from_timestamp_millis(millis).unwrap_or(time)
}

fn serialize_millis<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn deserialize_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| serde::de::Error::custom(format!("invalid time `{text}`: {error}")))
}
