//! Model routing (SPEC §10): a request whose `model` names a configured model is sent
//! to that model's upstream, as the provider's model id, with the model's settings
//! (`max_tokens`, `temperature`, extra body fields) wherever the request does not set
//! them itself.
//!
//! The binary builds the table from the configuration file; it is applied where a
//! request is read (input lines of `volley run`, gateway uploads and batches, proxied
//! calls), before the request's fingerprint is taken, so every path routes alike and
//! a changed route shows as a changed request on resume.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Where and how one configured model is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The provider's model id, sent as the body's `model`.
    pub model: String,
    /// The engine's upstream that serves it.
    pub upstream: usize,
    /// Body fields added to a request that does not set them (the request's own win).
    pub fields: Map<String, Value>,
}

/// Configured model names and their routes. Empty by default: nothing is routed and
/// every request goes to upstream 0 as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    by_name: HashMap<String, Route>,
}

impl Routes {
    /// No routes.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Routes requests whose `model` is `name` by `route` (replacing any route of that
    /// name).
    pub fn insert(&mut self, name: impl Into<String>, route: Route) {
        self.by_name.insert(name.into(), route);
    }

    /// The route of the configured model `name`.
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.by_name.get(name)
    }

    /// Whether no model is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Routes a request body in place: when its `model` names a configured model, the
    /// model id replaces the name and the route's fields fill the gaps. Returns the
    /// route taken; `None` leaves the body untouched (a model id sent as written).
    pub fn apply(&self, body: &mut Map<String, Value>) -> Option<&Route> {
        if self.by_name.is_empty() {
            // No configuration: every line of a plain run passes here.
            return None;
        }
        let route = self.by_name.get(body.get("model")?.as_str()?)?;
        fill(body, &route.model, &route.fields);
        Some(route)
    }
}

/// Sets `body`'s model to `id` and adds each of `fields` the body does not set itself
/// (the request's own fields win): how a configured model's settings reach a request.
pub fn fill(body: &mut Map<String, Value>, id: &str, fields: &Map<String, Value>) {
    body.insert("model".into(), Value::String(id.to_owned()));
    for (key, value) in fields {
        body.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes() -> Routes {
        let mut routes = Routes::new();
        let Value::Object(fields) =
            json!({"max_tokens": 512, "temperature": 0.0, "provider": {"order": ["openai"]}})
        else {
            unreachable!()
        };
        routes.insert(
            "small",
            Route {
                model: "openai/gpt-4o-mini".into(),
                upstream: 1,
                fields,
            },
        );
        routes
    }

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_configured_name_is_routed_and_the_line_wins() {
        let mut b = body(json!({"model": "small", "max_tokens": 5, "messages": []}));
        let route = routes().apply(&mut b).map(|r| r.upstream);
        assert_eq!(route, Some(1));
        assert_eq!(b["model"], "openai/gpt-4o-mini");
        assert_eq!(b["max_tokens"], 5);
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["provider"]["order"][0], "openai");
    }

    #[test]
    fn other_models_are_left_as_written() {
        for value in [
            json!({"model": "openai/gpt-4o"}),
            json!({"model": 3}),
            json!({}),
        ] {
            let mut b = body(value.clone());
            assert!(routes().apply(&mut b).is_none());
            assert_eq!(Value::Object(b), value);
        }
    }
}
