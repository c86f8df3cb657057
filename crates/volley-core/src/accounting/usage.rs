//! Token and cost accounting for one attempt or a sum of attempts.
//!
//! Every attempt that came back with a `usage` object is recorded, success or not, so
//! that the totals volley reports equal what the provider bills (SPEC §4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens (and, when the provider reports it, cost) of one or more attempts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `completion_tokens_details.reasoning_tokens`: part of `completion_tokens`.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`: part of `prompt_tokens`.
    #[serde(default)]
    pub cached_tokens: u64,
    /// `usage.cost` in USD when the provider reports it (OpenRouter always does).
    /// `None` means unknown, which is never the same as zero.
    #[serde(default)]
    pub cost: Option<f64>,
}

impl Usage {
    /// Nothing recorded: no tokens and no cost.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// Reads the `usage` object of a reply body; `None` when the body carries none.
    pub fn from_body(body: &Value) -> Option<Usage> {
        body.get("usage").and_then(Usage::from_usage)
    }

    /// Reads an OpenAI/OpenRouter `usage` object.
    pub fn from_usage(usage: &Value) -> Option<Usage> {
        let usage = usage.as_object()?;
        let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt = count(usage.get("prompt_tokens").or(usage.get("input_tokens")));
        let completion = count(
            usage
                .get("completion_tokens")
                .or(usage.get("output_tokens")),
        );
        let total = usage
            .get("total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| prompt.saturating_add(completion));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
            reasoning_tokens: count(
                usage
                    .get("completion_tokens_details")
                    .and_then(|d| d.get("reasoning_tokens")),
            ),
            cached_tokens: count(
                usage
                    .get("prompt_tokens_details")
                    .and_then(|d| d.get("cached_tokens")),
            ),
            // A cost that is not a finite, non-negative number is unknown, not a refund.
            cost: usage
                .get("cost")
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0),
        })
    }

    /// Adds another attempt's usage. A cost stays known only while every part is known.
    ///
    /// An empty part (no tokens, no cost) adds nothing: it is what an output line
    /// records for a request whose attempts never got a `usage` object (a 400, a
    /// timeout), and nothing billed cannot make a known total unknown.
    pub fn add(&mut self, other: &Usage) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            // Nothing recorded yet: the sum is exactly the other part, cost included.
            *self = *other;
            return;
        }
        // Counts come from the provider: an absurd one must not overflow.
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cost = match (self.cost, other.cost) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
}

/// A reply's `usage` object, read straight from the reply body rather than from a JSON
/// tree: building a tree of every reply's usage was a dozen allocations on the hot
/// path. It reads exactly what [`Usage::from_usage`] reads from a tree, as leniently: a
/// figure of the wrong kind counts as absent, a repeated key keeps its last value, and
/// anything but an object is no usage at all.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct UsageShape(pub Option<Usage>);

/// A JSON value where a figure is expected: a number of one kind, an object (a
/// `*_details` object, or the usage object itself) with the figures volley reads in it,
/// or anything else.
#[derive(Debug)]
enum Figure {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Object(Box<Figures>),
    Other,
}

impl Figure {
    /// As `Value::as_u64`: a non-negative integer.
    fn as_u64(&self) -> Option<u64> {
        match self {
            Figure::Unsigned(n) => Some(*n),
            _ => None,
        }
    }

    /// As `Value::as_f64`: any number.
    fn as_f64(&self) -> Option<f64> {
        match self {
            Figure::Unsigned(n) => Some(*n as f64),
            Figure::Signed(n) => Some(*n as f64),
            Figure::Float(f) => Some(*f),
            Figure::Object(_) | Figure::Other => None,
        }
    }

    /// As `Value::get` on an object: its figures, when it is one.
    fn object(&self) -> Option<&Figures> {
        match self {
            Figure::Object(figures) => Some(figures),
            _ => None,
        }
    }
}

/// The keys of a `usage` object (and of its `*_details` objects) volley reads.
enum Key {
    Prompt,
    Input,
    Completion,
    Output,
    Total,
    CompletionDetails,
    PromptDetails,
    Reasoning,
    Cached,
    Cost,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "prompt_tokens" => Key::Prompt,
                    "input_tokens" => Key::Input,
                    "completion_tokens" => Key::Completion,
                    "output_tokens" => Key::Output,
                    "total_tokens" => Key::Total,
                    "completion_tokens_details" => Key::CompletionDetails,
                    "prompt_tokens_details" => Key::PromptDetails,
                    "reasoning_tokens" => Key::Reasoning,
                    "cached_tokens" => Key::Cached,
                    "cost" => Key::Cost,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The figures of an object as found: `None` where the key is absent, so "present but
/// not a number" stays apart from "absent".
#[derive(Debug, Default)]
struct Figures {
    prompt: Option<Figure>,
    input: Option<Figure>,
    completion: Option<Figure>,
    output: Option<Figure>,
    total: Option<Figure>,
    completion_details: Option<Figure>,
    prompt_details: Option<Figure>,
    reasoning: Option<Figure>,
    cached: Option<Figure>,
    cost: Option<Figure>,
}

/// Accepts any JSON value, keeping only what a figure can be.
struct FigureVisitor;

impl<'de> serde::de::Visitor<'de> for FigureVisitor {
    type Value = Figure;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Figure, E> {
        Ok(Figure::Other)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Figure, E> {
        // As `Value`, which keeps a non-negative integer as unsigned however it came.
        Ok(u64::try_from(n).map_or(Figure::Signed(n), Figure::Unsigned))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Figure, E> {
        Ok(Figure::Unsigned(n))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Figure, E> {
        Ok(Figure::Float(f))
    }
    fn visit_str<E>(self, _: &str) -> Result<Figure, E> {
        Ok(Figure::Other)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Figure, E> {
        Ok(Figure::Other)
    }
    fn visit_unit<E>(self) -> Result<Figure, E> {
        Ok(Figure::Other)
    }
    fn visit_none<E>(self) -> Result<Figure, E> {
        Ok(Figure::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Figure, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Figure::Other)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Figure, A::Error> {
        let mut figures = Figures::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Prompt => &mut figures.prompt,
                Key::Input => &mut figures.input,
                Key::Completion => &mut figures.completion,
                Key::Output => &mut figures.output,
                Key::Total => &mut figures.total,
                Key::CompletionDetails => &mut figures.completion_details,
                Key::PromptDetails => &mut figures.prompt_details,
                Key::Reasoning => &mut figures.reasoning,
                Key::Cached => &mut figures.cached,
                Key::Cost => &mut figures.cost,
                Key::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(Figure::Object(Box::new(figures)))
    }
}

impl<'de> Deserialize<'de> for Figure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Figure, D::Error> {
        d.deserialize_any(FigureVisitor)
    }
}

impl<'de> Deserialize<'de> for UsageShape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UsageShape, D::Error> {
        let usage = Figure::deserialize(d)?;
        let Some(f) = usage.object() else {
            return Ok(UsageShape(None));
        };
        // As `from_usage`: a key present with the wrong kind of value counts as 0, not
        // as absent, so `prompt_tokens: "x"` does not fall back to `input_tokens`.
        let count = |n: Option<&Figure>| n.and_then(Figure::as_u64).unwrap_or(0);
        let prompt = count(f.prompt.as_ref().or(f.input.as_ref()));
        let completion = count(f.completion.as_ref().or(f.output.as_ref()));
        let detail = |d: &Option<Figure>, pick: fn(&Figures) -> &Option<Figure>| {
            count(
                d.as_ref()
                    .and_then(Figure::object)
                    .and_then(|d| pick(d).as_ref()),
            )
        };
        Ok(UsageShape(Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: f
                .total
                .as_ref()
                .and_then(Figure::as_u64)
                .unwrap_or_else(|| prompt.saturating_add(completion)),
            reasoning_tokens: detail(&f.completion_details, |d| &d.reasoning),
            cached_tokens: detail(&f.prompt_details, |d| &d.cached),
            cost: f
                .cost
                .as_ref()
                .and_then(Figure::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shape_read_from_a_body_equals_the_tree_read() {
        let cases = [
            r#"{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"cost":0.0021}"#,
            r#"{"input_tokens":5,"output_tokens":7}"#,
            r#"{"prompt_tokens":"12","input_tokens":5,"completion_tokens":-3,"total_tokens":1.5}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2,"cost":-1,"extra":{"a":[1,{"b":2}]}}"#,
            r#"{"completion_tokens_details":{"reasoning_tokens":9},"prompt_tokens_details":{"cached_tokens":4}}"#,
            r#"{"completion_tokens_details":[1],"prompt_tokens_details":null,"cost":"0.1"}"#,
            r#"{"cost":1e300,"total_tokens":18446744073709551615}"#,
            r#"{"cost":1,"reasoning_tokens":3}"#,
            r#"{}"#,
            r#"[]"#,
            r#"null"#,
            r#""usage""#,
            r#"7"#,
        ];
        for case in cases {
            let tree: Value = serde_json::from_str(case).unwrap();
            let shape: UsageShape = serde_json::from_str(case).unwrap();
            assert_eq!(shape.0, Usage::from_usage(&tree), "{case}");
        }
    }

    #[test]
    fn reads_openai_and_openrouter_usage() {
        let body = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}, "cost": 0.001}});
        let u = Usage::from_body(&body).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 5, 15)
        );
        assert_eq!((u.cached_tokens, u.reasoning_tokens), (4, 2));
        assert_eq!(u.cost, Some(0.001));
        assert!(Usage::from_body(&json!({"choices": []})).is_none());
    }

    #[test]
    fn summing_keeps_cost_known_only_when_every_part_is() {
        let known = Usage {
            prompt_tokens: 1,
            total_tokens: 1,
            cost: Some(0.5),
            ..Usage::default()
        };
        let unknown = Usage {
            prompt_tokens: 2,
            total_tokens: 2,
            ..Usage::default()
        };
        let mut sum = Usage::default();
        sum.add(&known);
        assert_eq!(sum.cost, Some(0.5));
        sum.add(&known);
        assert_eq!(sum.cost, Some(1.0));
        sum.add(&unknown);
        assert_eq!(sum.cost, None);
        assert_eq!(sum.total_tokens, 4);
    }

    #[test]
    fn hostile_figures_neither_overflow_nor_refund() {
        let u = Usage::from_usage(&serde_json::json!({
            "prompt_tokens": u64::MAX, "completion_tokens": 1, "cost": -1e300
        }))
        .unwrap();
        assert_eq!(u.total_tokens, u64::MAX);
        assert_eq!(u.cost, None, "a negative cost is unknown");
    }

    #[test]
    fn a_request_that_got_no_usage_leaves_a_known_cost_known() {
        let known = Usage {
            prompt_tokens: 3,
            total_tokens: 3,
            cost: Some(0.25),
            ..Usage::default()
        };
        let mut sum = Usage::default();
        sum.add(&known);
        sum.add(&Usage::default());
        assert_eq!(sum, known);
        let mut sum = Usage::default();
        sum.add(&Usage::default());
        sum.add(&known);
        assert_eq!(sum, known);
    }
}
