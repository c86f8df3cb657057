//! The two files of a run and the thread that appends to them.
//!
//! Each finished request is appended as one JSON line and flushed, so a crash loses at
//! most the requests still in flight (reading them back to resume is
//! [`super::checkpoint`]'s job). Writing happens on one dedicated thread fed by a
//! channel, so the engine's tasks never block on disk.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::appender::{AppendHandle, Appender};

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

/// Which file a line goes to (its index in the writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Results = 0,
    Errors = 1,
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

/// RESULTS and ERRORS, appended to by one writer thread.
pub struct Sink {
    appender: Appender,
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
        let opened = vec![
            (files.results.clone(), append_to(&files.results)?),
            (files.errors.clone(), append_to(&files.errors)?),
        ];
        let appender = Appender::start("volley-sink", opened).map_err(io_error(&files.results))?;
        Ok(Sink { appender })
    }

    /// A handle for the engine's tasks to queue lines with.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle(self.appender.handle())
    }

    /// Flushes everything queued and stops the writer; says how many lines it wrote.
    pub fn finish(&mut self) -> Result<Written, SinkError> {
        let lines = self.appender.finish().map_err(|e| SinkError::Io {
            path: e.path.display().to_string(),
            source: e.source,
        })?;
        let count = |d: Destination| lines.get(d as usize).copied().unwrap_or(0);
        Ok(Written {
            results: count(Destination::Results),
            errors: count(Destination::Errors),
        })
    }
}

/// Queues lines for the writer thread; cheap to clone.
#[derive(Clone)]
pub struct SinkHandle(AppendHandle);

impl SinkHandle {
    /// Queues one line. Returns false if the writer has stopped (after a disk error,
    /// which [`Sink::finish`] reports).
    pub fn write(&self, dest: Destination, line: Vec<u8>) -> bool {
        self.0.write(dest as usize, line)
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
