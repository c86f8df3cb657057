//! Token estimates for tokens-per-minute limits (SPEC §5).
//!
//! A request costs its prompt tokens, counted with the model's tokenizer (tiktoken's
//! tables are embedded, so this works offline), plus its `max_tokens`. Models tiktoken
//! does not know (Claude, Llama, ... on OpenRouter) are counted with `o200k_base`: not
//! their tokenizer, but within a few percent for English text, and the estimate is only
//! a booking that the real `usage` corrects once the reply arrives.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::defaults;

/// Framing tokens per chat message and per reply, as OpenAI's chat format adds them.
const TOKENS_PER_MESSAGE: u64 = 4;
const TOKENS_PER_REPLY: u64 = 3;

/// The tokenizer for a model id such as `gpt-4o-mini` or `openai/gpt-4o-mini`.
fn tokenizer(model: Option<&str>) -> &'static CoreBPE {
    model
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .and_then(|m| tiktoken_rs::bpe_for_model(m).ok())
        .unwrap_or_else(tiktoken_rs::o200k_base_singleton)
}

/// The tokens a request body is expected to consume: prompt plus completion allowance.
pub fn estimate(body: &[u8], model: Option<&str>) -> u64 {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        // Cannot happen for bodies volley built; a size-based guess keeps it total.
        return (body.len() as u64).div_ceil(4) + defaults::COMPLETION_TOKENS_ESTIMATE;
    };
    let bpe = tokenizer(model);
    let count = |text: &str| bpe.encode_with_special_tokens(text).len() as u64;
    let prompt = match (body.get("messages"), body.get("input")) {
        (Some(Value::Array(messages)), _) => {
            messages
                .iter()
                .map(|m| TOKENS_PER_MESSAGE + text_of(m.get("content")).map_or(0, |t| count(&t)))
                .sum::<u64>()
                + TOKENS_PER_REPLY
        }
        (_, Some(Value::String(s))) => count(s),
        (_, Some(Value::Array(items))) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| count(&i.to_string()), count))
            .sum(),
        _ => (body.to_string().len() as u64).div_ceil(4),
    };
    let completion = if body.get("input").is_some() && body.get("messages").is_none() {
        // Embeddings produce no completion tokens.
        0
    } else {
        body.get("max_tokens")
            .or_else(|| body.get("max_completion_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(defaults::COMPLETION_TOKENS_ESTIMATE)
    };
    // `max_tokens` comes from the input file: it may be anything up to u64::MAX.
    prompt.saturating_add(completion)
}

/// The text of a message's content: a string, or its text parts joined.
fn text_of(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_plus_max_tokens() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello world"}],"max_tokens":100}"#;
        // "Hello world" is 2 tokens in o200k; 4 framing + 3 reply priming.
        assert_eq!(estimate(body, Some("gpt-4o")), 2 + 4 + 3 + 100);
        let routed = estimate(body, Some("openai/gpt-4o"));
        assert_eq!(
            routed, 109,
            "an OpenRouter model id uses the same tokenizer"
        );
    }

    #[test]
    fn unknown_models_and_defaults() {
        let body =
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hello world"}]}]}"#;
        assert_eq!(
            estimate(body, Some("meta-llama/llama-3.1-8b-instruct")),
            2 + 4 + 3 + defaults::COMPLETION_TOKENS_ESTIMATE
        );
        let emb = br#"{"model":"text-embedding-3-small","input":["Hello world","Hello"]}"#;
        assert_eq!(estimate(emb, Some("text-embedding-3-small")), 3);
    }
}
