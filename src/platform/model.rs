//! The parts of the platform's objects the worker reads.
//!
//! The platform leaves null fields out of its answers and may add fields at any time,
//! so every field is optional and unknown fields are ignored.

use serde::{Deserialize, Serialize};

/// A reference to another object, such as a link's buyer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectRef {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An ERP link between a buyer and a seller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErpLink {
    pub id: String,
    /// `Active`, `Blocked` or `Disabled`.
    pub status: Option<String>,
    pub name: Option<String>,
    pub note: Option<String>,
    pub buyer: Option<ObjectRef>,
    pub seller: Option<ObjectRef>,
    pub revision: Option<u64>,
}

/// A buyer, as far as the worker needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Buyer {
    pub id: String,
    pub status: Option<String>,
    pub name: Option<String>,
    pub revision: Option<u64>,
}

/// `$meta.pagination` of a list answer. `total` may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pagination {
    pub offset: u64,
    pub limit: u64,
    pub total: Option<u64>,
}

/// `$meta` of a list answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListMeta {
    pub pagination: Option<Pagination>,
}

/// One page of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    #[serde(rename = "$meta", default)]
    pub meta: ListMeta,
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
}
