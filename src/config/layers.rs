//! Layering of the configuration: built-in defaults, an optional file, then the
//! environment.
//!
//! Environment values are converted with the type of the default they replace, so a
//! token made only of digits stays a string and `ERP_SYNC_AMQP_PREFETCH=abc` fails with
//! the variable's name. Generic layering crates guess a type from the text instead.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Table, Value};

use super::ConfigError;

/// The documented defaults, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of every environment variable that overrides a configuration key.
pub const ENV_PREFIX: &str = "ERP_SYNC_";

/// Where the value of a key came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(String),
    Env(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "the built-in default"),
            Origin::File(path) => write!(f, "{path}"),
            Origin::Env(var) => write!(f, "{var}"),
        }
    }
}

/// The merged configuration tree and the origin of every overridden key.
pub struct Layered {
    pub tree: Table,
    pub origins: BTreeMap<String, Origin>,
}

impl Layered {
    /// Returns where the value of a dotted key came from.
    pub fn origin_of(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }
}

/// Names the environment variable that overrides `table.key`.
pub fn env_var_name(table: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}_{}", table, key)
        .to_uppercase()
        .replace('-', "_")
}

/// Lists every key that an environment variable can override, with the variable's name,
/// in the order of the defaults file.
pub fn overridable_keys() -> Vec<(String, String)> {
    let defaults: Table = DEFAULT_TOML
        .parse()
        .expect("the built-in defaults are valid TOML");
    let mut keys = Vec::new();
    for (table_name, table) in &defaults {
        let Value::Table(table) = table else { continue };
        for (key, value) in table {
            if matches!(value, Value::Table(_)) {
                continue;
            }
            keys.push((format!("{table_name}.{key}"), env_var_name(table_name, key)));
        }
    }
    keys
}

/// Merges the defaults, the optional file and the environment into one tree.
pub fn merge(
    file: Option<(&Path, &str)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Layered, ConfigError> {
    let mut tree: Table = DEFAULT_TOML
        .parse()
        .expect("the built-in defaults are valid TOML");
    let mut origins = BTreeMap::new();

    if let Some((path, text)) = file {
        let file_tree: Table =
            text.parse()
                .map_err(|error: toml::de::Error| ConfigError::File {
                    path: path.display().to_string(),
                    message: error.to_string(),
                })?;
        let origin = Origin::File(path.display().to_string());
        merge_table(&mut tree, file_tree, "", &origin, &mut origins);
    }

    apply_env(&mut tree, env, &mut origins)?;
    Ok(Layered { tree, origins })
}

/// Copies `overlay` into `base`, table by table, recording the origin of each leaf.
fn merge_table(
    base: &mut Table,
    overlay: Table,
    prefix: &str,
    origin: &Origin,
    origins: &mut BTreeMap<String, Origin>,
) {
    for (key, value) in overlay {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_table)), Value::Table(overlay_table)) => {
                merge_table(base_table, overlay_table, &path, origin, origins);
            }
            (_, value) => {
                origins.insert(path, origin.clone());
                base.insert(key, value);
            }
        }
    }
}

/// Replaces each overridable key whose environment variable is set.
fn apply_env(
    tree: &mut Table,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut BTreeMap<String, Origin>,
) -> Result<(), ConfigError> {
    let defaults: Table = DEFAULT_TOML
        .parse()
        .expect("the built-in defaults are valid TOML");

    for (table_name, default_table) in &defaults {
        let Value::Table(default_table) = default_table else {
            continue;
        };
        for (key, default_value) in default_table {
            let var = env_var_name(table_name, key);
            let Some(text) = env(&var) else { continue };

            let value = convert_env_value(&var, &text, default_value, table_name, key)?;
            let table = tree
                .entry(table_name.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(table) = table {
                table.insert(key.clone(), value);
            }
            origins.insert(format!("{table_name}.{key}"), Origin::Env(var));
        }
    }
    Ok(())
}

/// Converts an environment value to the TOML type of the default it replaces.
fn convert_env_value(
    var: &str,
    text: &str,
    default_value: &Value,
    table_name: &str,
    key: &str,
) -> Result<Value, ConfigError> {
    let invalid = |expected: &str| ConfigError::Env {
        var: format!("{var} (key `{table_name}.{key}`)"),
        shown_value: shown_value(key, text),
        expected: expected.to_owned(),
    };

    let trimmed = text.trim();
    match default_value {
        Value::String(_) => Ok(Value::String(text.to_owned())),
        Value::Integer(_) => trimmed
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| invalid("a whole number")),
        Value::Float(_) => trimmed
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| invalid("a number")),
        Value::Boolean(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(invalid("true or false")),
        },
        Value::Array(_) => {
            let snippet: Table = format!("value = {trimmed}")
                .parse()
                .map_err(|_| invalid("a TOML array such as [\"a\", \"b\"]"))?;
            match snippet.get("value") {
                Some(value @ Value::Array(_)) => Ok(value.clone()),
                _ => Err(invalid("a TOML array such as [\"a\", \"b\"]")),
            }
        }
        Value::Datetime(_) | Value::Table(_) => {
            Err(invalid("a value this key cannot take from the environment"))
        }
    }
}

/// Returns the value to show in an error message, hiding secrets.
pub fn shown_value(key: &str, text: &str) -> String {
    if is_secret_key(key) {
        "(hidden)".to_owned()
    } else {
        format!("{text:?}")
    }
}

/// Tells whether a key holds a secret whose value must never be printed.
pub fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(last, "token" | "tokens" | "password" | "url")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn env_names_follow_table_and_key() {
        assert_eq!(env_var_name("amqp", "url"), "ERP_SYNC_AMQP_URL");
        assert_eq!(env_var_name("platform", "token"), "ERP_SYNC_PLATFORM_TOKEN");
        assert_eq!(
            env_var_name("retry", "max_attempts"),
            "ERP_SYNC_RETRY_MAX_ATTEMPTS"
        );
    }

    #[test]
    fn digit_only_token_stays_a_string() {
        let env = |var: &str| (var == "ERP_SYNC_PLATFORM_TOKEN").then(|| "0123456789".to_owned());
        let layered = merge(None, &env).unwrap();
        let token = &layered.tree["platform"]["token"];
        assert_eq!(token.as_str(), Some("0123456789"));
        assert_eq!(
            layered.origin_of("platform.token"),
            Origin::Env("ERP_SYNC_PLATFORM_TOKEN".into())
        );
    }

    #[test]
    fn env_integer_must_parse() {
        let env = |var: &str| (var == "ERP_SYNC_AMQP_PREFETCH").then(|| "many".to_owned());
        let error = merge(None, &env).err().unwrap().to_string();
        assert!(error.contains("ERP_SYNC_AMQP_PREFETCH"), "{error}");
        assert!(error.contains("whole number"), "{error}");
    }

    #[test]
    fn env_secret_value_is_hidden_in_errors() {
        assert_eq!(shown_value("platform.token", "s3cret"), "(hidden)");
        assert_eq!(shown_value("amqp.prefetch", "x"), "\"x\"");
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let text = "[amqp]\nprefetch = 7\n";
        let layered = merge(Some((Path::new("site.toml"), text)), &no_env).unwrap();
        assert_eq!(layered.tree["amqp"]["prefetch"].as_integer(), Some(7));
        assert_eq!(
            layered.tree["amqp"]["queue"].as_str(),
            Some("erp-sync.events")
        );
        assert_eq!(
            layered.origin_of("amqp.prefetch"),
            Origin::File("site.toml".into())
        );
    }

    #[test]
    fn every_default_key_is_overridable() {
        let keys = overridable_keys();
        assert!(
            keys.iter()
                .any(|(key, var)| key == "database.url" && var == "ERP_SYNC_DATABASE_URL")
        );
        assert!(keys.iter().any(|(key, _)| key == "dispatch.concurrency"));
    }
}
