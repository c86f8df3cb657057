//! `volley run`: flags → a validated plan → the engine, with progress, signals, the
//! final summary and the exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use volley_config::ConfigFile;
use volley_core::defaults;
use volley_core::engine::{SourceSpec, StopReason};
use volley_core::input::batch::LineDefaults;
use volley_core::observe::events::{EventBus, EventFile, Observer};
use volley_core::observe::report::Report;
use volley_core::observe::stats::RunStats;
use volley_core::provider::validate::ResponseCheck;
use volley_core::runner::{
    self, ChangedPolicy, InputSource, LaneWatch, Prepared, RunError, RunPlan, Scan, Strays,
};
use volley_core::store::OutputFiles;
use volley_core::store::checkpoint::Tail;
use volley_core::store::claim::{self, HeldFiles, NamedFile, OutputLock};

use crate::cli::{Expect, LogFormat, RunArgs};
use crate::commands::engine::{self, Upstreams};
use crate::dashboard::Live;
use crate::exit::Exit;
use crate::logging::{self, BarSlot};
use crate::metrics_endpoint::MetricsEndpoint;
use crate::progress::{self, EventLog};
use crate::summary;

/// `file` is the configuration file `--config` named, loaded (its `[run]` defaults are
/// already in `args`).
pub async fn run(args: RunArgs, file: Option<ConfigFile>) -> anyhow::Result<Exit> {
    let slot = BarSlot::default();
    logging::init(args.display.log_format, args.display.quiet, slot.clone());

    // Files first: nothing below may read or write a file before it is known that no
    // two of them are the same one.
    let (input, files) = output_files(&args)?;
    let regular_output = claim::is_regular_output(&files.results);
    // Beside the file RESULTS really is, so that any name of it finds the same lock.
    let lock_path = if regular_output {
        Some(OutputLock::path_for(&files.results)?)
    } else {
        None
    };
    claim::check_distinct(&run_files(&args, &files, lock_path.as_deref()))?;
    let check = match (&args.expect, &args.json_schema) {
        (_, Some(path)) => Some(Arc::new(ResponseCheck::schema_file(path)?)),
        (Some(Expect::Json), None) => Some(Arc::new(ResponseCheck::json())),
        (None, None) => None,
    };
    let pricing = engine::pricing(&args.engine)?;
    let upstreams = match Upstreams::resolve(&args.engine, file.as_ref()) {
        Ok(upstreams) => upstreams,
        Err(e) => {
            errln!("error: {e}");
            return Ok(Exit::Usage);
        }
    };
    if let Err(message) = engine::check(&args.engine) {
        errln!("error: {message}");
        return Ok(Exit::Usage);
    }
    // Held until the run's files are closed, and taken before RESULTS is read to resume:
    // a second run on the same files would send the same requests again. A pipe or a
    // device is not resumed from, so there is nothing to guard.
    let lock = if regular_output {
        match OutputLock::acquire(&files.results) {
            Ok(lock) => Some(lock),
            Err(e) => {
                errln!("error: {e}");
                return Ok(Exit::Usage);
            }
        }
    } else {
        None
    };
    // The files themselves too: a hard link or a shared ERRORS reaches them by a name
    // the lock file above does not know.
    let mut held = HeldFiles::new();
    let outputs = [
        NamedFile::write("RESULTS", &files.results),
        NamedFile::write("ERRORS", &files.errors),
    ];
    if let Err(e) = held.hold(&outputs) {
        errln!("error: {e}");
        return Ok(Exit::Usage);
    }
    if let Some(path) = &args.report
        && let Err(e) = claim::check_writable("--report", path)
    {
        errln!("error: {e}");
        return Ok(Exit::Usage);
    }

    let plan = RunPlan {
        input,
        files: files.clone(),
        defaults: LineDefaults {
            model: args.engine.model.clone(),
            routes: upstreams.routes.clone(),
        },
        offset: args.offset,
        limit: args.limit,
        skip_invalid: args.skip_invalid,
        retry_failed: args.retry_failed,
        changed: if args.rerun_changed {
            ChangedPolicy::Rerun
        } else if args.keep_changed {
            ChangedPolicy::Keep
        } else {
            ChangedPolicy::Refuse
        },
        tpm: upstreams.tpm(),
    };
    let prepared = match runner::prepare(plan) {
        Ok(p) => p,
        Err(e) => {
            errln!("error: {e}");
            return Ok(Exit::Usage);
        }
    };
    let scan = &prepared.scan;
    if !scan.issues.is_empty() {
        if !args.skip_invalid {
            for issue in scan.issues.iter().take(defaults::INPUT_ERRORS_SHOWN) {
                errln!("error: {}", scan.describe(issue));
            }
            if scan.issues.len() > defaults::INPUT_ERRORS_SHOWN {
                errln!(
                    "error: ... and {} more invalid lines",
                    scan.issues.len() - defaults::INPUT_ERRORS_SHOWN
                );
            }
            errln!(
                "{} invalid line(s) in {}; nothing was sent. Fix them, or pass --skip-invalid to record them in ERRORS and send the rest.",
                scan.issues.len(),
                scan.label
            );
            return Ok(Exit::Usage);
        }
        tracing::warn!(
            "{} invalid line(s) in {} go to ERRORS (--skip-invalid)",
            scan.issues.len(),
            scan.label
        );
    }
    if !report_changed(scan, args.rerun_changed, args.keep_changed) {
        return Ok(Exit::Usage);
    }
    report_resume(&prepared, &files);
    // Everything else that can fail at start fails before RESULTS and ERRORS change.
    let stats = Arc::new(RunStats::new());
    let event_file = match &args.events {
        Some(path) => Some(Arc::new(EventFile::create(path).with_context(|| {
            format!("cannot create the events file {}", path.display())
        })?)),
        None => None,
    };
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let endpoint = MetricsEndpoint::start(addr, stats.clone()).await?;
            tracing::info!("metrics at http://{}/metrics", endpoint.addr());
            Some(endpoint)
        }
        None => None,
    };
    let lanes = LaneWatch::new();
    let dashboard = Live::run(
        &args.dashboard,
        stats.clone(),
        lanes.clone(),
        args.engine.concurrency,
    )
    .await?;
    let started = match prepared.start() {
        Ok(started) => started,
        Err(e) => {
            errln!("error: {e}");
            errln!("nothing was sent");
            return Ok(Exit::Usage);
        }
    };
    // Created, or replaced by a rewrite, just now.
    if let Err(e) = held.hold(&outputs) {
        errln!("error: {e}");
        return Ok(Exit::Usage);
    }
    for tail in &started.repaired {
        match tail {
            Tail::Torn { path, bytes } => tracing::warn!(
                "{}: cut a torn last line ({bytes} bytes) left by a crash; that request will be sent again",
                path.display()
            ),
            Tail::Unterminated { path } => tracing::info!(
                "{}: its last line was complete but had no newline; added one",
                path.display()
            ),
        }
    }
    let scan = started.scan();
    if scan.lines == 0 {
        // Not an error (a pipeline may well produce nothing today), but a run that ends
        // at once with nothing done must say why, or it reads as a silent success.
        tracing::warn!("{}", nothing_to_send(args.offset, scan));
    }

    let (targets, mock) = upstreams.start().await?;

    let mut observers: Vec<Arc<dyn Observer>> = vec![stats.clone(), Arc::new(EventLog)];
    if let Some(f) = &event_file {
        observers.push(f.clone());
    }
    if let Some((_, watching)) = &dashboard {
        observers.extend(watching.iter().cloned());
    }

    let display = progress::Display::start(
        &args.display,
        stats.clone(),
        progress::Counted::Requests,
        scan.to_send,
        &slot,
    );

    let cancel = CancellationToken::new();
    let grace = defaults::SHUTDOWN_GRACE;
    let signals = tokio::spawn(watch_signals(cancel.clone(), grace));

    let engine = engine::config(&args.engine, pricing, grace);
    let source = SourceSpec {
        max_cost: args.max_cost,
        retry_budget_ratio: args.engine.retry_budget,
        check,
        ..SourceSpec::new("")
    };
    let outcome = runner::execute(
        started,
        targets,
        engine,
        source,
        EventBus::new(observers),
        cancel.clone(),
        &lanes,
    )
    .await;

    display.stop().await;
    if let Some(f) = &event_file
        && let Err(e) = f.finish()
    {
        tracing::error!("events file: {e}");
    }
    if let Some(server) = mock {
        server.shutdown().await;
    }

    let outcome = match outcome {
        Ok(o) => o,
        Err(e @ RunError::Transport(_)) => {
            tracing::error!("{e}");
            return Ok(Exit::Usage);
        }
        Err(e) => {
            tracing::error!("{e}; finished results are on disk, re-run the same command to resume");
            return Ok(Exit::Stopped);
        }
    };
    stats.end();
    let report = Report::from_snapshot(&stats.snapshot());
    if let Some(path) = &args.report {
        // The requests are paid for and their results on disk: a report that cannot be
        // written is said, not allowed to turn the run into a failure.
        let written = serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json + "\n"));
        if let Err(e) = written {
            tracing::error!(
                "cannot write the report {}: {e}; `volley report {}` recomputes it from the files",
                path.display(),
                files.results.display()
            );
        }
    }
    // Every file of the run is closed: a next run may start.
    drop(held);
    drop(lock);
    if !args.display.quiet {
        let (results, errors) = (
            files.results.display().to_string(),
            files.errors.display().to_string(),
        );
        let text = match args.display.log_format {
            LogFormat::Text => summary::render(&report, &results, &errors),
            LogFormat::Json => logging::json_record(
                tracing::Level::INFO,
                &summary::JsonSummary::new(&report, &results, &errors),
            ),
        };
        errln!("{text}");
    }
    let exit = match outcome.stop {
        StopReason::Completed if outcome.errors_in_file > 0 => Exit::Failures,
        StopReason::Completed => Exit::Success,
        StopReason::Interrupted => {
            tracing::warn!("interrupted: re-run the same command to finish the rest");
            Exit::Stopped
        }
        StopReason::Halted(why) => {
            tracing::warn!("stopped: {why}");
            Exit::Stopped
        }
    };
    let dashboard = match dashboard {
        Some((live, _)) => {
            let stopped = match exit {
                Exit::Stopped => Live::run_stopped(),
                _ => vec![],
            };
            live.end(stopped).await;
            Some(live)
        }
        None => None,
    };
    // The run is over: Ctrl-C now only ends the lingering, quietly (it has no requests
    // left to finish).
    signals.abort();
    let interrupted = cancel.is_cancelled();
    let linger_cancel = cancel.clone();
    let lingering = tokio::spawn(async move {
        crate::commands::mock::shutdown_signal().await;
        linger_cancel.cancel();
    });
    // Both wait at once: each is served for its own linger.
    let metrics_linger = async {
        if let Some(endpoint) = metrics {
            endpoint.mark_finished();
            if !interrupted {
                let url = format!("http://{}/metrics", endpoint.addr());
                crate::linger::linger("metrics", &url, args.metrics_linger, cancel.cancelled())
                    .await;
            }
            endpoint.shutdown();
        }
    };
    let dashboard_linger = async {
        if let Some(live) = dashboard {
            if interrupted {
                return;
            }
            live.linger(cancel.cancelled()).await;
        }
    };
    tokio::join!(metrics_linger, dashboard_linger);
    lingering.abort();
    Ok(exit)
}

/// Names the finished requests whose input line changed since they were answered.
/// Returns false when the run must not go on: the user has not said whether to re-run
/// them or keep their old answers.
fn report_changed(scan: &Scan, rerun: bool, keep: bool) -> bool {
    if scan.changed == 0 {
        return true;
    }
    if rerun {
        tracing::info!(
            "re-sending {} request(s) whose input changed since they were answered (--rerun-changed); each old line is dropped once its new one is written",
            scan.changed
        );
        return true;
    }
    if keep {
        tracing::info!(
            "keeping the old answers of {} request(s) whose input changed since (--keep-changed)",
            scan.changed
        );
        return true;
    }
    for changed in &scan.changed_lines {
        errln!(
            "error: {}:{}: custom_id {:?} is finished in {} for a different request (its model, path or body changed since)",
            scan.label,
            changed.line,
            changed.custom_id,
            changed.place.name()
        );
    }
    let shown = scan.changed_lines.len() as u64;
    if scan.changed > shown {
        errln!("error: ... and {} more changed lines", scan.changed - shown);
    }
    errln!(
        "{} finished request(s) changed since they were answered; nothing was sent. Pass --rerun-changed to send them again (each old line is replaced once its new one is written) or --keep-changed to keep the old answers.",
        scan.changed
    );
    if scan
        .changed_lines
        .iter()
        .any(|c| c.custom_id.starts_with("line-"))
    {
        errln!(
            "note: lines without an id are named line-N after their line number, so inserting or removing a line renames every line after it; give each line a stable \"custom_id\" (or \"id\")"
        );
    }
    false
}

/// Says what resume found: requests skipped, lines matched by id alone, results of ids
/// the input no longer has.
fn report_resume(prepared: &Prepared, files: &OutputFiles) {
    let scan = &prepared.scan;
    if !prepared.checkpoint.is_empty() || scan.already_done > 0 {
        tracing::info!(
            "resuming: {} request(s) already finished (in {} or {}) are skipped",
            scan.already_done,
            files.results.display(),
            files.errors.display()
        );
    }
    if scan.matched_by_id_only > 0 {
        tracing::warn!(
            "{} finished line(s) carry no request fingerprint (written by an older volley): matched by custom_id alone, so a change to those requests cannot be seen",
            scan.matched_by_id_only
        );
    }
    let named = |strays: &Strays| -> String {
        let ids: Vec<String> = strays.examples.iter().map(|id| format!("{id:?}")).collect();
        ids.join(", ")
    };
    if scan.stray_results.count > 0 {
        tracing::warn!(
            "{} holds {} custom_id(s) that are not in {} (e.g. {}): kept, but they answer no line of this input",
            files.results.display(),
            scan.stray_results.count,
            scan.label,
            named(&scan.stray_results)
        );
    }
    if scan.stray_failures.count > 0 {
        tracing::warn!(
            "{} holds {} failure(s) of custom_id(s) that are not in {} (e.g. {}): kept, and they count for the exit code",
            files.errors.display(),
            scan.stray_failures.count,
            scan.label,
            named(&scan.stray_failures)
        );
    }
}

/// Why a run that found no request to send has nothing to do: an input with no
/// request at all, or an `--offset` past its last one (with how many it has, so the
/// user sees how far off the offset is).
fn nothing_to_send(offset: u64, scan: &Scan) -> String {
    let label = &scan.label;
    if scan.before_offset == 0 {
        return format!("{label} has no requests (empty or blank lines only); nothing was sent");
    }
    format!(
        "--offset {offset} skips every line of {label}, which has {} non-blank line(s); nothing was sent",
        scan.before_offset
    )
}

/// First Ctrl-C (or SIGTERM): stop admitting and let in-flight requests finish.
/// Second: exit at once; finished results are already on disk.
async fn watch_signals(cancel: CancellationToken, grace: Duration) {
    crate::commands::mock::shutdown_signal().await;
    tracing::warn!(
        "interrupted: finishing in-flight requests (up to {}); press Ctrl-C again to exit now",
        summary::human_duration(grace)
    );
    cancel.cancel();
    crate::commands::mock::shutdown_signal().await;
    tracing::warn!("exiting now; finished results are on disk, re-run to resume");
    std::process::exit(Exit::Stopped as i32);
}

/// The input, and where RESULTS and ERRORS go (SPEC §2 defaults): ERRORS beside
/// OUTPUT when `-o` is given (so two runs with their own OUTPUT never share an ERRORS),
/// else beside INPUT.
fn output_files(args: &RunArgs) -> anyhow::Result<(InputSource, OutputFiles)> {
    let stdin = args.input.as_os_str() == "-";
    let input = if stdin {
        InputSource::Stdin
    } else {
        InputSource::File(args.input.clone())
    };
    let results = match (&args.output, stdin) {
        (Some(o), _) => o.clone(),
        (None, false) => sibling(&args.input, "results"),
        (None, true) => {
            anyhow::bail!("reading from standard input needs -o OUTPUT to know where results go")
        }
    };
    if results.is_dir() {
        anyhow::bail!("OUTPUT {} is a folder", results.display());
    }
    let errors = match (&args.errors, &args.output) {
        (Some(e), _) => e.clone(),
        // Includes `/dev/stdout` redirected to a file: no place for
        // `/dev/stdout.errors.jsonl`.
        (None, Some(_)) if !claim::is_regular_output(&results) => {
            anyhow::bail!(
                "OUTPUT {} is a pipe, a device or a system file: name the ERRORS file with --errors",
                results.display()
            )
        }
        (None, Some(_)) => errors_beside(&results),
        (None, None) => sibling(&args.input, "errors"),
    };
    Ok((input, OutputFiles { results, errors }))
}

/// Every file the run reads or writes, labelled as the user named it, for
/// [`claim::check_distinct`]: the input (and the files that configure the run) must not
/// be written over, and no output over another.
fn run_files<'a>(
    args: &'a RunArgs,
    files: &'a OutputFiles,
    lock_path: Option<&'a Path>,
) -> Vec<NamedFile<'a>> {
    let mut named = Vec::new();
    if args.input.as_os_str() != "-" {
        named.push(NamedFile::read("INPUT", &args.input));
    }
    for (label, path) in [
        ("--config", &args.config),
        ("--json-schema", &args.json_schema),
        ("--pricing", &args.engine.pricing),
    ] {
        named.extend(path.as_deref().map(|p| NamedFile::read(label, p)));
    }
    named.push(NamedFile::write("RESULTS", &files.results));
    named.push(NamedFile::write("ERRORS", &files.errors));
    named.extend(lock_path.map(|p| NamedFile::write("the lock file", p)));
    for (label, path) in [("--report", &args.report), ("--events", &args.events)] {
        named.extend(path.as_deref().map(|p| NamedFile::write(label, p)));
    }
    named
}

/// `data.jsonl` → `data.KIND.jsonl`; other names get `.KIND.jsonl` appended.
fn sibling(path: &Path, kind: &str) -> PathBuf {
    let text = path.to_string_lossy();
    let stem = text.strip_suffix(".jsonl").unwrap_or(&text);
    PathBuf::from(format!("{stem}.{kind}.jsonl"))
}

/// ERRORS for an explicit OUTPUT: `b.results.jsonl` → `b.errors.jsonl`, `b.jsonl` →
/// `b.errors.jsonl`, `b.out` → `b.out.errors.jsonl`.
fn errors_beside(output: &Path) -> PathBuf {
    sibling(&strip_results(output), "errors")
}

/// `out.results.jsonl` → `out.jsonl`, so ERRORS can sit beside an explicit OUTPUT.
fn strip_results(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match text.strip_suffix(".results.jsonl") {
        Some(stem) => PathBuf::from(format!("{stem}.jsonl")),
        None => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!(
            sibling(Path::new("a/b.jsonl"), "results"),
            PathBuf::from("a/b.results.jsonl")
        );
        assert_eq!(
            sibling(Path::new("b.txt"), "errors"),
            PathBuf::from("b.txt.errors.jsonl")
        );
        assert_eq!(
            strip_results(Path::new("o.results.jsonl")),
            PathBuf::from("o.jsonl")
        );
        for (output, errors) in [
            ("b.results.jsonl", "b.errors.jsonl"),
            ("out/b.jsonl", "out/b.errors.jsonl"),
            ("b.out", "b.out.errors.jsonl"),
        ] {
            assert_eq!(errors_beside(Path::new(output)), PathBuf::from(errors));
        }
    }
}
