//! `volley experiment run | rejudge | report`: the configuration file's experiments
//! turned into a plan (`volley_experiment::plan`), run on one engine, and scored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use tokio_util::sync::CancellationToken;
use volley_config::{ConfigFile, Expect, Verdict};
use volley_core::defaults;
use volley_core::observe::events::{EventBus, Observer};
use volley_core::observe::stats::RunStats;
use volley_core::provider::validate::ResponseCheck;
use volley_core::runner::{LaneWatch, Target};
use volley_core::store::claim::{NamedFile, check_distinct};
use volley_experiment::pipeline::{self, Progress, RunEnd, RunOptions};
use volley_experiment::plan::{
    DatasetSpec, ExperimentPlan, JudgeSpec, ModelSpec, PostprocessSpec, PromptSpec, VerdictKind,
};
use volley_experiment::{record, run_info, scores};

use crate::cli::{
    DashboardArgs, DisplayArgs, EngineArgs, ExperimentCommand, ExperimentReportArgs,
    ExperimentRunArgs, RejudgeArgs,
};
use crate::commands::engine;
use crate::dashboard::Live;
use crate::exit::Exit;
use crate::logging::{self, BarSlot};
use crate::progress::{self, Counted, EventLog};

/// `file` is `experiment run`'s CONFIG as the command line's parse loaded it (its
/// `[experiment]` defaults are in `command` already): read once, so the flags and the
/// experiments come from the same text.
pub async fn experiment(
    command: ExperimentCommand,
    file: Option<ConfigFile>,
) -> anyhow::Result<Exit> {
    match command {
        ExperimentCommand::Run(args) => run(*args, file).await,
        ExperimentCommand::Rejudge(args) => rejudge(*args).await,
        ExperimentCommand::Report(args) => report(&args),
    }
}

async fn run(args: ExperimentRunArgs, file: Option<ConfigFile>) -> anyhow::Result<Exit> {
    let file = match file {
        Some(file) => file,
        None => ConfigFile::load(&args.config)?,
    };
    let upstreams = engine::Upstreams::resolve(&args.engine, Some(&file))?;
    let mut plans = plans(&file)?;
    if !args.only.is_empty() {
        for name in &args.only {
            if !plans.iter().any(|p| &p.name == name) {
                let known: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
                return Err(anyhow!(
                    "--only {name}: no experiment of that name in {} (configured: {})",
                    args.config.display(),
                    known.join(", ")
                ));
            }
        }
        plans.retain(|p| args.only.contains(&p.name));
    }
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => default_out(&args.config),
    };
    let (end, dashboard) = execute(
        &args.engine,
        &args.display,
        Some(&args.dashboard),
        &file,
        upstreams,
        &plans,
        &out,
        true,
    )
    .await?;
    let exit = finish(&out, &end);
    if let Some(live) = dashboard {
        live.linger(crate::commands::mock::shutdown_signal()).await;
    }
    exit
}

/// `volley-runs/<config stem>`: the same command resumes the same run.
fn default_out(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "experiment".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("volley-runs").join(stem)
}

async fn rejudge(args: RejudgeArgs) -> anyhow::Result<Exit> {
    let info = run_info::read(&args.run_dir)?.ok_or_else(|| {
        anyhow!(
            "{}: not a run directory (no run.json)",
            args.run_dir.display()
        )
    })?;
    let config = match (&args.config, &info.config) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => {
            return Err(anyhow!(
                "{}: the run does not say its configuration file; name it with --config",
                args.run_dir.display()
            ));
        }
    };
    let (file, upstreams) = crate::config::load(&config, &args.engine)?;
    let judge_model = model_spec(&file, &args.judge).ok_or_else(|| {
        let known: Vec<&str> = file.models.iter().map(|m| m.name.as_str()).collect();
        anyhow!(
            "--judge {}: no model of that name in {} (configured: {})",
            args.judge,
            config.display(),
            known.join(", ")
        )
    })?;
    let template = match &args.template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --template {}", path.display()))?,
        ),
        None => None,
    };
    let mut plans = plans(&file)?;
    // Only the experiments this directory ran, graded by the new judge.
    plans.retain(|p| info.experiments.iter().any(|e| e.name == p.name));
    for plan in &mut plans {
        let (prompt, verdict) = match (&plan.judge, &template) {
            (_, Some(text)) => (
                PromptSpec {
                    name: args
                        .template
                        .as_ref()
                        .map_or_else(String::new, |p| p.display().to_string()),
                    system: None,
                    user: text.clone(),
                },
                plan.judge
                    .as_ref()
                    .map_or(VerdictKind::Correct, |j| j.verdict),
            ),
            (Some(judge), None) => (judge.prompt.clone(), judge.verdict),
            (None, None) => {
                return Err(anyhow!(
                    "experiment \"{}\" has no judge prompt to reuse; give one with --template FILE",
                    plan.name
                ));
            }
        };
        plan.judge = Some(JudgeSpec {
            model: judge_model.clone(),
            prompt,
            verdict,
        });
    }
    let (end, _) = execute(
        &args.engine,
        &args.display,
        None,
        &file,
        upstreams,
        &plans,
        &args.run_dir,
        false,
    )
    .await?;
    finish(&args.run_dir, &end)
}

fn report(args: &ExperimentReportArgs) -> anyhow::Result<Exit> {
    if let Some(html) = &args.html {
        // `--html answers.jsonl` must not replace the run's record, nor the
        // configuration file and datasets a resume or a rejudge reads again.
        let mut inputs: Vec<(String, PathBuf)> = RUN_FILES
            .iter()
            .map(|name| (name.to_string(), args.run_dir.join(name)))
            .collect();
        if let Some(info) = run_info::read(&args.run_dir)? {
            inputs.extend(
                info.config
                    .map(|c| ("the run's configuration file".to_string(), PathBuf::from(c))),
            );
            for experiment in info.experiments {
                for d in experiment.datasets {
                    let path = PathBuf::from(d.path);
                    // Experiments share datasets: each file once.
                    if !inputs.iter().any(|(_, p)| *p == path) {
                        inputs.push((format!("dataset {}", d.name), path));
                    }
                }
            }
        }
        let mut files: Vec<NamedFile<'_>> = inputs
            .iter()
            .map(|(label, path)| NamedFile::read(label, path))
            .collect();
        files.push(NamedFile::write("--html", html));
        check_distinct(&files)?;
    }
    let scores = scores::write(&args.run_dir)?;
    let md = std::fs::read_to_string(args.run_dir.join(scores::SCORES_MD))?;
    outln!("{md}");
    if let Some(path) = &args.html {
        let title = format!("volley experiment: {}", args.run_dir.display());
        std::fs::write(path, scores::html::render(&scores, &title))
            .with_context(|| format!("cannot write {}", path.display()))?;
        errln!("wrote {}", path.display());
    }
    Ok(Exit::Success)
}

/// The files of a run directory that `report --html` must never write over.
const RUN_FILES: [&str; 7] = [
    record::ANSWERS,
    record::JUDGEMENTS,
    record::ERRORS,
    record::POSTPROCESSED,
    run_info::RUN_INFO,
    scores::SCORES_JSON,
    scores::SCORES_MD,
];

/// Runs `plans` on an engine of the file's providers, recording into `out`; the
/// progress display and the log read the engine's events, both stages together. With
/// `--dashboard`, its page is served from before the engine connects; it is handed
/// back to linger once the scores are written.
#[allow(clippy::too_many_arguments)]
async fn execute(
    args: &EngineArgs,
    display: &DisplayArgs,
    dashboard: Option<&DashboardArgs>,
    file: &ConfigFile,
    upstreams: engine::Upstreams,
    plans: &[ExperimentPlan],
    out: &Path,
    ask: bool,
) -> anyhow::Result<(RunEnd, Option<Live>)> {
    engine::check(args).map_err(anyhow::Error::msg)?;
    let slot = BarSlot::default();
    logging::init(display.log_format, display.quiet, slot.clone());
    // Bad rows and templates are found before anything starts.
    pipeline::validate(plans)?;
    let pricing = engine::pricing(args)?;
    let lanes = LaneWatch::new();
    let live = match dashboard {
        Some(flags) => Live::stages(flags, stages(plans), lanes.clone(), args.concurrency).await?,
        None => None,
    };
    let (targets, mock) = upstreams.start().await?;
    let stats = Arc::new(RunStats::new());
    let mut observers: Vec<Arc<dyn Observer>> = vec![stats.clone(), Arc::new(EventLog)];
    if let Some((_, watching)) = &live {
        observers.extend(watching.iter().cloned());
    }
    let engine = Target::connect_all(
        targets,
        engine::config(args, pricing, defaults::SHUTDOWN_GRACE),
        EventBus::new(observers),
    )
    .await?;
    lanes.watch(&engine);
    let cancel = CancellationToken::new();
    let interrupt = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            crate::commands::mock::shutdown_signal().await;
            tracing::warn!("stopping: requests in flight get a moment to finish; re-run to resume");
            cancel.cancel();
        })
    };
    let progress = Arc::new(Progress::default());
    let shown = progress::Display::start(
        display,
        stats.clone(),
        Counted::Cells(progress.clone()),
        0,
        &slot,
    );
    let options = RunOptions {
        progress: progress.clone(),
        dir: out.to_owned(),
        cells_in_flight: args.concurrency.saturating_mul(2),
        ask,
        hidden_env: hidden_env(args, file),
        config: std::path::absolute(&file.path).ok(),
    };
    tracing::info!("run directory: {}", out.display());
    let end = pipeline::run(&engine, plans, &options, &cancel).await;
    interrupt.abort();
    shown.stop().await;
    stats.end();
    let c = progress.read();
    tracing::info!(
        "cells done {}/{} · this run: {} answers, {} judgements",
        c.done,
        c.cells,
        c.answered,
        c.judged
    );
    engine.shutdown(defaults::SHUTDOWN_GRACE).await;
    if let Some(mock) = mock {
        mock.shutdown().await;
    }
    let live = match live {
        Some((live, _)) => {
            let stopped = match &end {
                Ok(end) => end.stopped.iter().map(|(name, _)| name.clone()).collect(),
                Err(_) => stages(plans).into_iter().map(|(name, _)| name).collect(),
            };
            live.end(stopped).await;
            // Interrupted: the person is leaving, no linger.
            (!cancel.is_cancelled()).then_some(live)
        }
        None => None,
    };
    Ok((end?, live))
}

/// The dashboard's rows: each experiment's answers, then its judgements when it has a
/// judge, named as the pipeline names its sources.
fn stages(plans: &[ExperimentPlan]) -> Vec<(String, &'static str)> {
    let mut rows = Vec::new();
    for plan in plans {
        rows.push((plan.name.clone(), "answers"));
        if plan.judge.is_some() {
            rows.push((format!("{}/judge", plan.name), "judge"));
        }
    }
    rows
}

/// Writes the scores and says how the run ended.
fn finish(out: &Path, end: &RunEnd) -> anyhow::Result<Exit> {
    scores::write(out)?;
    let md = std::fs::read_to_string(out.join(scores::SCORES_MD))?;
    outln!("{md}");
    for (source, why) in &end.stopped {
        errln!("{source}: stopped ({why:?})");
    }
    if end.unfinished > 0 {
        errln!(
            "{} cells are unfinished; run the same command again to resume",
            end.unfinished
        );
        return Ok(Exit::Stopped);
    }
    Ok(Exit::Success)
}

/// The variables holding keys: a postprocess command runs code a model wrote, and
/// must not inherit them.
fn hidden_env(args: &EngineArgs, file: &ConfigFile) -> Vec<String> {
    let mut names: Vec<String> = defaults::API_KEY_ENVS
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(args.api_key_env.iter().cloned());
    for provider in &file.providers {
        names.extend(provider.api_key_env.iter().cloned());
    }
    names.sort();
    names.dedup();
    names
}

fn model_spec(file: &ConfigFile, name: &str) -> Option<ModelSpec> {
    let model = file.model(name)?;
    Some(ModelSpec {
        name: model.name.clone(),
        provider: model.provider.clone().unwrap_or_default(),
        upstream: model.upstream,
        id: model.id.clone(),
        body: model.request_fields(),
    })
}

fn prompt_spec(file: &ConfigFile, name: &str) -> Option<PromptSpec> {
    let prompt = file.prompt(name)?;
    Some(PromptSpec {
        name: prompt.name.clone(),
        system: prompt.system.clone(),
        user: prompt.user.clone(),
    })
}

/// The file's experiments as plans; the file has checked every name they use.
fn plans(file: &ConfigFile) -> anyhow::Result<Vec<ExperimentPlan>> {
    let missing =
        |what: &str, name: &str| anyhow!("{}: no {what} named \"{name}\"", file.path.display());
    file.experiments
        .iter()
        .map(|e| {
            let check = match (&e.json_schema, &e.expect) {
                (Some(schema), _) => Some(Arc::new(ResponseCheck::schema_file(schema)?)),
                (None, Some(Expect::Json)) => Some(Arc::new(ResponseCheck::json())),
                (None, None) => None,
            };
            let judge = match &e.judge {
                Some(j) => Some(JudgeSpec {
                    model: model_spec(file, &j.model).ok_or_else(|| missing("model", &j.model))?,
                    prompt: prompt_spec(file, &j.prompt)
                        .ok_or_else(|| missing("prompt", &j.prompt))?,
                    verdict: match j.verdict {
                        Verdict::Correct => VerdictKind::Correct,
                        Verdict::Score => VerdictKind::Score,
                    },
                }),
                None => None,
            };
            Ok(ExperimentPlan {
                name: e.name.clone(),
                datasets: e
                    .datasets
                    .iter()
                    .map(|d| {
                        let d = file.dataset(d).ok_or_else(|| missing("dataset", d))?;
                        Ok(DatasetSpec {
                            name: d.name.clone(),
                            path: d.path.clone(),
                            id_field: d.id_field.clone(),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                models: e
                    .models
                    .iter()
                    .map(|m| model_spec(file, m).ok_or_else(|| missing("model", m)))
                    .collect::<anyhow::Result<_>>()?,
                runs: e.runs,
                prompt: prompt_spec(file, &e.prompt).ok_or_else(|| missing("prompt", &e.prompt))?,
                check,
                concurrency: e.concurrency,
                max_cost_usd: e.max_cost_usd,
                postprocess: e.postprocess.as_ref().map(|p| PostprocessSpec {
                    command: p.command.clone(),
                    timeout: p.timeout,
                    workers: p.workers,
                }),
                judge,
            })
        })
        .collect()
}
