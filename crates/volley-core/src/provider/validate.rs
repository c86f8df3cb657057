//! Checks a reply's content against what the user expects (`--expect json`,
//! `--json-schema FILE`). A reply that fails is retried as `invalid_response` like any
//! other retryable outcome (SPEC §2).

use std::path::Path;

use serde_json::Value;

/// Why a schema file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read JSON schema {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("JSON schema {path} is not valid JSON: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("JSON schema {path} is not a valid schema: {message}")]
    Invalid { path: String, message: String },
}

/// What a successful reply's content must be.
pub enum ResponseCheck {
    /// JSON (a fenced code block around it is allowed).
    Json,
    /// JSON that validates against a schema.
    Schema(Box<jsonschema::Validator>),
}

impl std::fmt::Debug for ResponseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseCheck::Json => f.write_str("ResponseCheck::Json"),
            ResponseCheck::Schema(_) => f.write_str("ResponseCheck::Schema"),
        }
    }
}

impl ResponseCheck {
    pub fn json() -> ResponseCheck {
        ResponseCheck::Json
    }

    /// Loads and compiles a JSON Schema file.
    pub fn schema_file(path: &Path) -> Result<ResponseCheck, SchemaError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: shown.clone(),
            source,
        })?;
        let schema: Value = serde_json::from_str(&text).map_err(|source| SchemaError::Parse {
            path: shown.clone(),
            source,
        })?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| SchemaError::Invalid {
            path: shown,
            message: e.to_string(),
        })?;
        Ok(ResponseCheck::Schema(Box::new(validator)))
    }

    /// `Ok` when the content passes; else a message saying why it does not.
    /// A check against a schema given as a value (a judge's verdict).
    pub fn schema(schema: &Value) -> Result<ResponseCheck, String> {
        jsonschema::validator_for(schema)
            .map(|v| ResponseCheck::Schema(Box::new(v)))
            .map_err(|e| e.to_string())
    }

    /// The JSON text inside a reply's content: the content itself, or the body of the
    /// fenced code block it is wrapped in, as [`ResponseCheck::check`] reads it.
    pub fn json_text(content: &str) -> &str {
        strip_code_fence(content)
    }

    pub fn check(&self, content: &str) -> Result<(), String> {
        let text = strip_code_fence(content);
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("the reply's content is not JSON: {e}"))?;
        match self {
            ResponseCheck::Json => Ok(()),
            ResponseCheck::Schema(validator) => validator
                .validate(&value)
                .map_err(|e| format!("the reply's content does not match the schema: {e}")),
        }
    }
}

/// The inside of a Markdown code fence (```json ... ```), or the text itself.
fn strip_code_fence(content: &str) -> &str {
    let trimmed = content.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    // Skip the info string (e.g. "json") up to the end of the first line.
    let body = rest.split_once('\n').map_or("", |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_and_without_fences() {
        let c = ResponseCheck::json();
        assert!(c.check(r#"{"a": 1}"#).is_ok());
        assert!(c.check("```json\n{\"a\": 1}\n```").is_ok());
        assert!(c.check("```\n[1,2]\n```").is_ok());
        assert!(
            c.check("sure! {\"a\": 1}")
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn schema_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"type":"object","required":["answer"]}"#).unwrap();
        let c = ResponseCheck::schema_file(&path).unwrap();
        assert!(c.check(r#"{"answer": "x"}"#).is_ok());
        assert!(c.check(r#"{"other": 1}"#).unwrap_err().contains("schema"));
        std::fs::write(&path, "{nope").unwrap();
        assert!(matches!(
            ResponseCheck::schema_file(&path),
            Err(SchemaError::Parse { .. })
        ));
    }
}
