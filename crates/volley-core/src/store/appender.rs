//! Appending lines to files on a thread of their own, so that no engine task ever waits
//! on a disk: RESULTS and ERRORS ([`super::sink`]) and the `--events` file both use it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Why the writer stopped: the file it could not write, and the error.
#[derive(Debug)]
pub struct AppendError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

type Outcome = Result<Vec<u64>, AppendError>;

/// How long the writer rests after each flush before it looks at its queue again. Lines
/// queued meanwhile wait for it instead of waking it one by one: under load the writer
/// wakes and writes a few hundred times a second, not once per line, and a line still
/// reaches the disk (the page cache) within a few milliseconds of being queued.
const GROUP_COMMIT: std::time::Duration = std::time::Duration::from_millis(2);

/// A writer thread and the files it appends to, by index.
pub struct Appender {
    tx: Option<mpsc::Sender<(usize, Vec<u8>)>>,
    thread: Option<JoinHandle<Outcome>>,
}

impl Appender {
    /// Starts the thread `name` appending to `files` (opened by the caller).
    pub fn start(name: &str, files: Vec<(PathBuf, File)>) -> std::io::Result<Appender> {
        let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || -> Outcome {
                let mut outs: Vec<(PathBuf, BufWriter<File>)> = files
                    .into_iter()
                    .map(|(path, file)| (path, BufWriter::with_capacity(1 << 16, file)))
                    .collect();
                let mut lines = vec![0u64; outs.len()];
                let failed = |path: &PathBuf| {
                    let path = path.clone();
                    move |source| AppendError { path, source }
                };
                let flush_all =
                    |outs: &mut Vec<(PathBuf, BufWriter<File>)>| -> Result<(), AppendError> {
                        for (path, out) in outs.iter_mut() {
                            out.flush().map_err(failed(path))?;
                        }
                        Ok(())
                    };
                while let Ok(first) = rx.recv() {
                    // Write everything queued, then flush once: each line is on disk as
                    // soon as the writer catches up with it, without a syscall per line
                    // under load (see `GROUP_COMMIT`).
                    for (index, line) in std::iter::once(first).chain(rx.try_iter()) {
                        let Some((path, out)) = outs.get_mut(index) else {
                            continue;
                        };
                        out.write_all(&line).map_err(failed(path))?;
                        lines[index] += 1;
                    }
                    flush_all(&mut outs)?;
                    std::thread::sleep(GROUP_COMMIT);
                }
                flush_all(&mut outs)?;
                Ok(lines)
            })?;
        Ok(Appender {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// A handle to queue lines with; cheap to clone.
    pub fn handle(&self) -> AppendHandle {
        AppendHandle(self.tx.clone())
    }

    /// Writes everything queued, stops the thread once every handle is dropped, and
    /// says how many lines went to each file.
    pub fn finish(&mut self) -> Outcome {
        drop(self.tx.take());
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or(Ok(Vec::new())),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        // Best effort: dropped without `finish`, it still flushes what it has.
        let _ = self.finish();
    }
}

/// Queues lines for an [`Appender`].
#[derive(Clone)]
pub struct AppendHandle(Option<mpsc::Sender<(usize, Vec<u8>)>>);

impl AppendHandle {
    /// Queues `line` for file `index`. False if the writer has stopped (after a disk
    /// error, which [`Appender::finish`] reports).
    pub fn write(&self, index: usize, line: Vec<u8>) -> bool {
        self.0
            .as_ref()
            .is_some_and(|tx| tx.send((index, line)).is_ok())
    }
}
