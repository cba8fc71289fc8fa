//! API responses built from stored objects: current names in references, derived
//! fields (a buyer's `sellers`), internal fields removed, `audit` only when selected.

use serde_json::{Map, Value, json};

use super::config::CurrencyShape;
use super::dataset::{Collection, DataSet, Identified, ObjectKind};
use super::model::{Account, Buyer, ErpLink, Licensee, Seller};
use super::rql::Field;

/// How to render an object.
#[derive(Debug, Clone)]
pub(crate) struct RenderOptions {
    /// `select=+audit` (or `select=audit`) was given.
    pub include_audit: bool,
    /// Fields removed with `select=-field`.
    pub excluded: Vec<Field>,
    pub currencies: CurrencyShape,
}

/// An object kind served by the API.
pub(crate) trait Resource: Identified + Sized + 'static {
    const KIND: ObjectKind;
    /// Top-level fields of the response; RQL and `order` may use only these.
    const FIELDS: &'static [&'static str];
    /// Fields that responses leave out, listed in `$meta.omitted`.
    const OMITTED: &'static [&'static str] = &["audit"];

    fn collection(data: &DataSet) -> &Collection<Self>;

    /// Renders the object with audit and every field (exclusions are applied later).
    fn render(&self, data: &DataSet, options: &RenderOptions) -> Value;

    fn status_name(&self) -> &'static str;

    /// Returns the ids an index yields for one condition, in id order, or `None` when
    /// no index resolves it.
    fn indexed<'a>(_data: &'a DataSet, _field: &str, _value: &str) -> Option<Vec<&'a str>> {
        None
    }
}

fn to_map(value: impl serde::Serialize) -> Map<String, Value> {
    match serde_json::to_value(value).expect("stored objects serialize") {
        Value::Object(fields) => fields,
        _ => unreachable!("objects serialize to JSON objects"),
    }
}

fn finish(mut fields: Map<String, Value>, options: &RenderOptions) -> Value {
    let audit_empty = fields
        .get("audit")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    if !options.include_audit || audit_empty {
        fields.remove("audit");
    }
    Value::Object(fields)
}

/// Removes `select=-field` exclusions from a rendered object.
pub(crate) fn apply_exclusions(value: &mut Value, excluded: &[Field]) {
    for field in excluded {
        remove_path(value, &field.path);
    }
}

fn remove_path(value: &mut Value, path: &[String]) {
    match (value, path) {
        (Value::Object(fields), [last]) => {
            fields.remove(last);
        }
        (Value::Object(fields), [head, rest @ ..]) => {
            if let Some(child) = fields.get_mut(head) {
                remove_path(child, rest);
            }
        }
        (Value::Array(items), _) => {
            for item in items {
                remove_path(item, path);
            }
        }
        _ => {}
    }
}

fn account_reference(data: &DataSet, id: &str) -> Value {
    match data.account(id) {
        Some(account) => json!({
            "id": account.id,
            "type": account.account_type.as_str(),
            "status": account.status.as_str(),
            "name": account.name,
        }),
        None => json!({ "id": id }),
    }
}

fn buyer_reference(data: &DataSet, id: &str) -> Value {
    match data.buyer(id) {
        Some(buyer) => json!({ "id": buyer.id, "name": buyer.name }),
        None => json!({ "id": id }),
    }
}

fn seller_reference(data: &DataSet, id: &str) -> Value {
    let Some(seller) = data.seller(id) else {
        return json!({ "id": id });
    };
    let mut reference =
        json!({ "id": seller.id, "externalId": seller.external_id, "name": seller.name });
    if let Some(icon) = &seller.icon {
        reference["icon"] = json!(icon);
    }
    reference
}

impl Resource for Account {
    const KIND: ObjectKind = ObjectKind::Account;
    const FIELDS: &'static [&'static str] = &[
        "id",
        "type",
        "status",
        "name",
        "externalId",
        "icon",
        "address",
        "revision",
        "audit",
    ];

    fn collection(data: &DataSet) -> &Collection<Self> {
        data.accounts()
    }

    fn render(&self, _data: &DataSet, options: &RenderOptions) -> Value {
        finish(to_map(self), options)
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }
}

impl Resource for Seller {
    const KIND: ObjectKind = ObjectKind::Seller;
    const FIELDS: &'static [&'static str] = &[
        "id",
        "name",
        "externalId",
        "status",
        "icon",
        "address",
        "currencies",
        "currency",
        "revision",
        "audit",
    ];
    // The platform never returns a seller's buyers, even when selected.
    const OMITTED: &'static [&'static str] = &["buyers", "audit"];

    fn collection(data: &DataSet) -> &Collection<Self> {
        data.sellers()
    }

    fn render(&self, _data: &DataSet, options: &RenderOptions) -> Value {
        let mut fields = to_map(self);
        match options.currencies {
            CurrencyShape::Objects => {}
            CurrencyShape::Strings => {
                let codes: Vec<&str> = self
                    .currencies
                    .iter()
                    .map(|currency| currency.value.as_str())
                    .collect();
                fields.insert("currencies".into(), json!(codes));
            }
            CurrencyShape::Single => {
                fields.remove("currencies");
                let default = self
                    .currencies
                    .iter()
                    .find(|currency| currency.is_default)
                    .or(self.currencies.first());
                if let Some(currency) = default {
                    fields.insert("currency".into(), json!(currency.value));
                }
            }
        }
        finish(fields, options)
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }
}

impl Resource for Buyer {
    const KIND: ObjectKind = ObjectKind::Buyer;
    const FIELDS: &'static [&'static str] = &[
        "id",
        "name",
        "status",
        "icon",
        "address",
        "taxId",
        "contact",
        "externalIds",
        "account",
        "sellers",
        "errors",
        "revision",
        "audit",
    ];

    fn collection(data: &DataSet) -> &Collection<Self> {
        data.buyers()
    }

    fn render(&self, data: &DataSet, options: &RenderOptions) -> Value {
        let mut fields = to_map(self);
        if let Some(account) = &self.account {
            fields.insert("account".into(), account_reference(data, &account.id));
        }
        let sellers: Vec<Value> = data
            .links_of_buyer(&self.id)
            .map(|link| seller_reference(data, &link.seller.id))
            .collect();
        if !sellers.is_empty() {
            fields.insert("sellers".into(), Value::Array(sellers));
        }
        finish(fields, options)
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }

    fn indexed<'a>(data: &'a DataSet, field: &str, value: &str) -> Option<Vec<&'a str>> {
        match field {
            "sellers.id" => Some(
                data.buyers_of_seller(value)
                    .map(|buyer| buyer.id.as_str())
                    .collect(),
            ),
            _ => None,
        }
    }
}

impl Resource for ErpLink {
    const KIND: ObjectKind = ObjectKind::ErpLink;
    const FIELDS: &'static [&'static str] = &[
        "id",
        "name",
        "status",
        "note",
        "externalIds",
        "address",
        "companyName",
        "buyer",
        "seller",
        "icon",
        "revision",
        "audit",
    ];

    fn collection(data: &DataSet) -> &Collection<Self> {
        data.erp_links()
    }

    fn render(&self, data: &DataSet, options: &RenderOptions) -> Value {
        let mut fields = to_map(self);
        fields.remove("statusBeforeDisabled");
        fields.insert("buyer".into(), buyer_reference(data, &self.buyer.id));
        fields.insert("seller".into(), seller_reference(data, &self.seller.id));
        finish(fields, options)
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }

    fn indexed<'a>(data: &'a DataSet, field: &str, value: &str) -> Option<Vec<&'a str>> {
        let ids = match field {
            "buyer.id" => data
                .links_of_buyer(value)
                .map(|link| link.id.as_str())
                .collect(),
            "seller.id" => data
                .links_of_seller(value)
                .map(|link| link.id.as_str())
                .collect(),
            _ => return None,
        };
        Some(ids)
    }
}

impl Resource for Licensee {
    const KIND: ObjectKind = ObjectKind::Licensee;
    const FIELDS: &'static [&'static str] = &[
        "id",
        "name",
        "status",
        "externalId",
        "useBuyerAddress",
        "address",
        "description",
        "eligibility",
        "contact",
        "buyer",
        "seller",
        "account",
        "icon",
        "revision",
        "audit",
    ];

    fn collection(data: &DataSet) -> &Collection<Self> {
        data.licensees()
    }

    fn render(&self, data: &DataSet, options: &RenderOptions) -> Value {
        let mut fields = to_map(self);
        fields.insert("buyer".into(), buyer_reference(data, &self.buyer.id));
        fields.insert("seller".into(), seller_reference(data, &self.seller.id));
        if let Some(account) = &self.account {
            fields.insert("account".into(), account_reference(data, &account.id));
        }
        finish(fields, options)
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }

    fn indexed<'a>(data: &'a DataSet, field: &str, value: &str) -> Option<Vec<&'a str>> {
        let ids = match field {
            "buyer.id" => data
                .licensees_of_buyer(value)
                .map(|licensee| licensee.id.as_str())
                .collect(),
            "seller.id" => data
                .licensees_of_seller(value)
                .map(|licensee| licensee.id.as_str())
                .collect(),
            _ => return None,
        };
        Some(ids)
    }
}
