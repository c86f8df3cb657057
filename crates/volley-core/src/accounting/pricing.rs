//! What tokens cost, for providers that do not report `usage.cost` (SPEC §4).
//!
//! `--pricing FILE` maps model ids to USD per million tokens, as JSON or TOML:
//!
//! ```toml
//! ["openai/gpt-4o-mini"]
//! prompt = 0.15
//! completion = 0.60
//! cached = 0.075      # optional: cached prompt tokens
//! reasoning = 0.60    # optional: reasoning tokens, part of completion
//! ```
//!
//! OpenRouter's model list (`GET /models`, prices as decimal strings in USD per token)
//! fills the same table; a `--pricing` file wins over it model by model.
//!
//! A model that is not in the table has an unknown cost, never a cost of zero.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::accounting::usage::Usage;

const PER: f64 = 1_000_000.0;

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
    /// Cached prompt tokens; the prompt price when not given.
    pub cached: Option<f64>,
    /// Reasoning tokens (counted inside completion tokens); the completion price when
    /// not given.
    pub reasoning: Option<f64>,
    /// A fixed price per request, in USD (not per million).
    #[serde(default)]
    pub request: Option<f64>,
}

/// Why a pricing file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read pricing file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("pricing file {path} is not a valid {format} price table: {message}")]
    Parse {
        path: String,
        /// `JSON` for a `.json` file, `TOML` for any other (JSON tried too).
        format: &'static str,
        message: String,
    },
    #[error("pricing file {path}: model {model:?}: {message}")]
    Entry {
        path: String,
        model: String,
        message: String,
    },
}

/// The price table.
#[derive(Debug, Clone, Default)]
pub struct Pricing(HashMap<String, Price>);

impl Pricing {
    /// Reads a JSON (`.json`) or TOML file; other names are tried as both.
    pub fn load(path: &Path) -> Result<Pricing, PricingError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PricingError::Read {
            path: shown.clone(),
            source,
        })?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        // Read as a table of anything first, then each model's prices, so that an error
        // in one entry names its model.
        type Entries = Vec<(String, Result<Price, String>)>;
        let from_json = |text: &str| -> Result<Entries, String> {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).map_err(|e| e.to_string())?;
            Ok(map
                .into_iter()
                .map(|(model, v)| (model, serde_json::from_value(v).map_err(|e| e.to_string())))
                .collect())
        };
        let parsed = if is_json {
            from_json(&text)
        } else {
            match toml::from_str::<toml::Table>(&text) {
                Ok(table) => Ok(table
                    .into_iter()
                    .map(|(model, v)| (model, v.try_into::<Price>().map_err(|e| e.to_string())))
                    .collect()),
                Err(toml_error) => from_json(&text).map_err(|_| toml_error.to_string()),
            }
        };
        let entries = parsed.map_err(|message| PricingError::Parse {
            path: shown.clone(),
            format: if is_json { "JSON" } else { "TOML" },
            message,
        })?;
        let mut table = HashMap::with_capacity(entries.len());
        for (model, price) in entries {
            let price = price.map_err(|message| PricingError::Entry {
                path: shown.clone(),
                model: model.clone(),
                message,
            })?;
            let prices = [
                Some(price.prompt),
                Some(price.completion),
                price.cached,
                price.reasoning,
                price.request,
            ];
            if prices.iter().flatten().any(|v| *v < 0.0 || !v.is_finite()) {
                return Err(PricingError::Entry {
                    path: shown,
                    model,
                    message: "a price is negative or not a finite number".into(),
                });
            }
            table.insert(model, price);
        }
        Ok(Pricing(table))
    }

    /// The table of an OpenRouter-style model list: `data[].id` with `pricing.prompt`,
    /// `completion`, `input_cache_read`, `internal_reasoning` and `request` as decimal
    /// strings in USD per token (per request for `request`). Models without a prompt
    /// and completion price are left out: their cost stays unknown.
    pub fn from_model_list(list: &serde_json::Value) -> Pricing {
        let per_token = |p: &serde_json::Value, name: &str| -> Option<f64> {
            let v = p.get(name)?;
            let n = match v {
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
                other => other.as_f64()?,
            };
            // OpenRouter writes "-1" for a price that varies (e.g. an auto router).
            (n.is_finite() && n >= 0.0).then_some(n)
        };
        let models = list
            .get("data")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let table = models
            .iter()
            .filter_map(|m| {
                let id = m.get("id")?.as_str()?;
                let p = m.get("pricing")?;
                let price = Price {
                    prompt: per_token(p, "prompt")? * PER,
                    completion: per_token(p, "completion")? * PER,
                    // "0" for cache reads or reasoning is read as "no separate
                    // price": the prompt or completion price applies, which never
                    // undercounts.
                    cached: per_token(p, "input_cache_read")
                        .filter(|v| *v > 0.0)
                        .map(|v| v * PER),
                    reasoning: per_token(p, "internal_reasoning")
                        .filter(|v| *v > 0.0)
                        .map(|v| v * PER),
                    request: per_token(p, "request").filter(|v| *v > 0.0),
                };
                Some((id.to_string(), price))
            })
            .collect();
        Pricing(table)
    }

    /// Adds `other`'s models, replacing this table's prices for the same model, with
    /// or without a vendor prefix (a file's `gpt-4o-mini` replaces the list's
    /// `openai/gpt-4o-mini`). `other`'s own entries all stay, whatever their names.
    pub fn overridden_by(mut self, other: &Pricing) -> Pricing {
        let replaced: std::collections::HashSet<&str> = other.0.keys().map(|id| bare(id)).collect();
        self.0.retain(|mine, _| !replaced.contains(bare(mine)));
        self.0
            .extend(other.0.iter().map(|(id, price)| (id.clone(), *price)));
        self
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The price of a model: its exact id, else the id without (or with) a vendor
    /// prefix, so `gpt-4o-mini` prices `openai/gpt-4o-mini` and the other way round.
    /// When several vendors' models share that name at different prices, the price is
    /// unknown rather than a guess.
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(p) = self.0.get(model) {
            return Some(p);
        }
        let name = bare(model);
        if let Some(p) = self.0.get(name) {
            return Some(p);
        }
        let mut same_name = self
            .0
            .iter()
            .filter(|(id, _)| bare(id) == name)
            .map(|(_, p)| p);
        let first = same_name.next()?;
        same_name.all(|p| p == first).then_some(first)
    }

    /// The cost of an attempt's usage, if the model has a price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let p = self.price(model)?;
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let cost = (usage.prompt_tokens - cached) as f64 * p.prompt
            + cached as f64 * p.cached.unwrap_or(p.prompt)
            + (usage.completion_tokens - reasoning) as f64 * p.completion
            + reasoning as f64 * p.reasoning.unwrap_or(p.completion);
        Some(cost / PER + p.request.unwrap_or(0.0))
    }
}

/// A model id without its vendor prefix: `openai/gpt-4o-mini` → `gpt-4o-mini`.
fn bare(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, cached: u64, completion: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
            cost: None,
        }
    }

    #[test]
    fn toml_and_json_tables_price_every_kind_of_token() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("p.toml");
        std::fs::write(
            &toml_path,
            "[\"openai/gpt-4o-mini\"]\nprompt = 1.0\ncompletion = 4.0\ncached = 0.5\nreasoning = 8.0\n",
        )
        .unwrap();
        let p = Pricing::load(&toml_path).unwrap();
        // 1000 prompt (200 cached), 500 completion (100 reasoning):
        // 800×1 + 200×0.5 + 400×4 + 100×8 = 3300 per million.
        let c = p
            .cost("openai/gpt-4o-mini", &usage(1000, 200, 500, 100))
            .unwrap();
        assert!((c - 0.0033).abs() < 1e-12, "{c}");
        assert!(
            p.cost("gpt-4o-mini", &usage(1000, 0, 0, 0)).is_some(),
            "bare id matches"
        );
        assert_eq!(
            p.cost("other/model", &usage(1, 0, 1, 0)),
            None,
            "unknown is unknown, not 0"
        );

        let json_path = dir.path().join("p.json");
        std::fs::write(&json_path, r#"{"m": {"prompt": 2, "completion": 2}}"#).unwrap();
        let p = Pricing::load(&json_path).unwrap();
        assert!((p.cost("vendor/m", &usage(500_000, 0, 500_000, 0)).unwrap() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn openrouter_model_list_prices_per_token() {
        let list = serde_json::json!({"data": [
            {"id": "openai/gpt-4o-mini", "pricing": {"prompt": "0.00000015", "completion": "0.0000006",
                "request": "0", "input_cache_read": "0.000000075", "internal_reasoning": "0"}},
            {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
            {"id": "no/pricing"}
        ]});
        let p = Pricing::from_model_list(&list);
        assert_eq!(p.len(), 1, "varying and missing prices stay unknown");
        let c = p
            .cost("openai/gpt-4o-mini", &usage(1000, 400, 100, 0))
            .unwrap();
        // 600 × 0.15 + 400 × 0.075 + 100 × 0.6 = 180 per million.
        assert!((c - 0.000180).abs() < 1e-12, "{c}");
        assert_eq!(p.cost("openrouter/auto", &usage(1, 0, 1, 0)), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"gpt-4o-mini": {"prompt": 1, "completion": 1}}"#).unwrap();
        let merged = p.overridden_by(&Pricing::load(&path).unwrap());
        let c = merged
            .cost("openai/gpt-4o-mini", &usage(1_000_000, 0, 0, 0))
            .unwrap();
        assert!(
            (c - 1.0).abs() < 1e-12,
            "the file wins, bare id or not: {c}"
        );
    }

    #[test]
    fn bad_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[m]\nprompt = -1.0\ncompletion = 1.0\n").unwrap();
        assert!(matches!(
            Pricing::load(&path),
            Err(PricingError::Entry { .. })
        ));
        std::fs::write(&path, "[m]\nprompt = 1.0\n").unwrap();
        let err = Pricing::load(&path).unwrap_err().to_string();
        assert!(err.contains("completion"), "{err}");
        std::fs::write(&path, "[m]\nprompt = nan\ncompletion = 1.0\n").unwrap();
        let err = Pricing::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"m\"") && err.contains("finite"), "{err}");
        // In JSON too, the entry at fault is named.
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"ok": {"prompt": 1, "completion": 1}, "vendor/bad": {"prompt": 1}}"#,
        )
        .unwrap();
        let err = Pricing::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("p.json") && err.contains("\"vendor/bad\"") && err.contains("completion"),
            "{err}"
        );
    }

    #[test]
    fn same_named_models_of_two_vendors_are_never_confused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[\"openai/m\"]\nprompt = 1.0\ncompletion = 1.0\n[\"azure/m\"]\nprompt = 2.0\ncompletion = 2.0\n",
        )
        .unwrap();
        let file = Pricing::load(&path).unwrap();
        let list = Pricing::from_model_list(&serde_json::json!({"data": [
            {"id": "openai/m", "pricing": {"prompt": "0.000009", "completion": "0.000009"}},
            {"id": "other/x", "pricing": {"prompt": "0.000001", "completion": "0.000001"}}
        ]}));
        let merged = list.overridden_by(&file);
        // Both of the file's entries stay, each at its own price; the list's other
        // model too.
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.price("openai/m").unwrap().prompt, 1.0);
        assert_eq!(merged.price("azure/m").unwrap().prompt, 2.0);
        assert!(merged.price("other/x").is_some());
        // A bare `m` could be either: unknown, not a guess.
        assert_eq!(merged.price("m"), None);
        // Unless they cost the same.
        std::fs::write(
            &path,
            "[\"openai/m\"]\nprompt = 1.0\ncompletion = 1.0\n[\"azure/m\"]\nprompt = 1.0\ncompletion = 1.0\n",
        )
        .unwrap();
        let same = Pricing::load(&path).unwrap();
        assert_eq!(same.price("m").unwrap().prompt, 1.0);
    }
}
