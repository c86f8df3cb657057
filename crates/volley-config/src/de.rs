//! Typed sections from the [`Node`] tree: a serde `Deserializer` whose errors carry the
//! line and key path of the value they are about, and say what is wrong in the words
//! of a configuration file ("a table", "a whole number"), not of Rust types.

use std::fmt::{self, Display};

use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde::forward_to_deserialize_any;

use crate::path::{KeyPath, Segment};
use crate::tree::{Entry, Node, Value};

/// What is wrong with a value, and where it is. Errors are made deep inside serde's
/// visitors, which know neither; each level of the tree they pass on the way out adds
/// its key (and the innermost its line).
#[derive(Debug)]
pub(crate) struct Error {
    pub message: String,
    pub line: Option<u32>,
    /// Innermost first: pushed while the error travels out of the tree.
    inside_out: Vec<Segment>,
}

impl Error {
    fn new(message: String) -> Error {
        Error {
            message,
            line: None,
            inside_out: Vec::new(),
        }
    }

    fn at(mut self, line: u32) -> Error {
        self.line.get_or_insert(line);
        self
    }

    fn within(mut self, segment: Segment) -> Error {
        self.inside_out.push(segment);
        self
    }

    /// The path from the top of the file to the value the error is about.
    pub fn path(&self) -> KeyPath {
        KeyPath::from_segments(self.inside_out.iter().rev().cloned().collect())
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A value as the user wrote it, for "expected …, found …".
fn found(unexpected: Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Bool(b) => format!("{b}"),
        Unexpected::Unsigned(n) => format!("{n}"),
        Unexpected::Signed(n) => format!("{n}"),
        Unexpected::Float(n) => format!("{n}"),
        Unexpected::Str(s) => format!("the string {}", quoted(s)),
        Unexpected::Unit => "nothing (null)".into(),
        Unexpected::Seq => "a list".into(),
        Unexpected::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// What a visitor wanted, in a configuration file's words. serde's derived visitors
/// say "struct RawProvider" or "u64"; the file has tables and numbers.
fn wanted(expected: &dyn Expected) -> String {
    let text = expected.to_string();
    let said = match text.as_str() {
        "a map" => "a table",
        "a sequence" => "a list",
        "a boolean" => "true or false",
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        _ if text.starts_with("struct ") => "a table",
        _ => return text,
    };
    said.to_string()
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| s.to_string())
}

impl de::Error for Error {
    fn custom<T: Display>(msg: T) -> Error {
        Error::new(msg.to_string())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Error {
        Error::new(format!(
            "expected {}, found {}",
            wanted(expected),
            found(unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Error {
        Error::new(format!(
            "expected {}, found {}",
            wanted(expected),
            found(unexpected)
        ))
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Error {
        Error::new(format!("expected {}, found {len} items", wanted(expected)))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Error {
        let names: Vec<String> = expected.iter().map(|v| quoted(v)).collect();
        Error::new(format!(
            "unknown value {} (expected one of {})",
            quoted(variant),
            names.join(", ")
        ))
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Error {
        // The path names the key already.
        Error::new(format!(
            "unknown key (expected one of {})",
            expected.join(", ")
        ))
    }

    fn missing_field(field: &'static str) -> Error {
        Error::new(format!("missing key {field:?}"))
    }

    fn duplicate_field(field: &'static str) -> Error {
        Error::new(format!("{field:?} is set twice"))
    }
}

/// How a value is described when it is not what was wanted.
fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(n) => Unexpected::Signed(*n),
        Value::UInt(n) => Unexpected::Unsigned(*n),
        Value::Float(n) => Unexpected::Float(*n),
        Value::Str(s) => Unexpected::Str(s),
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

/// Deserializes `T` from `node`.
pub(crate) fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, Error> {
    T::deserialize(NodeDeserializer(node))
}

struct NodeDeserializer<'a>(&'a Node);

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let node = self.0;
        let result = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(n) => visitor.visit_i64(*n),
            Value::UInt(n) => visitor.visit_u64(*n),
            Value::Float(n) => visitor.visit_f64(*n),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
            }),
            Value::Map(entries) => visitor.visit_map(Entries {
                entries: entries.iter(),
                current: None,
            }),
        };
        result.map_err(|e| e.at(node.line))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A table, only: serde would also fill a struct from a list, field by field, which
    /// would take `p = ["https://…", "KEY"]` for a provider.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let node = self.0;
        match &node.value {
            Value::Map(_) => self.deserialize_any(visitor),
            _ => {
                Err(<Error as de::Error>::invalid_type(unexpected(node), &"a table").at(node.line))
            }
        }
    }

    /// The file's enums are plain names (`lanes = "key-model"`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let node = self.0;
        let result = match &node.value {
            Value::Str(s) => {
                let name: StrDeserializer<'_, Error> = s.as_str().into_deserializer();
                visitor.visit_enum(name)
            }
            _ => self.deserialize_any(visitor),
        };
        result.map_err(|e| e.at(node.line))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

struct Items<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some((index, item)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDeserializer(item))
            .map(Some)
            .map_err(|e| e.at(item.line).within(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'a> {
    entries: std::slice::Iter<'a, Entry>,
    current: Option<&'a Entry>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key: StrDeserializer<'_, Error> = entry.key.as_str().into_deserializer();
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| e.at(entry.line).within(Segment::Key(entry.key.clone())))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let Some(entry) = self.current.take() else {
            return Err(Error::new("a value was asked for before its key".into()));
        };
        seed.deserialize(NodeDeserializer(&entry.node))
            .map_err(|e| {
                e.at(entry.node.line)
                    .within(Segment::Key(entry.key.clone()))
            })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::parse_toml;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        rpm: Option<u64>,
        lanes: Option<Mode>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        Key,
        KeyModel,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        providers: std::collections::BTreeMap<String, Inner>,
        list: Option<Vec<u32>>,
    }

    fn error(text: &str) -> (Option<u32>, String, String) {
        let root = parse_toml(text).unwrap();
        let e = from_node::<Outer>(&root).unwrap_err();
        (e.line, e.path().to_string(), e.message)
    }

    #[test]
    fn errors_name_line_path_and_what_is_wrong() {
        let (line, path, message) = error("[providers.a]\nrpm = 1\nrpn = 2\n");
        assert_eq!((line, path.as_str()), (Some(3), "providers.a.rpn"));
        assert_eq!(message, "unknown key (expected one of rpm, lanes)");
        let (line, path, message) = error("[providers.a]\nrpm = \"x\"\n");
        assert_eq!((line, path.as_str()), (Some(2), "providers.a.rpm"));
        assert_eq!(message, "expected a whole number, found the string \"x\"");
        let (line, path, message) = error("list = [1, -2]\n[providers.a]\n");
        assert_eq!((line, path.as_str()), (Some(1), "list[1]"));
        assert_eq!(message, "expected a whole number, found -2");
        let (line, path, message) = error("[providers.a]\nlanes = \"keys\"\n");
        assert_eq!((line, path.as_str()), (Some(2), "providers.a.lanes"));
        assert_eq!(
            message,
            "unknown value \"keys\" (expected one of \"key\", \"key-model\")"
        );
        let (line, path, message) = error("providers = 3\n");
        assert_eq!((line, path.as_str()), (Some(1), "providers"));
        assert_eq!(message, "expected a table, found 3");
        let (_, path, message) = error("list = []\n");
        assert_eq!(
            (path.as_str(), message.as_str()),
            ("", "missing key \"providers\"")
        );
    }

    #[test]
    fn enums_take_their_names() {
        let root = parse_toml("[providers.a]\nlanes = \"key-model\"\n").unwrap();
        let outer = from_node::<Outer>(&root).unwrap();
        assert!(matches!(outer.providers["a"].lanes, Some(Mode::KeyModel)));
    }
}
