//! `volley report RESULTS [--errors ERRORS] [--html FILE] [--json FILE]`: the final
//! report of any past run, recomputed from its output files alone.

use anyhow::Context;
use volley_core::observe::report::{from_finished, read_finished};
use volley_core::store::claim::{NamedFile, check_distinct};

use crate::cli::ReportArgs;
use crate::exit::Exit;
use crate::{html, summary};

pub fn report(args: ReportArgs) -> anyhow::Result<Exit> {
    // Before anything is read or written: `--json r.jsonl` must not replace the run's
    // RESULTS, and one file given as both RESULTS and ERRORS would count twice.
    let mut files = vec![NamedFile::read("RESULTS", &args.results)];
    files.extend(
        args.errors
            .as_deref()
            .map(|p| NamedFile::read("--errors", p)),
    );
    for (label, path) in [("--json", &args.json), ("--html", &args.html)] {
        files.extend(path.as_deref().map(|p| NamedFile::write(label, p)));
    }
    check_distinct(&files)?;
    let files = read_finished(&args.results, args.errors.as_deref())?;
    for at in &files.torn {
        errln!(
            "warning: {at}: a line torn by a crash mid-write, left out (the next `volley run` repairs it and sends that request again)"
        );
    }
    let finished = files.finished;
    let report = from_finished(&finished);
    let errors = args
        .errors
        .as_ref()
        .map_or("(not read)".to_string(), |p| p.display().to_string());
    outln!(
        "{}",
        summary::render(&report, &args.results.display().to_string(), &errors)
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        let title = format!("volley report: {}", args.results.display());
        std::fs::write(path, html::render(&report, &finished, &title))
            .with_context(|| format!("cannot write {}", path.display()))?;
        errln!("wrote {}", path.display());
    }
    Ok(Exit::Success)
}
