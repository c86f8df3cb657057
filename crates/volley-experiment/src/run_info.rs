//! `run.json`: what a run directory holds, so that `report` and `rejudge` can read it
//! without the config: the experiments (datasets and their sizes, models, runs) and
//! every judge that has graded in it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::{ExperimentPlan, VerdictKind};
use crate::record::{RecordError, read_small};

pub const RUN_INFO: &str = "run.json";

/// A run directory's description.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// The configuration file the run was made with (absolute), for `rejudge`.
    #[serde(default)]
    pub config: Option<String>,
    pub experiments: Vec<ExperimentInfo>,
    /// Every judge that graded here, in the order they first did.
    pub judges: Vec<JudgeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentInfo {
    pub name: String,
    pub datasets: Vec<DatasetInfo>,
    pub models: Vec<ModelInfo>,
    pub runs: u32,
    /// The identity of the judge its last run used.
    pub judge: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub path: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub id: String,
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// Its identity ([`crate::plan::JudgeSpec::identity`]).
    pub id: String,
    /// The judge model's name in the config, its id and provider.
    pub model: String,
    pub model_id: String,
    pub provider: String,
    /// The prompt's name (its text is part of the identity).
    pub prompt: String,
    pub verdict: VerdictKind,
}

/// The longest `run.json` read: it describes a run, it holds no rows.
const MAX_RUN_INFO: u64 = 16 << 20;

/// Reads `dir`'s `run.json`; `None` if there is none.
pub fn read(dir: &Path) -> Result<Option<RunInfo>, RecordError> {
    let path = dir.join(RUN_INFO);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_small(&path, MAX_RUN_INFO)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RecordError::Foreign {
            path: path.display().to_string(),
            line: e.line() as u64,
            reason: e.to_string(),
        })
}

/// Writes `experiments` into `dir`'s `run.json`, keeping what it says of other
/// experiments (a run with `--only`) and of earlier judges. `rows[i][j]` is the size
/// of experiment i's dataset j.
pub fn update(
    dir: &Path,
    experiments: &[ExperimentPlan],
    rows: &[Vec<u64>],
    config: Option<&Path>,
) -> Result<RunInfo, RecordError> {
    let mut info = read(dir)?.unwrap_or_default();
    if let Some(config) = config {
        info.config = Some(config.display().to_string());
    }
    for (plan, rows) in experiments.iter().zip(rows) {
        let judge = plan.judge.as_ref().map(|j| {
            let id = j.identity();
            if !info.judges.iter().any(|k| k.id == id) {
                info.judges.push(JudgeInfo {
                    id: id.clone(),
                    model: j.model.name.clone(),
                    model_id: j.model.id.clone(),
                    provider: j.model.provider.clone(),
                    prompt: j.prompt.name.clone(),
                    verdict: j.verdict,
                });
            }
            id
        });
        let entry = ExperimentInfo {
            name: plan.name.clone(),
            datasets: plan
                .datasets
                .iter()
                .zip(rows)
                .map(|(d, &rows)| DatasetInfo {
                    name: d.name.clone(),
                    path: d.path.display().to_string(),
                    rows,
                })
                .collect(),
            models: plan
                .models
                .iter()
                .map(|m| ModelInfo {
                    name: m.name.clone(),
                    id: m.id.clone(),
                    provider: m.provider.clone(),
                })
                .collect(),
            runs: plan.runs,
            judge,
        };
        match info.experiments.iter_mut().find(|e| e.name == plan.name) {
            Some(existing) => *existing = entry,
            None => info.experiments.push(entry),
        }
    }
    write(dir, &info)?;
    Ok(info)
}

/// Replaces `dir`'s `run.json` whole (a temporary file renamed over it).
pub fn write(dir: &Path, info: &RunInfo) -> Result<(), RecordError> {
    std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let path = dir.join(RUN_INFO);
    let tmp = dir.join(format!("{RUN_INFO}.tmp"));
    let bytes = serde_json::to_vec_pretty(info).unwrap_or_default();
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| RecordError::Io {
            path: path.display().to_string(),
            source,
        })
}
