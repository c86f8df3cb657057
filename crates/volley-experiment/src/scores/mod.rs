//! Scores: what the verdicts of a run say about each model, with how sure it is.

pub mod stats;

pub mod compute;
pub mod html;
pub mod markdown;
mod view;

use std::path::Path;

pub use compute::{Scores, compute};

use crate::record::RecordError;

pub const SCORES_JSON: &str = "scores.json";
pub const SCORES_MD: &str = "scores.md";

/// Computes the scores of `dir` from its files and writes `scores.json` and
/// `scores.md` beside them.
pub fn write(dir: &Path) -> Result<Scores, RecordError> {
    let scores = compute(dir)?;
    let json = serde_json::to_vec_pretty(&scores).unwrap_or_default();
    for (name, bytes) in [
        (SCORES_JSON, json),
        (SCORES_MD, markdown::render(&scores).into_bytes()),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| RecordError::Io {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(scores)
}
