//! Building RQL filters for the platform's list endpoints.
//!
//! Ids are always double-quoted, because the platform may match nothing for an
//! unquoted id. The finished expression is percent-encoded like a URL component:
//! everything but the RFC 3986 unreserved characters is escaped.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters escaped in a query component: all but `A-Z a-z 0-9 - . _ ~`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An RQL expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rql(String);

impl Rql {
    /// `eq(field,"value")`.
    pub fn eq(field: &str, value: &str) -> Rql {
        Rql(format!("eq({field},{})", quote(value)))
    }

    /// `and(a,b,…)`.
    pub fn and(parts: impl IntoIterator<Item = Rql>) -> Rql {
        Rql(format!("and({})", join(parts)))
    }

    /// `any(collection,condition)`, true when one element of the collection matches.
    pub fn any(collection: &str, condition: Rql) -> Rql {
        Rql(format!("any({collection},{})", condition.0))
    }

    /// The expression as written, for logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The expression percent-encoded for a query string.
    pub fn encoded(&self) -> String {
        utf8_percent_encode(&self.0, COMPONENT).to_string()
    }
}

fn join(parts: impl IntoIterator<Item = Rql>) -> String {
    parts
        .into_iter()
        .map(|part| part.0)
        .collect::<Vec<_>>()
        .join(",")
}

/// Double-quotes a value, escaping a backslash or quote inside it.
fn quote(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_query_quotes_ids() {
        let query = Rql::and([
            Rql::eq("buyer.id", "BUY-0808-7934"),
            Rql::eq("seller.id", "SEL-1968-2576"),
        ]);
        assert_eq!(
            query.as_str(),
            r#"and(eq(buyer.id,"BUY-0808-7934"),eq(seller.id,"SEL-1968-2576"))"#
        );
    }

    #[test]
    fn seller_buyers_query() {
        let query = Rql::any("sellers", Rql::eq("id", "SEL-1968-2576"));
        assert_eq!(query.as_str(), r#"any(sellers,eq(id,"SEL-1968-2576"))"#);
    }

    #[test]
    fn encoding_escapes_reserved_characters() {
        let query = Rql::eq("buyer.id", "BUY-0808-7934");
        assert_eq!(query.encoded(), "eq%28buyer.id%2C%22BUY-0808-7934%22%29");
    }

    #[test]
    fn quotes_inside_values_are_escaped() {
        assert_eq!(Rql::eq("name", "a\"b").as_str(), r#"eq(name,"a\"b")"#);
    }
}
