//! `[run]` and `[serve]`: defaults for a command's flags, by the flag's long name.
//!
//! This crate knows no command line: it keeps each key with its value and line, and
//! the binary checks them against its own flags (so a value is judged by the same
//! parser as the flag, and a new flag needs no change here).

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};

use crate::path::KeyPath;

/// One `key = value` of a flag section.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagDefault {
    /// The key as written: a flag's long name, with dashes or underscores
    /// (`max_retries`, `max-retries`).
    pub key: String,
    /// Its value.
    pub value: FlagValue,
    /// Where it is, for errors: `run.max_retries`.
    pub path: KeyPath,
    /// The line it is on.
    pub line: u32,
}

impl FlagDefault {
    /// The flag's long name: the key with underscores written as dashes.
    pub fn flag_name(&self) -> String {
        self.key.replace('_', "-")
    }
}

/// A flag's value as the file gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum FlagValue {
    /// `true` sets a switch, `false` leaves it off.
    Bool(bool),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    String(String),
    /// Several values, for a flag that may be repeated (`api_key_env = ["A", "B"]`).
    List(Vec<FlagValue>),
}

impl FlagValue {
    /// The text a flag's parser is given for this value: what one would type after
    /// `--flag` on the command line. `None` for a list, whose items are given one by one.
    pub fn as_arg(&self) -> Option<String> {
        match self {
            FlagValue::Bool(b) => Some(b.to_string()),
            FlagValue::Integer(n) => Some(n.to_string()),
            FlagValue::Float(n) => Some(n.to_string()),
            FlagValue::String(s) => Some(s.clone()),
            FlagValue::List(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for FlagValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FlagValue, D::Error> {
        deserializer.deserialize_any(FlagVisitor { in_list: false })
    }
}

struct FlagVisitor {
    /// A list's items must be single values: no flag takes a list of lists.
    in_list: bool,
}

/// One item of a list: a single value.
struct ListItem(FlagValue);

impl<'de> Deserialize<'de> for ListItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ListItem, D::Error> {
        deserializer
            .deserialize_any(FlagVisitor { in_list: true })
            .map(ListItem)
    }
}

impl<'de> Visitor<'de> for FlagVisitor {
    type Value = FlagValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.in_list {
            f.write_str("a single value (a string, number or true/false)")
        } else {
            f.write_str("a flag's value (a string, number, true/false, or a list of them)")
        }
    }

    fn visit_bool<E>(self, b: bool) -> Result<FlagValue, E> {
        Ok(FlagValue::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<FlagValue, E> {
        Ok(FlagValue::Integer(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<FlagValue, E> {
        // Above i64::MAX: given as text, the flag's own parser judges it.
        Ok(match i64::try_from(n) {
            Ok(n) => FlagValue::Integer(n),
            Err(_) => FlagValue::String(n.to_string()),
        })
    }

    fn visit_f64<E>(self, n: f64) -> Result<FlagValue, E> {
        Ok(FlagValue::Float(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<FlagValue, E> {
        Ok(FlagValue::String(s.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<FlagValue, A::Error> {
        // `[experiment.NAME]` is the likeliest: a typo for `[experiments.NAME]`.
        Err(serde::de::Error::custom(
            "expected a flag's value, found a table: flags take a value each (an experiment is [experiments.NAME], a provider [providers.NAME])",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FlagValue, A::Error> {
        if self.in_list {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Seq,
                &self,
            ));
        }
        let mut items = Vec::new();
        while let Some(ListItem(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(FlagValue::List(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_given_as_typed() {
        assert_eq!(FlagValue::Float(0.5).as_arg().as_deref(), Some("0.5"));
        assert_eq!(
            FlagValue::Float(1e9).as_arg().as_deref(),
            Some("1000000000")
        );
        assert_eq!(FlagValue::Integer(-1).as_arg().as_deref(), Some("-1"));
        assert_eq!(FlagValue::List(vec![]).as_arg(), None);
    }
}
