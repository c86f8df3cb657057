//! The file exactly as written: serde mirrors of its tables, every one refusing keys it
//! does not know. Values are checked and resolved afterwards ([`crate::file`]), where
//! an error can name the rule ("must be at least 1") rather than a type.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::flags::FlagValue;
use crate::types::{Expect, Lanes, Verdict};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub run: Option<Named<FlagValue>>,
    pub serve: Option<Named<FlagValue>>,
    pub experiment: Option<Named<FlagValue>>,
    pub providers: Option<Named<RawProvider>>,
    pub models: Option<Named<RawModel>>,
    pub datasets: Option<Named<RawDataset>>,
    pub prompts: Option<Named<RawPrompt>>,
    pub experiments: Option<Named<RawExperiment>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub base_url: String,
    pub api_key_env: OneOrMany,
    // Signed, so that a negative limit is said to be one ("must be at least 1, found
    // -5") rather than "not a whole number".
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub lanes: Option<Lanes>,
    pub headers: Option<Named<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub reasoning: Option<Value>,
    pub body: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataset {
    pub path: String,
    pub id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrompt {
    pub system: Option<String>,
    pub user: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExperiment {
    pub datasets: Vec<String>,
    pub models: Vec<String>,
    pub runs: Option<i64>,
    pub prompt: String,
    pub expect: Option<Expect>,
    pub json_schema: Option<String>,
    pub concurrency: Option<i64>,
    pub max_cost_usd: Option<f64>,
    pub postprocess: Option<RawPostprocess>,
    pub judge: Option<RawJudge>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPostprocess {
    pub command: Vec<String>,
    pub timeout_secs: Option<f64>,
    pub workers: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJudge {
    pub model: String,
    pub prompt: String,
    pub verdict: Option<Verdict>,
}

/// A table of named tables (or values), in the order the file writes them.
#[derive(Debug)]
pub(crate) struct Named<T>(pub Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Named<T> {
        Named(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Named<T>, D::Error> {
        struct NamedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for NamedVisitor<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(Named(entries))
            }
        }

        deserializer.deserialize_map(NamedVisitor(std::marker::PhantomData))
    }
}

/// A string or a list of strings (`api_key_env = "KEY"` or `["KEY_1", "KEY_2"]`).
#[derive(Debug)]
pub(crate) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OneOrMany, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_string()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(OneOrMany(all))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}
