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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
