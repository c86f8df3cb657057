//! The JSONL batch formats volley reads (SPEC §2 "Input lines").
//!
//! Three forms are accepted on each line: the OpenAI Batch format (`custom_id`, `method`,
//! `url`, `body`), a bare request body, and a shorthand `{"prompt": ...}`. This module
//! turns one line into a [`Job`] or a [`LineProblem`] that says exactly what is wrong; it
//! does no I/O, so the validation pass and the sending pass share it and can never
//! disagree about which lines are valid.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::input::job::{Fingerprint, Job};
use crate::provider::routes::Routes;

/// What the user configured that fills gaps in input lines.
#[derive(Debug, Clone, Default)]
pub struct LineDefaults {
    /// `--model`: used by lines that name no model.
    pub model: Option<String>,
    /// Configured models: a line whose model (its own, or `--model`) names one is sent
    /// to its upstream with its id and settings.
    pub routes: Arc<Routes>,
}

/// Why a line cannot be sent. The message is written for the person fixing the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineProblem {
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error(
        "no usable body: expected a Batch line with \"body\", a request body with \"messages\" or \"input\", or a shorthand with \"prompt\""
    )]
    NoBody,
    #[error("field \"{field}\": {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("no model: the body names none and no --model was given")]
    NoModel,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn id_from(value: Value, field: &'static str) -> Result<String, LineProblem> {
    let reason = match value {
        Value::String(s) if !s.is_empty() => return Ok(s),
        Value::Number(n) => return Ok(n.to_string()),
        // "must be a non-empty string, found a string" would leave the user puzzling
        // over what is wrong with it.
        Value::String(_) => "must not be empty".to_string(),
        other => format!("must be a non-empty string, found {}", type_name(&other)),
    };
    Err(LineProblem::BadField { field, reason })
}

/// The custom_id a line would have, if it can be told, without judging the rest: used
/// to key the error record of an invalid line.
pub fn peek_custom_id(text: &str, line: u64) -> String {
    let fallback = || format!("line-{line}");
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return fallback();
    };
    let batch_like = map.contains_key("body") || map.contains_key("url");
    let candidate = if batch_like {
        map.get("custom_id").cloned()
    } else {
        map.get("custom_id").or_else(|| map.get("id")).cloned()
    };
    candidate
        .and_then(|v| id_from(v, "custom_id").ok())
        .unwrap_or_else(fallback)
}

/// A valid request line, not yet serialized for sending.
#[derive(Debug, Clone)]
pub struct Request {
    pub custom_id: String,
    pub line: u64,
    path: String,
    body: Map<String, Value>,
    model: String,
    /// The engine's upstream it goes to (its configured model's; else 0).
    upstream: usize,
}

impl Request {
    /// Serializes the body once, for every attempt to reuse.
    pub fn into_job(self) -> Job {
        // A map of JSON values with string keys always serializes.
        let bytes = serde_json::to_vec(&self.body).unwrap_or_default();
        Job {
            custom_id: Arc::from(self.custom_id),
            line: self.line,
            fingerprint: Fingerprint::of(&self.path, &bytes),
            path: Arc::from(self.path),
            body: bytes.into(),
            model: Some(Arc::from(self.model)),
            upstream: self.upstream,
            tokens: Arc::default(),
            waiting: None,
        }
    }

    /// The path it goes to under the base URL, e.g. `/chat/completions` for a Batch
    /// line whose url is `/v1/chat/completions`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The model it asks for (the provider's id, once routed).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The engine's upstream it goes to.
    pub fn upstream(&self) -> usize {
        self.upstream
    }

    /// The request's [`Fingerprint`], equal to its job's, without serializing the body.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_value(&self.path, &self.body)
    }

    /// The tokens this request books against a tokens-per-minute limit (see
    /// [`Job::estimated_tokens`]), for checking it can ever fit one.
    pub fn estimated_tokens(&self) -> u64 {
        let bytes = serde_json::to_vec(&self.body).unwrap_or_default();
        crate::provider::tokens::estimate(&bytes, Some(&self.model))
    }
}

/// Parses one non-blank input line into a job ready to send.
pub fn parse_line(text: &str, line: u64, defaults: &LineDefaults) -> Result<Job, LineProblem> {
    parse_request(text, line, defaults).map(Request::into_job)
}

/// Parses and checks one non-blank input line, without serializing its body: the
/// validation pass over a large file needs only the verdict and the custom_id.
pub fn parse_request(
    text: &str,
    line: u64,
    defaults: &LineDefaults,
) -> Result<Request, LineProblem> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| LineProblem::InvalidJson(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(LineProblem::NotAnObject(type_name(&value)));
    };

    let (custom_id, path, mut body) = if map.contains_key("body") || map.contains_key("url") {
        batch_line(&mut map)?
    } else if map.contains_key("prompt") {
        let custom_id = take_id(&mut map, line)?;
        (
            custom_id,
            "/chat/completions".to_string(),
            shorthand_body(map)?,
        )
    } else if map.contains_key("messages") || map.contains_key("input") {
        let custom_id = take_id(&mut map, line)?;
        let path = if map.contains_key("messages") {
            "/chat/completions"
        } else {
            "/embeddings"
        };
        (custom_id, path.to_string(), map)
    } else {
        return Err(LineProblem::NoBody);
    };

    let mut model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None => match &defaults.model {
            Some(m) => {
                body.insert("model".into(), Value::String(m.clone()));
                m.clone()
            }
            None => return Err(LineProblem::NoModel),
        },
        Some(other) => {
            return Err(LineProblem::BadField {
                field: "model",
                reason: format!("must be a string, found {}", type_name(other)),
            });
        }
    };
    // After the defaults, before the fingerprint: `--model` may name a configured
    // model too, and a changed route is a changed request.
    let upstream = match defaults.routes.apply(&mut body) {
        Some(route) => {
            model.clone_from(&route.model);
            route.upstream
        }
        None => 0,
    };
    if path == "/chat/completions"
        && !matches!(body.get("messages"), Some(Value::Array(m)) if !m.is_empty())
    {
        return Err(LineProblem::BadField {
            field: "messages",
            reason: "a chat request needs a non-empty \"messages\" array".into(),
        });
    }

    Ok(Request {
        custom_id,
        line,
        path,
        body,
        model,
        upstream,
    })
}

/// An OpenAI Batch API line: `{"custom_id", "method", "url", "body"}`.
fn batch_line(
    map: &mut Map<String, Value>,
) -> Result<(String, String, Map<String, Value>), LineProblem> {
    let custom_id = match map.remove("custom_id") {
        Some(v) => id_from(v, "custom_id")?,
        None => {
            return Err(LineProblem::BadField {
                field: "custom_id",
                reason: "missing: a Batch line needs a custom_id".into(),
            });
        }
    };
    match map.get("method") {
        None => {}
        Some(Value::String(m)) if m.eq_ignore_ascii_case("POST") => {}
        Some(other) => {
            return Err(LineProblem::BadField {
                field: "method",
                reason: format!("only POST is supported, found {other}"),
            });
        }
    }
    let path = match map.get("url") {
        None => "/chat/completions".to_string(),
        Some(Value::String(url)) => match url.strip_prefix("/v1") {
            Some(rest) if rest.starts_with('/') && rest.len() > 1 => rest.to_string(),
            _ => {
                return Err(LineProblem::BadField {
                    field: "url",
                    reason: format!(
                        "must be a path under /v1/, such as /v1/chat/completions, found {url:?}"
                    ),
                });
            }
        },
        Some(other) => {
            return Err(LineProblem::BadField {
                field: "url",
                reason: format!("must be a string, found {}", type_name(other)),
            });
        }
    };
    let body = match map.remove("body") {
        Some(Value::Object(body)) => body,
        Some(other) => {
            return Err(LineProblem::BadField {
                field: "body",
                reason: format!("must be an object, found {}", type_name(&other)),
            });
        }
        None => {
            return Err(LineProblem::BadField {
                field: "body",
                reason: "missing".into(),
            });
        }
    };
    Ok((custom_id, path, body))
}

/// `custom_id` or `id` of a bare or shorthand line, removed from the body; else `line-N`.
fn take_id(map: &mut Map<String, Value>, line: u64) -> Result<String, LineProblem> {
    if let Some(v) = map.remove("custom_id") {
        return id_from(v, "custom_id");
    }
    match map.remove("id") {
        Some(v) => id_from(v, "id"),
        None => Ok(format!("line-{line}")),
    }
}

/// `{"prompt", "system"?, ...}` → a chat body; other fields pass through.
fn shorthand_body(mut map: Map<String, Value>) -> Result<Map<String, Value>, LineProblem> {
    let text_field = |v: Value, field: &'static str| match v {
        Value::String(s) => Ok(s),
        other => Err(LineProblem::BadField {
            field,
            reason: format!("must be a string, found {}", type_name(&other)),
        }),
    };
    let prompt = text_field(map.remove("prompt").unwrap_or(Value::Null), "prompt")?;
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = map.remove("system") {
        let system = text_field(system, "system")?;
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": prompt}));
    map.insert("messages".into(), Value::Array(messages));
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> LineDefaults {
        LineDefaults {
            model: Some("m-default".into()),
            ..LineDefaults::default()
        }
    }

    fn body(job: &Job) -> Value {
        serde_json::from_slice(&job.body).unwrap()
    }

    #[test]
    fn batch_format_line() {
        let line = r#"{"custom_id":"a1","method":"POST","url":"/v1/chat/completions","body":{"model":"x","messages":[{"role":"user","content":"hi"}]}}"#;
        let job = parse_line(line, 3, &defaults()).unwrap();
        assert_eq!(&*job.custom_id, "a1");
        assert_eq!(&*job.path, "/chat/completions");
        assert_eq!(body(&job)["model"], "x");
        assert_eq!(job.line, 3);
    }

    #[test]
    fn bare_body_takes_id_and_default_model() {
        let job = parse_line(
            r#"{"id":7,"messages":[{"role":"user","content":"hi"}]}"#,
            1,
            &defaults(),
        )
        .unwrap();
        assert_eq!(&*job.custom_id, "7");
        let b = body(&job);
        assert!(b.get("id").is_none());
        assert_eq!(b["model"], "m-default");
        let job = parse_line(
            r#"{"model":"q","messages":[{"role":"user","content":"hi"}]}"#,
            9,
            &defaults(),
        )
        .unwrap();
        assert_eq!(&*job.custom_id, "line-9");
        assert_eq!(body(&job)["model"], "q");
    }

    #[test]
    fn shorthand_becomes_chat() {
        let job = parse_line(
            r#"{"prompt":"hello","system":"be brief","temperature":0}"#,
            2,
            &defaults(),
        )
        .unwrap();
        let b = body(&job);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["content"], "hello");
        assert_eq!(b["temperature"], 0);
        assert_eq!(&*job.path, "/chat/completions");
    }

    #[test]
    fn embeddings_body() {
        let job = parse_line(r#"{"model":"e","input":"text"}"#, 1, &defaults()).unwrap();
        assert_eq!(&*job.path, "/embeddings");
    }

    #[test]
    fn problems_are_specific() {
        let d = defaults();
        assert!(matches!(
            parse_line("{nope", 1, &d),
            Err(LineProblem::InvalidJson(_))
        ));
        assert!(matches!(
            parse_line("[1]", 1, &d),
            Err(LineProblem::NotAnObject("an array"))
        ));
        assert_eq!(
            parse_line(r#"{"foo":1}"#, 1, &d).unwrap_err(),
            LineProblem::NoBody
        );
        let missing_body = parse_line(r#"{"custom_id":"a","url":"/v1/chat/completions"}"#, 1, &d);
        assert!(matches!(
            missing_body,
            Err(LineProblem::BadField { field: "body", .. })
        ));
        let get = parse_line(
            r#"{"custom_id":"a","method":"GET","url":"/v1/x","body":{}}"#,
            1,
            &d,
        );
        assert!(matches!(
            get,
            Err(LineProblem::BadField {
                field: "method",
                ..
            })
        ));
        let bad_url = parse_line(
            r#"{"custom_id":"a","url":"/chat","body":{"messages":[1]}}"#,
            1,
            &d,
        );
        assert!(matches!(
            bad_url,
            Err(LineProblem::BadField { field: "url", .. })
        ));
        let no_model = parse_line(r#"{"prompt":"x"}"#, 1, &LineDefaults::default());
        assert_eq!(no_model.unwrap_err(), LineProblem::NoModel);
        let empty = parse_line(r#"{"model":"m","messages":[]}"#, 1, &d);
        assert!(matches!(
            empty,
            Err(LineProblem::BadField {
                field: "messages",
                ..
            })
        ));
    }

    #[test]
    fn an_empty_id_is_said_to_be_empty() {
        let d = defaults();
        let cases = [
            (r#"{"id":"","prompt":"x"}"#, "id", "must not be empty"),
            (
                r#"{"custom_id":"","model":"m","messages":[{"role":"user","content":"x"}]}"#,
                "custom_id",
                "must not be empty",
            ),
            (
                r#"{"custom_id":"","url":"/v1/chat/completions","body":{"messages":[1]}}"#,
                "custom_id",
                "must not be empty",
            ),
            (
                r#"{"id":null,"prompt":"x"}"#,
                "id",
                "must be a non-empty string, found null",
            ),
        ];
        for (line, field, reason) in cases {
            assert_eq!(
                parse_line(line, 1, &d).map(|j| j.custom_id),
                Err(LineProblem::BadField {
                    field,
                    reason: reason.into()
                }),
                "{line}"
            );
        }
        assert_eq!(peek_custom_id(r#"{"id":"","prompt":"x"}"#, 6), "line-6");
    }

    #[test]
    fn configured_models_are_routed_before_the_fingerprint() {
        use crate::provider::routes::Route;
        let mut routes = Routes::new();
        let Value::Object(fields) = serde_json::json!({"max_tokens": 7, "top_p": 0.5}) else {
            unreachable!()
        };
        routes.insert(
            "small",
            Route {
                model: "provider/small-1".into(),
                upstream: 2,
                fields,
            },
        );
        let d = LineDefaults {
            model: Some("small".into()),
            routes: Arc::new(routes),
        };
        // Named by the line, or by --model: routed alike; the line's own fields win.
        for line in [
            r#"{"prompt":"hi","model":"small","max_tokens":3}"#,
            r#"{"prompt":"hi","max_tokens":3}"#,
        ] {
            let job = parse_line(line, 1, &d).unwrap();
            let b = body(&job);
            assert_eq!(b["model"], "provider/small-1");
            assert_eq!(
                (b["max_tokens"].as_u64(), b["top_p"].as_f64()),
                (Some(3), Some(0.5))
            );
            assert_eq!(
                (job.upstream, job.model.as_deref()),
                (2, Some("provider/small-1"))
            );
            let request = parse_request(line, 1, &d).unwrap();
            assert_eq!(request.fingerprint(), job.fingerprint);
            assert_eq!(request.upstream(), 2);
        }
        // A model no route names goes to upstream 0 as written.
        let job = parse_line(r#"{"prompt":"hi","model":"other"}"#, 1, &d).unwrap();
        assert_eq!(
            (job.upstream, body(&job)["model"].as_str()),
            (0, Some("other"))
        );
    }

    #[test]
    fn peek_finds_ids_of_broken_lines() {
        assert_eq!(peek_custom_id(r#"{"custom_id":"z","url":5}"#, 4), "z");
        assert_eq!(peek_custom_id("{broken", 4), "line-4");
        assert_eq!(peek_custom_id(r#"{"id":"q","prompt":3}"#, 4), "q");
    }
}
