//! Where a value sits in the file, as a user would write it in an error message:
//! `experiments.arith-eval.models[1]`, `models."openai/gpt-4o".provider`.

use std::fmt;

/// One step of a [`KeyPath`]: a table's key or a list's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key of a table (a mapping, in YAML).
    Key(String),
    /// A position in a list, from 0.
    Index(usize),
}

/// The keys and indices from the top of the file down to one value. Errors name it so
/// the user finds the value whatever the format (TOML or YAML) wrote it as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The whole file.
    pub fn root() -> KeyPath {
        KeyPath::default()
    }

    /// This path followed by the table key `key`.
    pub fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_string()));
        path
    }

    /// This path followed by the list index `index`.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    /// The steps, from the top of the file down.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Builds a path from its steps (top first).
    pub(crate) fn from_segments(segments: Vec<Segment>) -> KeyPath {
        KeyPath(segments)
    }
}

/// A key that can be written bare in a path: what TOML allows as a bare key, so that
/// anything else (`openai/gpt-4o`, a key with a dot or a space) is quoted and the path
/// stays unambiguous.
fn bare(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if bare(key) {
                        f.write_str(key)?;
                    } else {
                        // A JSON string is a valid TOML basic string too.
                        let quoted = serde_json::to_string(key).unwrap_or_default();
                        f.write_str(&quoted)?;
                    }
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_written() {
        let path = KeyPath::root()
            .key("experiments")
            .key("arith-eval")
            .key("models")
            .index(1);
        assert_eq!(path.to_string(), "experiments.arith-eval.models[1]");
        let quoted = KeyPath::root().key("models").key("openai/gpt-4o");
        assert_eq!(quoted.to_string(), r#"models."openai/gpt-4o""#);
        assert_eq!(KeyPath::root().to_string(), "");
    }
}
