//! Reading a `volley run` input to send it: a pipe or standard input is copied first
//! (it cannot be read twice), and the second pass submits each line the first pass
//! marked to send, only if it is still the request that was checked.

use std::io::Read;
use std::path::Path;

use crate::engine::{Engine, Source};
use crate::input::batch::{LineDefaults, parse_line};
use crate::runner::RunError;
use crate::runner::scan::{LineFate, Scan, for_each_line, line_check};
use crate::store::replace::{clear_scratch, scratch_place};

/// Removes copies of an input that a run killed mid-run left beside RESULTS. Named
/// after RESULTS, whose lock the caller holds, they are no other run's.
pub(super) fn clear_spool_leftovers(results: &Path) {
    if crate::store::claim::is_regular_output(results) {
        clear_scratch(results, SPOOL);
    }
}

/// The scratch kind of an input's copy: `.RESULTS.input-…`.
const SPOOL: &str = "input";

/// Copies an input that can be read only once into a temporary file, so it can be
/// validated in full before any request is sent and then read again to send.
pub(super) fn spool(
    mut source: impl Read,
    label: &str,
    results: &Path,
) -> Result<tempfile::NamedTempFile, RunError> {
    // Beside RESULTS, on the disk that has room for the batch's results; a RESULTS that
    // is a pipe or terminal (`-o /dev/stdout`) says nothing about disks, so the system's
    // temporary folder it is.
    let beside = crate::store::claim::is_regular_output(results).then(|| {
        results
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    });
    let dir = beside.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let err = |source| RunError::Input {
        path: label.to_string(),
        source,
    };
    let mut spool = tempfile::Builder::new()
        .prefix(&scratch_place(results, SPOOL).1)
        .tempfile_in(&dir)
        .map_err(err)?;
    std::io::copy(&mut source, spool.as_file_mut()).map_err(err)?;
    Ok(spool)
}

/// The second pass: submits the lines marked to send to the engine, as the source
/// `source`, and returns how many it handed over.
pub(super) fn spawn_reader(
    scan: Scan,
    defaults: LineDefaults,
    engine: Engine,
    source: Source,
) -> tokio::task::JoinHandle<Result<u64, RunError>> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let Scan {
            file,
            label,
            plan,
            expected,
            _spool,
            ..
        } = scan;
        let mut sent = 0u64;
        for_each_line(&file, &label, |number, text| {
            if sent as usize == expected.len() {
                // Every line to send is sent: the rest of the file need not be read.
                return false;
            }
            let index = usize::try_from(number - 1).unwrap_or(usize::MAX);
            if plan.get(index) != Some(&LineFate::Send) {
                return true;
            }
            // The first pass accepted this line, so it parses the same way again,
            // unless the file was rewritten in between: then nothing more is sent
            // (the caller sees fewer requests sent than checked).
            let job = text
                .ok()
                .and_then(|t| parse_line(t, number, &defaults).ok())
                .filter(|job| {
                    expected.get(sent as usize)
                        == Some(&line_check(&job.custom_id, job.fingerprint))
                });
            let Some(job) = job else {
                return false;
            };
            // Not admitted means the source stopped: stop reading. The store keeps
            // each outcome, so the ticket is not waited for.
            let admitted = runtime.block_on(engine.submit(&source, job)).is_ok();
            sent += u64::from(admitted);
            admitted
        })?;
        Ok(sent)
    })
}
