//! Reading a `volley run` input to send it: a pipe or standard input is copied first
//! (it cannot be read twice), and the second pass submits each line the first pass
//! marked to send, only if it is still the request that was checked.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::{Engine, Source};
use crate::input::batch::{LineDefaults, parse_line};
use crate::input::job::Job;
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

/// Lines parsed per hand-over from the reading thread to the submitting task: the
/// thread wakes the runtime once per chunk, not once per line, and the runtime never
/// wakes the thread while a chunk is still being submitted.
const CHUNK: usize = 64;
/// Request bytes per hand-over at most, so that what is read ahead of the engine is
/// bounded in memory (and in how stale it can be) whatever the lines' size.
const CHUNK_BYTES: usize = 256 * 1024;

/// The second pass: reads the lines marked to send on a thread of its own and submits
/// them to the engine as `source`, waiting for each to be admitted, so that no more
/// than two chunks are read ahead of the engine. Returns how many were admitted; an
/// error only if the input could not be read.
pub(super) async fn feed(
    scan: Scan,
    defaults: LineDefaults,
    engine: Engine,
    source: Source,
) -> Result<u64, RunError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Job>>(2);
    // Set when a line no longer is the request checked: the lines read ahead of it are
    // not sent either, so the run stops at once rather than after them.
    let changed = Arc::new(AtomicBool::new(false));
    let seen_change = changed.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), RunError> {
        let Scan {
            file,
            label,
            plan,
            expected,
            estimates,
            _spool,
            ..
        } = scan;
        let mut read = 0usize;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut bytes = 0usize;
        for_each_line(&file, &label, |number, text| {
            if read == expected.len() {
                // Every line to send is read: the rest of the file need not be.
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
                    expected.get(read) == Some(&line_check(&job.custom_id, job.fingerprint))
                });
            let Some(job) = job else {
                seen_change.store(true, Ordering::Relaxed);
                return false;
            };
            // u32::MAX: too large to carry; counted again when booked.
            if let Some(tokens) = estimates.get(read).filter(|t| **t != u32::MAX) {
                let _ = job.tokens.set(u64::from(*tokens));
            }
            read += 1;
            bytes += job.body.len();
            chunk.push(job);
            if chunk.len() < CHUNK && bytes < CHUNK_BYTES {
                return true;
            }
            bytes = 0;
            // A closed channel means the source stopped: stop reading.
            tx.blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                .is_ok()
        })?;
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    let mut sent = 0u64;
    'feed: while let Some(chunk) = rx.recv().await {
        for job in chunk {
            // Not admitted means the source stopped. The store keeps each outcome, so
            // the ticket is not waited for.
            if changed.load(Ordering::Relaxed) || engine.submit(&source, job).await.is_err() {
                break 'feed;
            }
            sent += 1;
        }
    }
    drop(rx);
    reader.await.unwrap_or(Ok(()))?;
    Ok(sent)
}
