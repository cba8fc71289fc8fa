//! Query strings of list and get calls: RQL conditions, `limit`, `offset`, `order` and
//! `select`, and the evaluation of a list with the data set's indexes.
//!
//! The RQL expression is the query string itself (`?eq(status,Active)&limit=20`), not
//! a parameter. Several expressions separated by `&` must all match. Each part may be
//! raw or percent-encoded; `+` stays a plus sign, so `select=+audit` works unencoded.

use std::collections::HashSet;

use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::config::Behaviour;
use super::dataset::DataSet;
use super::problem::ValidationErrors;
use super::render::{RenderOptions, Resource, apply_exclusions};
use super::rql::{self, CompareOp, Expr, Field, Operand, compare_values, lookup};

/// A parsed list query.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    /// Conditions that must all match.
    pub conditions: Vec<Expr>,
    pub limit: usize,
    pub offset: usize,
    pub order: Vec<OrderKey>,
    pub select: Select,
}

/// One `order` key.
#[derive(Debug, Clone)]
pub(crate) struct OrderKey {
    pub field: Field,
    pub descending: bool,
}

/// The `select` parameter: `+audit` (or `audit`) adds the audit trail, `-field` removes a
/// field, and references such as `buyer` are accepted and already expanded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Select {
    pub include_audit: bool,
    pub excluded: Vec<Field>,
}

/// A page of a list response.
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
}

/// Splits a raw query string at `&` signs outside quotes and parentheses.
fn split_parts(raw: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (position, c) in raw.char_indices() {
        match (quote, c) {
            (Some(open), _) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, '&') if depth <= 0 => {
                parts.push(&raw[start..position]);
                start = position + 1;
            }
            _ => {}
        }
    }
    parts.push(&raw[start..]);
    parts.into_iter().filter(|part| !part.is_empty()).collect()
}

fn decode(part: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "The percent-encoded text is not valid UTF-8.".to_owned())
}

/// Parses the query string of a list call for the object kind `R`.
pub(crate) fn parse_list<R: Resource>(
    raw: Option<&str>,
    behaviour: &Behaviour,
) -> Result<ListQuery, ValidationErrors> {
    let mut errors = ValidationErrors::new();
    let mut query = ListQuery {
        conditions: Vec::new(),
        limit: behaviour.default_page_limit as usize,
        offset: 0,
        order: Vec::new(),
        select: Select::default(),
    };
    let mut condition_parts = Vec::new();

    for part in split_parts(raw.unwrap_or("")) {
        let text = match decode(part) {
            Ok(text) => text,
            Err(message) => {
                errors.entry(part.to_owned()).or_default().push(message);
                continue;
            }
        };
        let (key, value) = text.split_once('=').unwrap_or((&text, ""));
        let outcome = match key {
            "limit" => parse_count(value, "limit").map(|limit| {
                query.limit = limit.min(behaviour.max_page_limit as usize);
            }),
            "offset" => parse_count(value, "offset").map(|offset| query.offset = offset),
            "order" => parse_order(value).map(|order| query.order = order),
            "select" => {
                query.select = parse_select(value);
                Ok(())
            }
            _ => {
                condition_parts.push(text.clone());
                parse_condition(&text).map(|expr| flatten_and(expr, &mut query.conditions))
            }
        };
        if let Err(message) = outcome {
            let name = if matches!(key, "limit" | "offset" | "order") {
                key.to_owned()
            } else {
                text.clone()
            };
            errors.entry(name).or_default().push(message);
        }
    }

    if errors.is_empty() {
        check_fields::<R>(&query, &condition_parts, &mut errors);
    }
    if errors.is_empty() {
        Ok(query)
    } else {
        Err(errors)
    }
}

/// Parses only `select` from the query string of a get or an action.
pub(crate) fn parse_select_only(raw: Option<&str>) -> Select {
    split_parts(raw.unwrap_or(""))
        .into_iter()
        .filter_map(|part| decode(part).ok())
        .filter_map(|text| text.strip_prefix("select=").map(parse_select))
        .next_back()
        .unwrap_or_default()
}

fn parse_count(value: &str, name: &str) -> Result<usize, String> {
    value.trim().parse::<usize>().map_err(|_| {
        format!("The value `{value}` is not valid for `{name}`; use a whole number of 0 or more.")
    })
}

fn parse_order(value: &str) -> Result<Vec<OrderKey>, String> {
    value
        .split(',')
        .map(|key| {
            let (descending, name) = match key.trim() {
                name if name.starts_with('-') => (true, &name[1..]),
                name if name.starts_with('+') => (false, &name[1..]),
                name => (false, name),
            };
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(format!(
                    "`{key}` is not a valid order key; write `field`, `+field` or `-field`."
                ));
            }
            Ok(OrderKey {
                field: Field {
                    path: name.split('.').map(str::to_owned).collect(),
                },
                descending,
            })
        })
        .collect()
}

fn parse_select(value: &str) -> Select {
    let mut select = Select::default();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        if let Some(name) = item.strip_prefix('-') {
            if name == "audit" {
                select.include_audit = false;
            } else if !name.is_empty() && name != "*" {
                select.excluded.push(Field {
                    path: name.split('.').map(str::to_owned).collect(),
                });
            }
        } else if item.trim_start_matches('+').split('.').next() == Some("audit") {
            select.include_audit = true;
        }
    }
    select
}

fn parse_condition(text: &str) -> Result<Expr, String> {
    // `rql=eq(status,Active)` reads as the shortcut `rql = "eq(status,Active)"`, which
    // the platform rejects with this message too.
    if let Some((field, value)) = text.split_once('=')
        && !field.contains('(')
        && value.contains('(')
        && !value.starts_with("null(")
        && !value.starts_with("empty(")
    {
        return Err(format!(
            "Invalid equals shortcut `{field}={value}`. Send the RQL expression itself as the query string, \
             for example `?eq(status,Active)`."
        ));
    }
    rql::parse(text).map_err(|error| error.to_string())
}

fn flatten_and(expr: Expr, into: &mut Vec<Expr>) {
    match expr {
        Expr::And(operands) => {
            for operand in operands {
                flatten_and(operand, into);
            }
        }
        other => into.push(other),
    }
}

fn check_fields<R: Resource>(
    query: &ListQuery,
    condition_parts: &[String],
    errors: &mut ValidationErrors,
) {
    let key = condition_parts.join("&");
    let mut check = |field: &Field, what: &str| {
        let root = field.path[0].as_str();
        let message = if !R::FIELDS.contains(&root) {
            format!("Unknown field `{field}` for {} objects.", R::KIND.name())
        } else if root == "audit" && !query.select.include_audit {
            format!("{what} on `{field}` needs `select=audit`.")
        } else {
            return;
        };
        let name = if what == "Ordering" {
            "order".to_owned()
        } else {
            key.clone()
        };
        errors.entry(name).or_default().push(message);
    };
    for condition in &query.conditions {
        condition.visit_fields(&mut |field| check(field, "Filtering"));
    }
    for order in &query.order {
        check(&order.field, "Ordering");
    }
}

/// A condition on `status` that is checked on the stored object, without rendering it.
struct StatusFilter<'a> {
    values: Vec<&'a str>,
    negated: bool,
}

impl<'a> StatusFilter<'a> {
    fn from_condition(condition: &'a Expr) -> Option<Self> {
        let is_status = |field: &Field| field.path.len() == 1 && field.path[0] == "status";
        let texts = |values: &'a [Operand]| -> Option<Vec<&'a str>> {
            values
                .iter()
                .map(|value| match value {
                    Operand::Text(text) => Some(text.as_str()),
                    _ => None,
                })
                .collect()
        };
        match condition {
            Expr::Compare {
                op: op @ (CompareOp::Eq | CompareOp::Ne),
                field,
                value: Operand::Text(text),
            } if is_status(field) => Some(Self {
                values: vec![text.as_str()],
                negated: *op == CompareOp::Ne,
            }),
            Expr::In {
                field,
                values,
                negated,
            } if is_status(field) => Some(Self {
                values: texts(values)?,
                negated: *negated,
            }),
            _ => None,
        }
    }

    fn accepts(&self, status: &str) -> bool {
        self.values.contains(&status) != self.negated
    }
}

/// Returns the ids that an index gives for a condition, in id order.
fn index_lookup<'a, R: Resource>(data: &'a DataSet, condition: &'a Expr) -> Option<Vec<&'a str>> {
    let equality = |expr: &'a Expr| match expr {
        Expr::Compare {
            op: CompareOp::Eq,
            field,
            value: Operand::Text(text),
        } => Some((field.to_string(), text.as_str())),
        _ => None,
    };
    if let Some((field, value)) = equality(condition) {
        if field == "id" {
            return Some(
                R::collection(data)
                    .get(value)
                    .map(|object| vec![object.id()])
                    .unwrap_or_default(),
            );
        }
        return R::indexed(data, &field, value);
    }
    if let Expr::Any { field, condition } = condition
        && let Some((inner, value)) = equality(condition)
    {
        return R::indexed(data, &format!("{field}.{inner}"), value);
    }
    if let Expr::In {
        field,
        values,
        negated: false,
    } = condition
        && field.path == ["id"]
    {
        let collection = R::collection(data);
        let mut ids: Vec<&str> = values
            .iter()
            .filter_map(|value| match value {
                Operand::Text(text) => collection.get(text).map(|object| object.id()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        return Some(ids);
    }
    None
}

fn intersect<'a>(current: Option<Vec<&'a str>>, next: Vec<&'a str>) -> Vec<&'a str> {
    match current {
        None => next,
        Some(current) => {
            let keep: HashSet<&str> = next.into_iter().collect();
            current.into_iter().filter(|id| keep.contains(id)).collect()
        }
    }
}

/// Runs a list query. Conditions that an index resolves narrow the candidates first,
/// so listing the links or buyers of one seller never renders the whole collection.
pub(crate) fn run<R: Resource>(data: &DataSet, query: &ListQuery, options: &RenderOptions) -> Page {
    let mut candidates: Option<Vec<&str>> = None;
    let mut status_filters = Vec::new();
    let mut residual = Vec::new();
    for condition in &query.conditions {
        if let Some(ids) = index_lookup::<R>(data, condition) {
            candidates = Some(intersect(candidates, ids));
        } else if let Some(filter) = StatusFilter::from_condition(condition) {
            status_filters.push(filter);
        } else {
            residual.push(condition);
        }
    }

    let collection = R::collection(data);
    let ids = candidates.unwrap_or_else(|| collection.ids().collect());
    let objects: Vec<&R> = ids
        .into_iter()
        .filter_map(|id| collection.get(id))
        .filter(|object| {
            status_filters
                .iter()
                .all(|filter| filter.accepts(object.status_name()))
        })
        .collect();

    let render = |object: &R| {
        let mut value = object.render(data, options);
        apply_exclusions(&mut value, &options.excluded);
        value
    };
    if residual.is_empty() && query.order.is_empty() {
        let items = objects
            .iter()
            .skip(query.offset)
            .take(query.limit)
            .map(|object| render(object))
            .collect();
        return Page {
            items,
            total: objects.len(),
            limit: query.limit,
            offset: query.offset,
        };
    }

    let mut matched: Vec<Value> = objects
        .into_iter()
        .map(|object| object.render(data, options))
        .filter(|value| residual.iter().all(|condition| condition.matches(value)))
        .collect();
    if !query.order.is_empty() {
        // A stable sort keeps id order among equal keys.
        matched.sort_by(|left, right| {
            query
                .order
                .iter()
                .map(|key| {
                    let ordering = compare_values(
                        lookup(left, &key.field.path),
                        lookup(right, &key.field.path),
                    );
                    if key.descending {
                        ordering.reverse()
                    } else {
                        ordering
                    }
                })
                .find(|ordering| ordering.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    let total = matched.len();
    let items = matched
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|mut value| {
            apply_exclusions(&mut value, &options.excluded);
            value
        })
        .collect();
    Page {
        items,
        total,
        limit: query.limit,
        offset: query.offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_quoted_ampersands() {
        assert_eq!(
            split_parts(r#"eq(name,"A&B")&limit=2"#),
            [r#"eq(name,"A&B")"#, "limit=2"]
        );
        assert_eq!(split_parts("a&&b"), ["a", "b"]);
    }

    #[test]
    fn select_adds_audit_and_removes_fields() {
        let select = parse_select("+audit,-address,-contact.email,buyer");
        assert!(select.include_audit);
        let removed: Vec<String> = select.excluded.iter().map(ToString::to_string).collect();
        assert_eq!(removed, ["address", "contact.email"]);
    }

    #[test]
    fn order_keys_parse_direction() {
        let keys = parse_order("-name,+id,status").unwrap();
        let described: Vec<(String, bool)> = keys
            .iter()
            .map(|key| (key.field.to_string(), key.descending))
            .collect();
        assert_eq!(
            described,
            [
                ("name".into(), true),
                ("id".into(), false),
                ("status".into(), false)
            ]
        );
        assert!(parse_order("-").is_err());
    }
}
