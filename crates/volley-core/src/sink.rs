//! RESULTS and ERRORS: the user-facing record of a run.
//!
//! Each finished request is appended as one JSON line and flushed, so a crash loses at
//! most the requests still in flight (reading them back to resume is
//! [`crate::checkpoint`]'s job). Writing happens on one dedicated thread fed by a
//! channel, so the engine's tasks never block on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::job::Fingerprint;
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
    #[error(
        "{path}:{line}: not a line volley writes ({reason}); volley appends only to its own RESULTS and ERRORS, so name another file with -o/--errors, or move this one"
    )]
    Foreign {
        path: String,
        line: u64,
        reason: String,
    },
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
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

/// A new version of a file, written beside the file it replaces and renamed over it,
/// so a crash leaves either the old file or the new one, never half of each. A symlink
/// is written through (the link stays a link) and the file's permissions are kept.
pub struct Replacement {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl Replacement {
    /// A replacement for `path`; `None` when there is no file to replace.
    pub fn beside(path: &Path) -> std::io::Result<Option<Replacement>> {
        let target = match std::fs::canonicalize(path) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (dir, prefix) = leftover_place(&target);
        let tmp = tempfile::Builder::new().prefix(&prefix).tempfile_in(dir)?;
        Ok(Some(Replacement { tmp, target }))
    }

    /// Removes new versions of `path` that a process killed mid-rewrite left behind.
    /// Only for the holder of the file's lock: they are named after the file, so no
    /// other file's rewrite in progress is touched.
    pub fn clear_leftovers(path: &Path) {
        let Ok(target) = std::fs::canonicalize(path) else {
            return;
        };
        let (dir, prefix) = leftover_place(&target);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The new version, to write into.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Puts the new version in place. Dropped without this, the old file stays.
    pub fn commit(self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let old = std::fs::metadata(&self.target)?;
        self.tmp.as_file().set_permissions(old.permissions())?;
        // The owner too, where allowed (a `sudo` run must not hand the user's file to
        // root); a process that may not change it leaves it as created.
        let _ = std::os::unix::fs::fchown(self.tmp.as_file(), Some(old.uid()), Some(old.gid()));
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.target).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The folder and the name prefix of `target`'s new versions: `.NAME.rewrite-`.
fn leftover_place(target: &Path) -> (&Path, String) {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    (dir, format!(".{name}.rewrite-"))
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
    /// The request's [`Fingerprint`] (16 hex digits): resume compares it with the
    /// input's to tell a finished request from one that has changed since. `None` for
    /// an invalid input line, which has no request.
    #[serde(serialize_with = "hex_fingerprint")]
    pub fingerprint: Option<Fingerprint>,
}

fn hex_fingerprint<S: serde::Serializer>(
    fp: &Option<Fingerprint>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match fp {
        Some(fp) => s.serialize_str(&fp.to_hex()),
        None => s.serialize_none(),
    }
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

/// Opens `path` for appending, creating it and its folder if missing.
fn append_to(path: &Path) -> Result<File, SinkError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))
}

/// Lines the sink wrote, per file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub results: u64,
    pub errors: u64,
}

/// The writer thread's handle.
pub struct Sink {
    tx: Option<mpsc::Sender<(Destination, Vec<u8>)>>,
    writer: Option<JoinHandle<Result<Written, SinkError>>>,
}

impl Sink {
    /// Whether both files can be opened for appending (creating them and their
    /// folders if missing), without keeping them open.
    pub fn check(files: &OutputFiles) -> Result<(), SinkError> {
        append_to(&files.results)?;
        append_to(&files.errors)?;
        Ok(())
    }

    /// Opens both files for appending (creating them) and starts the writer thread.
    pub fn open(files: &OutputFiles) -> Result<Sink, SinkError> {
        let open = |path: &Path| -> Result<(PathBuf, BufWriter<File>), SinkError> {
            let f = append_to(path)?;
            Ok((path.to_path_buf(), BufWriter::with_capacity(1 << 16, f)))
        };
        let mut results = open(&files.results)?;
        let mut errors = open(&files.errors)?;
        let (tx, rx) = mpsc::channel::<(Destination, Vec<u8>)>();
        let writer = std::thread::Builder::new()
            .name("volley-sink".into())
            .spawn(move || -> Result<Written, SinkError> {
                let mut written = Written::default();
                let flush =
                    |(path, w): &mut (PathBuf, BufWriter<File>)| w.flush().map_err(io_error(path));
                while let Ok(first) = rx.recv() {
                    // Write everything queued, then flush once: each finished request is
                    // on disk as soon as the writer catches up with it.
                    for (dest, line) in std::iter::once(first).chain(rx.try_iter()) {
                        let (path, w) = match dest {
                            Destination::Results => {
                                written.results += 1;
                                &mut results
                            }
                            Destination::Errors => {
                                written.errors += 1;
                                &mut errors
                            }
                        };
                        w.write_all(&line).map_err(io_error(path))?;
                    }
                    flush(&mut results)?;
                    flush(&mut errors)?;
                }
                flush(&mut results)?;
                flush(&mut errors)?;
                Ok(written)
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

    /// Flushes everything queued and stops the writer; says how many lines it wrote.
    pub fn finish(&mut self) -> Result<Written, SinkError> {
        drop(self.tx.take());
        match self.writer.take() {
            Some(handle) => handle.join().unwrap_or(Ok(Written::default())),
            None => Ok(Written::default()),
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
pub(crate) mod tests {
    use super::*;

    /// `r.jsonl` and `e.jsonl` in `dir`.
    pub(crate) fn files(dir: &Path) -> OutputFiles {
        OutputFiles {
            results: dir.join("r.jsonl"),
            errors: dir.join("e.jsonl"),
        }
    }

    fn line(id: &str) -> String {
        format!("{{\"id\":\"vol-1\",\"custom_id\":\"{id}\",\"response\":null,\"error\":null}}\n")
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
        assert_eq!(
            sink.finish().unwrap(),
            Written {
                results: 1,
                errors: 1
            }
        );
        assert_eq!(std::fs::read_to_string(&f.results).unwrap(), line("a"));
        assert_eq!(std::fs::read_to_string(&f.errors).unwrap(), line("b"));
    }
}
