//! The file as a tree of values that remember their line, the same for TOML and YAML.
//!
//! Both formats are read into this one tree first, and the typed sections are
//! deserialized from it ([`crate::de`]): so an error reads the same whichever format
//! the file is in, and a value found wrong after deserializing (a model naming a
//! provider that does not exist) can still be pointed at by its line.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::path::{KeyPath, Segment};

/// A value and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: u32,
    pub value: Value,
}

/// A value of the file. Tables keep the order the file gives their keys in: the first
/// provider is the default upstream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX` (YAML only: TOML has none).
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One key of a table, the line the key is on, and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub line: u32,
    pub node: Node,
}

/// A file that is not valid TOML or YAML: the line the parser stopped at (0 when it
/// did not say) and what it found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: u32,
    pub message: String,
}

impl Node {
    /// The line of the value at `path`: a table key's own line, a list item's line.
    /// A path that leaves the file (a key the file does not set, whose default is
    /// wrong) gives the line of the nearest value above it that the file has.
    pub fn line_of(&self, path: &KeyPath) -> u32 {
        let mut node = self;
        let mut line = self.line;
        for segment in path.segments() {
            let next = match (&node.value, segment) {
                (Value::Map(entries), Segment::Key(key)) => entries
                    .iter()
                    .find(|e| &e.key == key)
                    .map(|e| (e.line, &e.node)),
                (Value::Seq(items), Segment::Index(i)) => items.get(*i).map(|n| (n.line, n)),
                _ => None,
            };
            let Some((at, child)) = next else { break };
            line = at;
            node = child;
        }
        line
    }
}

/// Reads a TOML document. Keys are put in the order they appear in the file (the
/// parser sorts them), and every span becomes a line.
pub(crate) fn parse_toml(text: &str) -> Result<Node, SyntaxError> {
    let lines = LineStarts::new(text);
    let root = toml::de::DeTable::parse(text).map_err(|e| SyntaxError {
        line: e.span().map_or(0, |s| lines.line(s.start)),
        message: e.message().to_string(),
    })?;
    let table = toml_table(root.get_ref(), &lines)?;
    Ok(Node {
        line: 1,
        value: Value::Map(table),
    })
}

fn toml_table(
    table: &toml::de::DeTable<'_>,
    lines: &LineStarts,
) -> Result<Vec<Entry>, SyntaxError> {
    let mut entries: Vec<(usize, Entry)> = Vec::with_capacity(table.len());
    for (key, value) in table.iter() {
        let start = key.span().start;
        let line = lines.line(start);
        let mut node = toml_value(value, lines)?;
        // A table's own span may be its header or nothing at all (a table made by
        // `[a.b]` has no text of its own); its key's line is where a user looks.
        if matches!(node.value, Value::Map(_)) {
            node.line = line;
        }
        entries.push((
            start,
            Entry {
                key: key.get_ref().to_string(),
                line,
                node,
            },
        ));
    }
    entries.sort_by_key(|(start, _)| *start);
    Ok(entries.into_iter().map(|(_, e)| e).collect())
}

fn toml_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    lines: &LineStarts,
) -> Result<Node, SyntaxError> {
    use toml::de::DeValue;
    let line = lines.line(value.span().start);
    let bad = |message: String| SyntaxError { line, message };
    let value = match value.get_ref() {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str();
            match i64::from_str_radix(digits, i.radix()) {
                Ok(n) => Value::Int(n),
                Err(_) => match u64::from_str_radix(digits, i.radix()) {
                    Ok(n) => Value::UInt(n),
                    Err(_) => return Err(bad(format!("the integer {i} is out of range"))),
                },
            }
        }
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(n) if n.is_finite() => Value::Float(n),
            _ => return Err(bad(format!("{f} is not a finite number"))),
        },
        DeValue::Boolean(b) => Value::Bool(*b),
        // No setting takes a date; as text, a date in the wrong place is said to be
        // one ("expected a number, found the string \"1979-05-27\"").
        DeValue::Datetime(d) => Value::Str(d.to_string()),
        DeValue::Array(items) => Value::Seq(
            items
                .iter()
                .map(|item| toml_value(item, lines))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => Value::Map(toml_table(table, lines)?),
    };
    Ok(Node { line, value })
}

/// The byte offset each line starts at, to turn a parser's byte spans into lines.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> LineStarts {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts(starts)
    }

    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> u32 {
        let line = self.0.partition_point(|start| *start <= offset);
        u32::try_from(line).unwrap_or(u32::MAX).max(1)
    }
}

/// Reads a YAML document (one; an empty one is an empty table). serde-saphyr's spanned
/// values give each key and value its line; its budget bounds nesting and aliases, so
/// no file can exhaust the stack or memory.
pub(crate) fn parse_yaml(text: &str) -> Result<Node, SyntaxError> {
    let root: serde_saphyr::Spanned<YamlValue> =
        serde_saphyr::from_str(text).map_err(|e| SyntaxError {
            line: e.location().map_or(0, |l| l.line() as u32),
            message: yaml_message(&e),
        })?;
    let node = yaml_node(root);
    Ok(match node.value {
        Value::Null => Node {
            line: 1,
            value: Value::Map(Vec::new()),
        },
        _ => node,
    })
}

/// serde-saphyr's message without the location it appends (the caller gives the line
/// its own way) and without advice meant for programmers.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let text = match text.find(", set DuplicateKeyPolicy") {
        Some(at) => &text[..at],
        None => text,
    };
    text.to_string()
}

/// A YAML value as serde-saphyr hands it over, each key and value with its location.
enum YamlValue {
    Scalar(Value),
    Seq(Vec<serde_saphyr::Spanned<YamlValue>>),
    Map(
        Vec<(
            serde_saphyr::Spanned<String>,
            serde_saphyr::Spanned<YamlValue>,
        )>,
    ),
}

/// The tree of a YAML value, with the line of each key and value.
fn yaml_node(spanned: serde_saphyr::Spanned<YamlValue>) -> Node {
    let line = spanned.referenced.line() as u32;
    let value = match spanned.value {
        YamlValue::Scalar(v) => v,
        YamlValue::Seq(items) => Value::Seq(items.into_iter().map(yaml_node).collect()),
        YamlValue::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(key, value)| Entry {
                    line: key.referenced.line() as u32,
                    key: key.value,
                    node: yaml_node(value),
                })
                .collect(),
        ),
    };
    Node { line, value }
}

impl<'de> Deserialize<'de> for YamlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<YamlValue, D::Error> {
        deserializer.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = YamlValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(Value::Null))
    }

    fn visit_none<E>(self) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YamlValue, D::Error> {
        d.deserialize_any(YamlVisitor)
    }

    fn visit_bool<E>(self, b: bool) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(Value::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(Value::Int(n)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(match i64::try_from(n) {
            Ok(n) => Value::Int(n),
            Err(_) => Value::UInt(n),
        }))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<YamlValue, E> {
        if !n.is_finite() {
            return Err(E::custom(format!("{n} is not a finite number")));
        }
        Ok(YamlValue::Scalar(Value::Float(n)))
    }

    fn visit_str<E>(self, s: &str) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(Value::Str(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<YamlValue, E> {
        Ok(YamlValue::Scalar(Value::Str(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YamlValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(YamlValue::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(YamlValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_and_lines(node: &Node) -> Vec<(String, u32)> {
        match &node.value {
            Value::Map(entries) => entries.iter().map(|e| (e.key.clone(), e.line)).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn toml_keys_keep_the_file_order_and_their_lines() {
        let text = "# top\n[providers.zeta]\nbase_url = \"x\"\n\n[providers.alpha]\nbase_url = \"y\"\nrpm = 5\n";
        let root = parse_toml(text).unwrap();
        let path = KeyPath::root().key("providers");
        assert_eq!(root.line_of(&path), 2);
        let Value::Map(top) = &root.value else {
            panic!()
        };
        assert_eq!(
            keys_and_lines(&top[0].node),
            vec![("zeta".to_string(), 2), ("alpha".to_string(), 5)]
        );
        assert_eq!(root.line_of(&path.key("alpha").key("rpm")), 7);
        // A key the file does not have: the nearest line above it.
        assert_eq!(root.line_of(&path.key("alpha").key("tpm")), 5);
    }

    #[test]
    fn yaml_keys_and_list_items_have_their_lines() {
        let text =
            "run:\n  concurrency: 4\nexperiments:\n  e:\n    models:\n      - a\n      - b\n";
        let root = parse_yaml(text).unwrap();
        let models = KeyPath::root().key("experiments").key("e").key("models");
        assert_eq!(root.line_of(&models), 5);
        assert_eq!(root.line_of(&models.index(1)), 7);
        assert_eq!(
            root.line_of(&KeyPath::root().key("run").key("concurrency")),
            2
        );
    }

    #[test]
    fn syntax_errors_give_their_line() {
        let e = parse_toml("a = 1\nb = [1,\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        let e = parse_yaml("run:\n  a: 1\n  a: 2\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.message, "duplicate mapping key: a");
        let e = parse_toml("x = nan\n").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (1, "nan is not a finite number")
        );
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_crash() {
        let deep = format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_toml(&deep).is_err());
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_yaml(&deep).is_err());
    }

    #[test]
    fn an_empty_yaml_file_is_an_empty_table() {
        assert_eq!(parse_yaml("").unwrap().value, Value::Map(Vec::new()));
        assert_eq!(
            parse_yaml("# nothing\n").unwrap().value,
            Value::Map(Vec::new())
        );
    }
}
