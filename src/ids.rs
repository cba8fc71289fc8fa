//! Platform object ids, validated once at the edge.
//!
//! Each id is a three-letter prefix followed by groups of four digits: buyers and
//! sellers have two groups (`BUY-5171-6994`), ERP links three (`ERP-0808-7934-2576`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Checks `text` against `PREFIX-dddd(-dddd){groups-1}`.
fn has_id_shape(text: &str, prefix: &str, groups: usize) -> bool {
    let Some(rest) = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == groups
        && parts
            .iter()
            .all(|part| part.len() == 4 && part.bytes().all(|byte| byte.is_ascii_digit()))
}

macro_rules! platform_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $groups:literal, $example:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id prefix, without the dash.
            pub const PREFIX: &'static str = $prefix;
            /// An example of the expected shape, for error messages.
            pub const EXAMPLE: &'static str = $example;

            /// Parses an id, returning `None` when it does not have the expected shape.
            pub fn parse(text: &str) -> Option<Self> {
                has_id_shape(text, $prefix, $groups).then(|| Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::parse(&text).ok_or_else(|| format!("{text:?} is not an id of the form {}", $example))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

platform_id!(
    /// A buyer id such as `BUY-5171-6994`.
    BuyerId, "BUY", 2, "BUY-1234-5678"
);
platform_id!(
    /// A seller id such as `SEL-6685-4945`.
    SellerId, "SEL", 2, "SEL-1234-5678"
);
platform_id!(
    /// An ERP link id such as `ERP-0808-7934-2576`.
    ErpLinkId, "ERP", 3, "ERP-1234-5678-9012"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse() {
        assert!(BuyerId::parse("BUY-5171-6994").is_some());
        assert!(SellerId::parse("SEL-1968-2576").is_some());
        assert!(ErpLinkId::parse("ERP-0808-7934-2576").is_some());
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for text in [
            "BUY-12",
            "BUY-1234-567",
            "BUY-1234-5678-9012",
            "buy-1234-5678",
            "BUY-12a4-5678",
            "SEL-1234-5678",
            "",
            "BUY-",
        ] {
            assert!(BuyerId::parse(text).is_none(), "{text:?}");
        }
        assert!(ErpLinkId::parse("ERP-0808-7934").is_none());
        assert!(SellerId::parse("BUY-1234-5678").is_none());
    }

    #[test]
    fn ids_round_trip_through_json() {
        let id: ErpLinkId = serde_json::from_str("\"ERP-0808-7934-2576\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"ERP-0808-7934-2576\""
        );
        assert!(serde_json::from_str::<BuyerId>("\"BUY-1\"").is_err());
    }
}
