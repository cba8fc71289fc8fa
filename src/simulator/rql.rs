//! The Resource Query Language (RQL) subset of the platform's list endpoints.
//!
//! An expression is an operator call such as `and(eq(status,Active),ilike(name,*corp*))`
//! or the shortcut `field=value`. Values are double- or single-quoted strings (a
//! backslash escapes the next character, so `\*` is a literal asterisk in a pattern)
//! or bare text up to the next `,` or `)`. `null()` and `empty()` are the null and
//! empty values. Expressions are evaluated against an object's JSON response, so every
//! field of the response can be filtered. A dotted path that crosses an array matches
//! when any element matches.
//!
//! Operators: `eq`, `ne`, `gt`, `ge`, `lt`, `le`, `like`, `ilike`, `in`, `out`, `and`,
//! `or`, `not`, `any`, `all`.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

/// A parsed RQL expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        op: CompareOp,
        field: Field,
        value: Operand,
    },
    In {
        field: Field,
        values: Vec<Operand>,
        negated: bool,
    },
    Like {
        field: Field,
        pattern: Pattern,
        case_insensitive: bool,
    },
    /// `any(field,condition)`: some element of the array `field` matches `condition`.
    Any {
        field: Field,
        condition: Box<Expr>,
    },
    /// `all(field,condition)`: every element of the array `field` matches `condition`.
    All {
        field: Field,
        condition: Box<Expr>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A dotted field path such as `buyer.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub path: Vec<String>,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path.join("."))
    }
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Text(String),
    /// `null()`: the field is null or absent.
    Null,
    /// `empty()`: the field is an empty string, array or object.
    Empty,
}

/// A `like`/`ilike` pattern: literal text and `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pieces: Vec<PatternPiece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPiece {
    Literal(String),
    Wildcard,
}

/// A syntax error, with the position (in characters) where parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct RqlError {
    pub message: String,
    pub position: usize,
}

/// Parses one expression: an operator call or the shortcut `field=value`. The text
/// must already be percent-decoded.
pub fn parse(text: &str) -> Result<Expr, RqlError> {
    let mut parser = Parser::new(text);
    let expr = parser.expression()?;
    parser.skip_spaces();
    if !parser.at_end() {
        return Err(parser.error(format!(
            "Unexpected `{}` after the end of the expression.",
            parser.rest()
        )));
    }
    Ok(expr)
}

struct Parser {
    chars: Vec<char>,
    position: usize,
}

/// A value as written, before it is read as text or as a pattern.
enum RawValue {
    /// The characters with a flag for each that was escaped with a backslash.
    Chars(Vec<(char, bool)>),
    Null,
    Empty,
}

impl Parser {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            position: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.position >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn rest(&self) -> String {
        self.chars[self.position.min(self.chars.len())..]
            .iter()
            .collect()
    }

    fn error(&self, message: impl Into<String>) -> RqlError {
        RqlError {
            message: message.into(),
            position: self.position,
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c == ' ') {
            self.position += 1;
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), RqlError> {
        self.skip_spaces();
        match self.peek() {
            Some(found) if found == wanted => {
                self.position += 1;
                Ok(())
            }
            Some(found) => Err(self.error(format!("Expected `{wanted}` but found `{found}`."))),
            None => Err(self.error(format!("Expected `{wanted}` but the expression ended."))),
        }
    }

    fn name(&mut self) -> String {
        let start = self.position;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
        {
            self.position += 1;
        }
        self.chars[start..self.position].iter().collect()
    }

    fn expression(&mut self) -> Result<Expr, RqlError> {
        self.skip_spaces();
        let start = self.position;
        let name = self.name();
        if name.is_empty() {
            return Err(match self.peek() {
                Some(found) => self.error(format!(
                    "Expected an operator or a field but found `{found}`."
                )),
                None => self.error("The expression is empty."),
            });
        }
        match self.peek() {
            Some('(') => {
                self.position += 1;
                self.operator(&name, start)
            }
            Some('=') => {
                self.position += 1;
                let field = field_from_name(&name).map_err(|message| RqlError {
                    message,
                    position: start,
                })?;
                let value = self.operand()?;
                Ok(Expr::Compare {
                    op: CompareOp::Eq,
                    field,
                    value,
                })
            }
            _ => Err(self.error(format!(
                "Expected `(` after the operator `{name}` or `=` after the field `{name}`."
            ))),
        }
    }

    fn operator(&mut self, name: &str, start: usize) -> Result<Expr, RqlError> {
        let expr = match name {
            "and" | "or" => {
                let mut operands = vec![self.expression()?];
                while self.comma_follows() {
                    operands.push(self.expression()?);
                }
                if name == "and" {
                    Expr::And(operands)
                } else {
                    Expr::Or(operands)
                }
            }
            "not" => Expr::Not(Box::new(self.expression()?)),
            "eq" | "ne" | "gt" | "ge" | "lt" | "le" => {
                let field = self.field()?;
                self.expect(',')?;
                let value = self.operand()?;
                let op = match name {
                    "eq" => CompareOp::Eq,
                    "ne" => CompareOp::Ne,
                    "gt" => CompareOp::Gt,
                    "ge" => CompareOp::Ge,
                    "lt" => CompareOp::Lt,
                    _ => CompareOp::Le,
                };
                Expr::Compare { op, field, value }
            }
            "like" | "ilike" => {
                let field = self.field()?;
                self.expect(',')?;
                let pattern = match self.raw_value()? {
                    RawValue::Chars(chars) => Pattern::from_chars(&chars),
                    _ => return Err(self.error(format!("`{name}` needs a text pattern."))),
                };
                Expr::Like {
                    field,
                    pattern,
                    case_insensitive: name == "ilike",
                }
            }
            "in" | "out" => {
                let field = self.field()?;
                self.expect(',')?;
                let values = self.operand_list()?;
                Expr::In {
                    field,
                    values,
                    negated: name == "out",
                }
            }
            "any" | "all" => {
                let field = self.field()?;
                self.expect(',')?;
                let condition = Box::new(self.expression()?);
                if name == "any" {
                    Expr::Any { field, condition }
                } else {
                    Expr::All { field, condition }
                }
            }
            _ => {
                return Err(RqlError {
                    message: format!("Unknown operator `{name}`."),
                    position: start,
                });
            }
        };
        self.expect(')')?;
        Ok(expr)
    }

    fn comma_follows(&mut self) -> bool {
        self.skip_spaces();
        if self.peek() == Some(',') {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn field(&mut self) -> Result<Field, RqlError> {
        self.skip_spaces();
        let start = self.position;
        let name = self.name();
        field_from_name(&name).map_err(|message| RqlError {
            message,
            position: start,
        })
    }

    /// Reads the values of `in`/`out`: `(a,b,c)` or, as some clients write it, `a,b,c`.
    fn operand_list(&mut self) -> Result<Vec<Operand>, RqlError> {
        self.skip_spaces();
        let parenthesized = self.peek() == Some('(');
        if parenthesized {
            self.position += 1;
        }
        let mut values = vec![self.operand()?];
        while self.comma_follows() {
            values.push(self.operand()?);
        }
        if parenthesized {
            self.expect(')')?;
        }
        Ok(values)
    }

    fn operand(&mut self) -> Result<Operand, RqlError> {
        Ok(match self.raw_value()? {
            RawValue::Chars(chars) => Operand::Text(chars.into_iter().map(|(c, _)| c).collect()),
            RawValue::Null => Operand::Null,
            RawValue::Empty => Operand::Empty,
        })
    }

    fn raw_value(&mut self) -> Result<RawValue, RqlError> {
        self.skip_spaces();
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                self.position += 1;
                let mut chars = Vec::new();
                loop {
                    match self.peek() {
                        None => {
                            return Err(
                                self.error(format!("The string is missing its closing `{quote}`."))
                            );
                        }
                        Some('\\') => {
                            self.position += 1;
                            let escaped = self.peek().ok_or_else(|| {
                                self.error("The string ends with a lone backslash.")
                            })?;
                            chars.push((escaped, true));
                            self.position += 1;
                        }
                        Some(c) if c == quote => {
                            self.position += 1;
                            return Ok(RawValue::Chars(chars));
                        }
                        Some(c) => {
                            chars.push((c, false));
                            self.position += 1;
                        }
                    }
                }
            }
            _ => self.bare_value(),
        }
    }

    fn bare_value(&mut self) -> Result<RawValue, RqlError> {
        let start = self.position;
        let mut chars = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                ',' | ')' => break,
                '(' => {
                    let word: String = chars.iter().map(|(c, _)| *c).collect();
                    self.position += 1;
                    self.expect(')')?;
                    return match word.as_str() {
                        "null" => Ok(RawValue::Null),
                        "empty" => Ok(RawValue::Empty),
                        _ => Err(RqlError {
                            message: format!(
                                "Unknown value function `{word}()`; use null() or empty(), or quote the value."
                            ),
                            position: start,
                        }),
                    };
                }
                '\\' => {
                    self.position += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("The value ends with a lone backslash."))?;
                    chars.push((escaped, true));
                    self.position += 1;
                }
                _ => {
                    chars.push((c, false));
                    self.position += 1;
                }
            }
        }
        if chars.is_empty() {
            return Err(self.error("Expected a value."));
        }
        Ok(RawValue::Chars(chars))
    }
}

fn field_from_name(name: &str) -> Result<Field, String> {
    if name.is_empty() {
        return Err("Expected a field name.".into());
    }
    let path: Vec<String> = name.split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("`{name}` is not a valid field path."));
    }
    Ok(Field { path })
}

impl Pattern {
    /// Builds a glob pattern: `*` matches any run of characters, `/` included, and
    /// every other character matches itself.
    pub fn glob(text: &str) -> Self {
        let chars: Vec<(char, bool)> = text.chars().map(|c| (c, false)).collect();
        Self::from_chars(&chars)
    }

    fn from_chars(chars: &[(char, bool)]) -> Self {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        for &(c, escaped) in chars {
            if c == '*' && !escaped {
                if !literal.is_empty() {
                    pieces.push(PatternPiece::Literal(std::mem::take(&mut literal)));
                }
                if pieces.last() != Some(&PatternPiece::Wildcard) {
                    pieces.push(PatternPiece::Wildcard);
                }
            } else {
                literal.push(c);
            }
        }
        if !literal.is_empty() {
            pieces.push(PatternPiece::Literal(literal));
        }
        Self { pieces }
    }

    /// Reports whether the whole of `text` matches the pattern.
    pub fn matches(&self, text: &str, case_insensitive: bool) -> bool {
        if case_insensitive {
            let lowered = Self {
                pieces: self
                    .pieces
                    .iter()
                    .map(|piece| match piece {
                        PatternPiece::Literal(literal) => {
                            PatternPiece::Literal(literal.to_lowercase())
                        }
                        PatternPiece::Wildcard => PatternPiece::Wildcard,
                    })
                    .collect(),
            };
            return lowered.matches_exact(&text.to_lowercase());
        }
        self.matches_exact(text)
    }

    fn matches_exact(&self, text: &str) -> bool {
        let mut rest = text;
        let mut floating = false;
        let last = self.pieces.len().saturating_sub(1);
        for (position, piece) in self.pieces.iter().enumerate() {
            match piece {
                PatternPiece::Wildcard => floating = true,
                PatternPiece::Literal(literal) => {
                    if !floating {
                        let Some(after) = rest.strip_prefix(literal.as_str()) else {
                            return false;
                        };
                        rest = after;
                    } else if position == last {
                        // The final literal must end the text.
                        return rest.ends_with(literal.as_str());
                    } else {
                        let Some(found) = rest.find(literal.as_str()) else {
                            return false;
                        };
                        rest = &rest[found + literal.len()..];
                    }
                    floating = false;
                }
            }
        }
        floating || rest.is_empty()
    }
}

impl Expr {
    /// Reports whether a JSON object matches the expression.
    pub fn matches(&self, record: &Value) -> bool {
        match self {
            Expr::And(operands) => operands.iter().all(|operand| operand.matches(record)),
            Expr::Or(operands) => operands.iter().any(|operand| operand.matches(record)),
            Expr::Not(operand) => !operand.matches(record),
            Expr::Compare { op, field, value } => {
                let found = resolve(record, &field.path);
                match op {
                    CompareOp::Eq => equals_any(&found, value),
                    CompareOp::Ne => !equals_any(&found, value),
                    _ => scalars(&found).any(|candidate| ordered(candidate, value, *op)),
                }
            }
            Expr::In {
                field,
                values,
                negated,
            } => {
                let found = resolve(record, &field.path);
                let hit = values.iter().any(|value| equals_any(&found, value));
                hit != *negated
            }
            Expr::Like {
                field,
                pattern,
                case_insensitive,
            } => scalars(&resolve(record, &field.path))
                .filter_map(|value| value.as_str())
                .any(|text| pattern.matches(text, *case_insensitive)),
            Expr::Any { field, condition } => {
                elements(record, &field.path).any(|element| condition.matches(element))
            }
            Expr::All { field, condition } => {
                elements(record, &field.path).all(|element| condition.matches(element))
            }
        }
    }

    /// Calls `visit` with each field the expression reads at the top level. Fields
    /// inside `any`/`all` conditions are relative to the array elements and skipped.
    pub fn visit_fields<'a>(&'a self, visit: &mut impl FnMut(&'a Field)) {
        match self {
            Expr::And(operands) | Expr::Or(operands) => {
                for operand in operands {
                    operand.visit_fields(visit);
                }
            }
            Expr::Not(operand) => operand.visit_fields(visit),
            Expr::Compare { field, .. }
            | Expr::In { field, .. }
            | Expr::Like { field, .. }
            | Expr::Any { field, .. }
            | Expr::All { field, .. } => visit(field),
        }
    }
}

/// Collects the values at a dotted path; crossing an array collects from every element.
fn resolve<'a>(value: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut found = Vec::new();
    collect(value, path, &mut found);
    found
}

fn collect<'a>(value: &'a Value, path: &[String], found: &mut Vec<&'a Value>) {
    let Some((head, rest)) = path.split_first() else {
        found.push(value);
        return;
    };
    match value {
        Value::Array(items) => {
            for item in items {
                collect(item, path, found);
            }
        }
        _ => {
            if let Some(child) = value.get(head.as_str()) {
                collect(child, rest, found);
            }
        }
    }
}

/// Returns the scalars of the found values, reading one level into arrays, so that
/// `eq(tags,x)` matches an array `tags` that contains `x`.
fn scalars<'a>(found: &[&'a Value]) -> impl Iterator<Item = &'a Value> {
    found.iter().flat_map(|value| match value {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        other => vec![*other],
    })
}

fn elements<'a>(record: &'a Value, path: &[String]) -> impl Iterator<Item = &'a Value> {
    resolve(record, path)
        .into_iter()
        .flat_map(|value| match value {
            Value::Array(items) => items.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
}

fn equals_any(found: &[&Value], operand: &Operand) -> bool {
    match operand {
        Operand::Null => found.is_empty() || found.iter().any(|value| value.is_null()),
        Operand::Empty => found.iter().any(|value| match value {
            Value::String(text) => text.is_empty(),
            Value::Array(items) => items.is_empty(),
            Value::Object(fields) => fields.is_empty(),
            _ => false,
        }),
        Operand::Text(text) => scalars(found).any(|value| scalar_equals(value, text)),
    }
}

fn scalar_equals(value: &Value, text: &str) -> bool {
    match value {
        Value::String(string) => string == text,
        Value::Number(number) => match (number.as_f64(), text.parse::<f64>()) {
            (Some(left), Ok(right)) => left == right,
            _ => number.to_string() == text,
        },
        Value::Bool(flag) => text.eq_ignore_ascii_case(if *flag { "true" } else { "false" }),
        _ => false,
    }
}

fn ordered(value: &Value, operand: &Operand, op: CompareOp) -> bool {
    let Operand::Text(text) = operand else {
        return false;
    };
    let ordering = match value {
        Value::Number(number) => match (number.as_f64(), text.parse::<f64>()) {
            (Some(left), Ok(right)) => left.partial_cmp(&right),
            _ => None,
        },
        Value::String(string) => Some(string.as_str().cmp(text.as_str())),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Eq | CompareOp::Ne => unreachable!("equality is handled by equals_any"),
    }
}

/// Orders two optional JSON values for `order=`: missing and null first, then numbers,
/// then strings and everything else by its JSON text.
pub fn compare_values(left: Option<&Value>, right: Option<&Value>) -> Ordering {
    let rank = |value: Option<&Value>| match value {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(_)) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(_) => 4,
    };
    match (left, right) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(a)), Some(Value::String(b))) => a.cmp(b),
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a.cmp(b),
        (Some(a), Some(b)) if rank(left) == 4 && rank(right) == 4 => {
            a.to_string().cmp(&b.to_string())
        }
        _ => rank(left).cmp(&rank(right)),
    }
}

/// Returns the first value at a dotted path, for sorting.
pub fn lookup<'a>(record: &'a Value, path: &[String]) -> Option<&'a Value> {
    resolve(record, path).into_iter().next()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(path: &str) -> Field {
        Field {
            path: path.split('.').map(str::to_owned).collect(),
        }
    }

    fn text(value: &str) -> Operand {
        Operand::Text(value.to_owned())
    }

    fn buyer() -> Value {
        json!({
            "id": "BUY-1234-5678",
            "name": "Northwind Logistics GmbH",
            "status": "Active",
            "revision": 3,
            "address": {"country": "DE", "city": "Berlin"},
            "sellers": [
                {"id": "SEL-1111-2222", "externalId": "DE"},
                {"id": "SEL-3333-4444", "externalId": "AR"}
            ]
        })
    }

    #[test]
    fn eq_with_quoted_and_bare_values() {
        assert_eq!(
            parse(r#"eq(buyer.id,"BUY-1234-5678")"#).unwrap(),
            Expr::Compare {
                op: CompareOp::Eq,
                field: field("buyer.id"),
                value: text("BUY-1234-5678")
            }
        );
        assert_eq!(
            parse("eq(status,Active)").unwrap(),
            Expr::Compare {
                op: CompareOp::Eq,
                field: field("status"),
                value: text("Active")
            }
        );
        assert_eq!(
            parse("eq(name,'A, B')").unwrap(),
            Expr::Compare {
                op: CompareOp::Eq,
                field: field("name"),
                value: text("A, B")
            }
        );
    }

    #[test]
    fn shortcut_is_eq() {
        assert_eq!(
            parse("status=Active").unwrap(),
            parse("eq(status,Active)").unwrap()
        );
    }

    #[test]
    fn nested_logic_parses() {
        let expr =
            parse(r#"and(eq(buyer.id,"BUY-1"),or(eq(status,Active),not(eq(status,Blocked))))"#)
                .unwrap();
        let Expr::And(operands) = expr else {
            panic!("expected and")
        };
        assert_eq!(operands.len(), 2);
        assert!(matches!(operands[1], Expr::Or(_)));
    }

    #[test]
    fn in_accepts_list_and_bare_values() {
        let expected = Expr::In {
            field: field("status"),
            values: vec![text("Active"), text("Enabled")],
            negated: false,
        };
        assert_eq!(parse("in(status,(Active,Enabled))").unwrap(), expected);
        assert_eq!(parse("in(status,Active,Enabled)").unwrap(), expected);
    }

    #[test]
    fn any_accepts_expression_and_shortcut() {
        let record = buyer();
        assert!(
            parse(r#"any(sellers,eq(id,"SEL-3333-4444"))"#)
                .unwrap()
                .matches(&record)
        );
        assert!(
            parse("any(sellers,id=SEL-1111-2222)")
                .unwrap()
                .matches(&record)
        );
        assert!(
            !parse("any(sellers,eq(id,SEL-0000-0000))")
                .unwrap()
                .matches(&record)
        );
    }

    #[test]
    fn all_requires_every_element() {
        let record = buyer();
        assert!(
            parse("all(sellers,ilike(id,SEL-*))")
                .unwrap()
                .matches(&record)
        );
        assert!(
            !parse("all(sellers,eq(externalId,DE))")
                .unwrap()
                .matches(&record)
        );
    }

    #[test]
    fn ilike_wildcards_ignore_case() {
        let record = buyer();
        assert!(parse("ilike(name,*LOGISTICS*)").unwrap().matches(&record));
        assert!(parse("ilike(name,northwind*)").unwrap().matches(&record));
        assert!(parse("ilike(name,*gmbh)").unwrap().matches(&record));
        assert!(!parse("ilike(name,logistics*)").unwrap().matches(&record));
        assert!(!parse("like(name,*LOGISTICS*)").unwrap().matches(&record));
        assert!(parse("like(name,*Logistics*)").unwrap().matches(&record));
    }

    #[test]
    fn escaped_asterisk_is_literal() {
        let record = json!({"name": "Star*Corp"});
        assert!(parse(r#"ilike(name,"star\**")"#).unwrap().matches(&record));
        assert!(!parse(r#"ilike(name,"star\*")"#).unwrap().matches(&record));
    }

    #[test]
    fn pattern_wildcard_cases() {
        let pattern =
            |text: &str| Pattern::from_chars(&text.chars().map(|c| (c, false)).collect::<Vec<_>>());
        assert!(pattern("*").matches("", false));
        assert!(pattern("a*a").matches("aba", false));
        assert!(pattern("a*a").matches("aa", false));
        assert!(!pattern("a*a").matches("a", false));
        assert!(pattern("*ab*cd").matches("xxabyycd", false));
        assert!(!pattern("ab").matches("abc", false));
    }

    #[test]
    fn comparisons_on_numbers_and_strings() {
        let record = buyer();
        assert!(parse("gt(revision,2)").unwrap().matches(&record));
        assert!(parse("le(revision,3)").unwrap().matches(&record));
        assert!(!parse("lt(revision,3)").unwrap().matches(&record));
        assert!(parse("eq(revision,3)").unwrap().matches(&record));
        assert!(parse("ge(name,Northwind)").unwrap().matches(&record));
    }

    #[test]
    fn ne_and_out_negate() {
        let record = buyer();
        assert!(parse("ne(status,Disabled)").unwrap().matches(&record));
        assert!(!parse("ne(status,Active)").unwrap().matches(&record));
        assert!(
            parse("out(status,(Disabled,Deleted))")
                .unwrap()
                .matches(&record)
        );
    }

    #[test]
    fn null_and_empty_values() {
        let record = json!({"note": "", "tags": []});
        assert!(parse("eq(icon,null())").unwrap().matches(&record));
        assert!(!parse("eq(note,null())").unwrap().matches(&record));
        assert!(parse("eq(note,empty())").unwrap().matches(&record));
        assert!(parse("eq(tags,empty())").unwrap().matches(&record));
        assert!(parse("ne(note,null())").unwrap().matches(&record));
    }

    #[test]
    fn dotted_path_reads_nested_objects() {
        let record = buyer();
        assert!(parse("eq(address.country,DE)").unwrap().matches(&record));
        assert!(parse("eq(sellers.externalId,AR)").unwrap().matches(&record));
        assert!(!parse("eq(address.country,AR)").unwrap().matches(&record));
    }

    #[test]
    fn malformed_expressions_fail() {
        let cases = [
            ("", "The expression is empty."),
            ("eq(status,Active", "Expected `)` but the expression ended."),
            ("eq(status)", "Expected `,` but found `)`."),
            ("eq(,Active)", "Expected a field name."),
            ("foo(status,Active)", "Unknown operator `foo`."),
            (
                "eq(status,\"Active)",
                "The string is missing its closing `\"`.",
            ),
            (
                "eq(status,Active))",
                "Unexpected `)` after the end of the expression.",
            ),
            (
                "status",
                "Expected `(` after the operator `status` or `=` after the field `status`.",
            ),
            ("eq(status,)", "Expected a value."),
            (
                "eq(status,maybe())",
                "Unknown value function `maybe()`; use null() or empty(), or quote the value.",
            ),
            ("and()", "Expected an operator or a field but found `)`."),
            ("eq(a..b,1)", "`a..b` is not a valid field path."),
        ];
        for (query, message) in cases {
            let error = parse(query).expect_err(query);
            assert_eq!(error.message, message, "query `{query}`");
        }
    }

    #[test]
    fn visit_fields_skips_any_conditions() {
        let expr = parse("and(eq(status,Active),any(sellers,eq(id,SEL-1)))").unwrap();
        let mut seen = Vec::new();
        expr.visit_fields(&mut |field| seen.push(field.to_string()));
        assert_eq!(seen, ["status", "sellers"]);
    }

    #[test]
    fn compare_values_orders_missing_first() {
        let a = json!("a");
        let b = json!("b");
        let one = json!(1);
        assert_eq!(compare_values(None, Some(&a)), Ordering::Less);
        assert_eq!(compare_values(Some(&a), Some(&b)), Ordering::Less);
        assert_eq!(compare_values(Some(&one), Some(&a)), Ordering::Less);
    }
}
