//! RESULTS and ERRORS: the user-facing record of a run, and its checkpoint.
//!
//! Each finished request is appended as one JSON line and flushed, so a crash loses at
//! most the requests still in flight. On start, [`Checkpoint::open`] repairs a torn last
//! line (a crash mid-write), collects the custom_ids already finished, and compacts
//! ERRORS (an id that later succeeded, or failed twice, keeps one line). Writing happens
//! on one dedicated thread fed by a channel, so the engine's tasks never block on disk.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::IdSet;
use crate::usage::Usage;

/// Why the output files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: not a valid output line ({reason}); volley will not overwrite finished work, so fix or move the file"
    )]
    Corrupt {
        path: String,
        line: u64,
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a run's output goes.
#[derive(Debug, Clone)]
pub struct OutputFiles {
    pub results: PathBuf,
    pub errors: PathBuf,
}

/// What a previous run left behind.
#[derive(Default)]
pub struct Checkpoint {
    /// custom_ids that must not be sent again.
    pub done: IdSet,
    /// Lines found in RESULTS.
    pub results: u64,
    /// Lines found in ERRORS (after compaction).
    pub errors: u64,
    /// Bytes of torn last lines that were cut off, per file.
    pub repaired: Vec<(String, u64)>,
}

/// Only the field resume needs from an output line.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    custom_id: Cow<'a, str>,
}

impl Checkpoint {
    /// Reads (and repairs) the output files. With `retry_failed`, ids in ERRORS are not
    /// counted as done, so they are sent again.
    pub fn open(files: &OutputFiles, retry_failed: bool) -> Result<Checkpoint, SinkError> {
        let mut cp = Checkpoint::default();
        for path in [&files.results, &files.errors] {
            if let Some(cut) = repair_torn_tail(path)? {
                cp.repaired.push((path.display().to_string(), cut));
            }
        }
        for_each_id(&files.results, |id| {
            cp.done.insert(id);
            cp.results += 1;
        })?;
        cp.errors = compact_errors(&files.errors, &cp.done)?;
        if !retry_failed {
            for_each_id(&files.errors, |id| {
                cp.done.insert(id);
            })?;
        }
        Ok(cp)
    }
}

/// Cuts a last line that has no newline (a write torn by a crash). Returns the number of
/// bytes removed, if any.
fn repair_torn_tail(path: &Path) -> Result<Option<u64>, SinkError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let len = file.metadata().map_err(io_error(path))?.len();
    if len == 0 {
        return Ok(None);
    }
    // Scan backwards in blocks for the last newline.
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut keep = 0u64;
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
        file.read_exact(&mut buf[..n]).map_err(io_error(path))?;
        if first && buf[n - 1] == b'\n' {
            return Ok(None);
        }
        first = false;
        if let Some(pos) = memchr::memrchr(b'\n', &buf[..n]) {
            keep = start + pos as u64 + 1;
            break;
        }
        end = start;
    }
    file.set_len(keep).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(Some(len - keep))
}

/// Calls `f` with the custom_id of each line of an output file (missing file = none).
fn for_each_id(path: &Path, mut f: impl FnMut(&str)) -> Result<(), SinkError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io_error(path))? == 0 {
            return Ok(());
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: IdOnly<'_> = serde_json::from_str(&line).map_err(|e| SinkError::Corrupt {
            path: path.display().to_string(),
            line: number,
            reason: e.to_string(),
        })?;
        f(&parsed.custom_id);
    }
}

/// Rewrites ERRORS so that each custom_id has at most one line (the last), and none
/// that is in `succeeded`. Returns the lines kept. Atomic: a temp file is renamed over.
pub fn compact_errors(path: &Path, succeeded: &IdSet) -> Result<u64, SinkError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut lines: Vec<(&str, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: IdOnly<'_> = serde_json::from_str(line).map_err(|e| SinkError::Corrupt {
            path: path.display().to_string(),
            line: i as u64 + 1,
            reason: e.to_string(),
        })?;
        lines.push((line, parsed.custom_id.into_owned()));
    }
    let mut seen = IdSet::new();
    let mut kept: Vec<&str> = Vec::new();
    for (line, id) in lines.iter().rev() {
        if !succeeded.contains(id) && seen.insert(id) {
            kept.push(line);
        }
    }
    kept.reverse();
    if kept.len() == lines.len() {
        return Ok(kept.len() as u64);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_error(path))?;
    for line in &kept {
        tmp.write_all(line.as_bytes()).map_err(io_error(path))?;
        tmp.write_all(b"\n").map_err(io_error(path))?;
    }
    tmp.as_file().sync_all().map_err(io_error(path))?;
    tmp.persist(path).map_err(|e| io_error(path)(e.error))?;
    Ok(kept.len() as u64)
}

/// The `response` part of an output line.
#[derive(Debug, Serialize)]
pub struct ResponsePart<'a> {
    pub status_code: u16,
    pub request_id: String,
    pub body: &'a RawValue,
}

/// The `error` part of an output line.
#[derive(Debug, Serialize)]
pub struct ErrorPart<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

/// volley's own block: what the request cost and how it went.
#[derive(Debug, Serialize)]
pub struct VolleyPart<'a> {
    pub attempts: u32,
    pub latency_ms: f64,
    /// Summed over every attempt that reported usage.
    pub usage: Usage,
    /// USD, summed over attempts; `null` when unknown.
    pub cost: Option<f64>,
    /// `key#N` of the key that made the last attempt, never the key itself.
    pub key: Option<&'a str>,
    /// The model the request asked for (the provider's `body.model` says which served).
    pub model: Option<&'a str>,
    /// When the request finished, Unix seconds: `volley report` plots completions over
    /// time from it.
    pub finished_at: f64,
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One line of RESULTS or ERRORS, in the OpenAI Batch output shape plus `volley`.
#[derive(Debug, Serialize)]
pub struct OutputLine<'a> {
    pub id: &'a str,
    pub custom_id: &'a str,
    pub response: Option<ResponsePart<'a>>,
    pub error: Option<ErrorPart<'a>>,
    pub volley: VolleyPart<'a>,
}

impl OutputLine<'_> {
    /// The line as bytes, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing plain structs with string keys cannot fail.
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// Which file a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Results,
    Errors,
}

/// The writer thread's handle.
pub struct Sink {
    tx: Option<mpsc::Sender<(Destination, Vec<u8>)>>,
    writer: Option<JoinHandle<Result<(), SinkError>>>,
}

impl Sink {
    /// Opens both files for appending (creating them) and starts the writer thread.
    pub fn open(files: &OutputFiles) -> Result<Sink, SinkError> {
        let open = |path: &Path| -> Result<(PathBuf, BufWriter<File>), SinkError> {
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io_error(dir))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_error(path))?;
            Ok((path.to_path_buf(), BufWriter::with_capacity(1 << 16, f)))
        };
        let mut results = open(&files.results)?;
        let mut errors = open(&files.errors)?;
        let (tx, rx) = mpsc::channel::<(Destination, Vec<u8>)>();
        let writer = std::thread::Builder::new()
            .name("volley-sink".into())
            .spawn(move || -> Result<(), SinkError> {
                let flush =
                    |(path, w): &mut (PathBuf, BufWriter<File>)| w.flush().map_err(io_error(path));
                while let Ok(first) = rx.recv() {
                    // Write everything queued, then flush once: each finished request is
                    // on disk as soon as the writer catches up with it.
                    for (dest, line) in std::iter::once(first).chain(rx.try_iter()) {
                        let (path, w) = match dest {
                            Destination::Results => &mut results,
                            Destination::Errors => &mut errors,
                        };
                        w.write_all(&line).map_err(io_error(path))?;
                    }
                    flush(&mut results)?;
                    flush(&mut errors)?;
                }
                flush(&mut results)?;
                flush(&mut errors)
            })
            .map_err(io_error(&files.results))?;
        Ok(Sink {
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// A handle for the engine's tasks to queue lines with.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle(self.tx.clone())
    }

    /// Flushes everything queued and stops the writer.
    pub fn finish(&mut self) -> Result<(), SinkError> {
        drop(self.tx.take());
        match self.writer.take() {
            Some(handle) => handle.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Queues lines for the writer thread; cheap to clone.
#[derive(Clone)]
pub struct SinkHandle(Option<mpsc::Sender<(Destination, Vec<u8>)>>);

impl SinkHandle {
    /// Queues one line. Returns false if the writer has stopped (after a disk error,
    /// which [`Sink::finish`] reports).
    pub fn write(&self, dest: Destination, line: Vec<u8>) -> bool {
        self.0
            .as_ref()
            .is_some_and(|tx| tx.send((dest, line)).is_ok())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Best effort: a sink dropped without `finish` still flushes what it has.
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> OutputFiles {
        OutputFiles {
            results: dir.join("r.jsonl"),
            errors: dir.join("e.jsonl"),
        }
    }

    fn line(id: &str) -> String {
        format!("{{\"id\":\"vol-1\",\"custom_id\":\"{id}\",\"response\":null,\"error\":null}}\n")
    }

    #[test]
    fn torn_tail_is_cut_and_ids_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(
            &f.results,
            format!("{}{}{{\"id\":\"vol", line("a"), line("b")),
        )
        .unwrap();
        let cp = Checkpoint::open(&f, false).unwrap();
        assert_eq!(cp.results, 2);
        assert!(cp.done.contains("a") && cp.done.contains("b"));
        assert_eq!(cp.repaired.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&f.results).unwrap(),
            format!("{}{}", line("a"), line("b"))
        );
    }

    #[test]
    fn a_file_that_is_one_torn_line_becomes_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(&f.results, "{\"custom_id\":").unwrap();
        let cp = Checkpoint::open(&f, false).unwrap();
        assert_eq!(cp.results, 0);
        assert_eq!(std::fs::read(&f.results).unwrap().len(), 0);
    }

    #[test]
    fn corrupt_middle_line_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let text = format!("{}garbage\n{}", line("a"), line("b"));
        std::fs::write(&f.results, &text).unwrap();
        let err = Checkpoint::open(&f, false).err().unwrap();
        assert!(err.to_string().contains("r.jsonl:2"), "{err}");
        assert_eq!(std::fs::read_to_string(&f.results).unwrap(), text);
    }

    #[test]
    fn errors_are_compacted_and_retry_failed_resends_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(&f.results, line("a")).unwrap();
        std::fs::write(
            &f.errors,
            format!("{}{}{}", line("a"), line("x"), line("x")),
        )
        .unwrap();
        let cp = Checkpoint::open(&f, false).unwrap();
        assert_eq!(cp.errors, 1);
        assert!(cp.done.contains("x"));
        assert_eq!(std::fs::read_to_string(&f.errors).unwrap(), line("x"));
        let cp = Checkpoint::open(&f, true).unwrap();
        assert!(!cp.done.contains("x"));
    }

    #[test]
    fn sink_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let mut sink = Sink::open(&f).unwrap();
        let handle = sink.handle();
        assert!(handle.write(Destination::Results, line("a").into_bytes()));
        assert!(handle.write(Destination::Errors, line("b").into_bytes()));
        drop(handle);
        sink.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&f.results).unwrap(), line("a"));
        assert_eq!(std::fs::read_to_string(&f.errors).unwrap(), line("b"));
    }
}
