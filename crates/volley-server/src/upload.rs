//! Receiving a batch input file: streamed to disk chunk by chunk and validated line by
//! line as it arrives, exactly as `volley run` validates its input, so the server's
//! memory does not grow with the upload (one line at most is held, and no more than
//! [`Limits::max_line`]).
//!
//! Limits are OpenAI's: an upload over 512 MB is a 413; a batch input over 50,000
//! requests or 200 MB is a 400. Past the input's limit nothing more is written, but the
//! upload is still read (and counted) to its end or to the upload limit, so that the
//! client gets its answer rather than a reset connection.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use volley_core::input::batch::{LineDefaults, parse_request};
use volley_core::input::ids::StableHash;

use crate::rows::FileSummary;

/// Sizes the gateway takes (OpenAI's, by default).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of one upload.
    pub max_upload: u64,
    /// Bytes of a batch input file.
    pub max_file: u64,
    /// Requests in a batch input file.
    pub max_requests: u64,
    /// Bytes of one line: a line is held whole to be checked.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_upload: 512 * 1024 * 1024,
            max_file: 200 * 1024 * 1024,
            max_requests: 50_000,
            // Room for a request with a few large images inline.
            max_line: 32 * 1024 * 1024,
        }
    }
}

/// A file received whole and valid, not yet given its name.
#[derive(Debug)]
pub struct Received {
    pub temp: tempfile::NamedTempFile,
    pub bytes: u64,
    pub requests: u64,
    pub summary: FileSummary,
    /// A hash of the content, to tell a repeated upload from another.
    pub content_hash: u64,
}

/// Why an upload was refused.
#[derive(Debug)]
pub enum Refused {
    /// 400: the file is not a valid batch input; the message names the line.
    Invalid(String),
    /// 413: over the upload limit.
    TooLarge(String),
    /// 500: the disk failed.
    Disk(String),
}

/// Chunks of the upload in flight to the writing thread: a few, so the network and
/// the disk overlap without the upload piling up in memory.
const CHUNKS_AHEAD: usize = 8;

/// The receiving end of an upload: feed it chunks, then [`Receiver::finish`].
pub struct Receiver {
    chunks: Option<mpsc::Sender<Bytes>>,
    /// Set when the upload is given up: the thread then removes the file at once
    /// instead of finishing it.
    abandoned: Arc<AtomicBool>,
    thread: tokio::task::JoinHandle<Result<Checked, Refused>>,
    received: u64,
    limits: Limits,
}

impl Receiver {
    /// Starts receiving `filename` into a temporary file in `dir`.
    pub fn start(dir: &Path, filename: &str, limits: Limits, defaults: LineDefaults) -> Receiver {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_AHEAD);
        let dir = dir.to_path_buf();
        let label = filename.to_string();
        let abandoned = Arc::new(AtomicBool::new(false));
        let given_up = abandoned.clone();
        let thread = tokio::task::spawn_blocking(move || {
            let temp = tempfile::Builder::new()
                .prefix(".upload-")
                .tempfile_in(&dir)
                .map_err(|e| Refused::Disk(format!("cannot create a file for the upload: {e}")))?;
            let mut check = Check::new(label, limits, defaults, temp);
            while let Some(chunk) = rx.blocking_recv() {
                check.feed(&chunk)?;
            }
            if given_up.load(Ordering::SeqCst) {
                // Dropped unfinished: its file goes with it.
                return Err(Refused::Invalid("the upload was given up".into()));
            }
            check.finish()
        });
        Receiver {
            chunks: Some(tx),
            abandoned,
            thread,
            received: 0,
            limits,
        }
    }

    /// Takes the next chunk of the file; an error once the upload is over its limit.
    pub async fn feed(&mut self, chunk: Bytes) -> Result<(), Refused> {
        self.received += chunk.len() as u64;
        if self.received > self.limits.max_upload {
            return Err(too_large(self.limits.max_upload));
        }
        if let Some(tx) = &self.chunks
            && tx.send(chunk).await.is_err()
        {
            // The thread stopped early: a disk error, said by `finish`.
            self.chunks = None;
        }
        Ok(())
    }

    /// Gives the upload up, and waits until its file is gone from disk.
    pub async fn abandon(mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.chunks = None;
        let _ = (&mut self.thread).await;
    }

    /// The file, once all of it was received and found valid.
    pub async fn finish(mut self) -> Result<Received, Refused> {
        self.chunks = None;
        let checked = self
            .thread
            .await
            .map_err(|e| Refused::Disk(format!("the upload's writer failed: {e}")))??;
        match checked.problem {
            Some(problem) => Err(Refused::Invalid(problem)),
            None => Ok(checked.file),
        }
    }
}

pub fn too_large(limit: u64) -> Refused {
    Refused::TooLarge(format!(
        "the upload is larger than {} MB, the most one upload may be",
        limit / (1024 * 1024)
    ))
}

struct Checked {
    file: Received,
    problem: Option<String>,
}

/// The writing thread's state: the file so far and what its lines said.
struct Check {
    label: String,
    limits: Limits,
    defaults: LineDefaults,
    out: std::io::BufWriter<std::fs::File>,
    temp: tempfile::TempPath,
    /// The line being read, when a chunk ended inside it.
    partial: Vec<u8>,
    /// Lines read, blank ones included (a line's number).
    line: u64,
    requests: u64,
    bytes: u64,
    /// The custom_ids seen, as two independent 64-bit hashes each: a long id costs
    /// no more memory than a short one.
    ids: HashSet<(u64, u64)>,
    summary: FileSummary,
    hash: StableHash,
    /// The first reason the file is refused; from then on nothing is written or checked.
    problem: Option<String>,
}

impl Check {
    fn new(
        label: String,
        limits: Limits,
        defaults: LineDefaults,
        temp: tempfile::NamedTempFile,
    ) -> Check {
        let (file, temp) = temp.into_parts();
        Check {
            label,
            limits,
            defaults,
            out: std::io::BufWriter::with_capacity(256 * 1024, file),
            temp,
            partial: Vec::new(),
            line: 0,
            requests: 0,
            bytes: 0,
            ids: HashSet::new(),
            summary: FileSummary::default(),
            hash: StableHash::new(),
            problem: None,
        }
        .with_default_model()
    }

    /// The summary says which `--model` filled lines that name none.
    fn with_default_model(mut self) -> Check {
        self.summary.default_model = self.defaults.model.clone();
        self
    }

    fn refuse(&mut self, problem: String) {
        if self.problem.is_none() {
            self.problem = Some(problem);
            self.partial = Vec::new();
            self.ids = HashSet::new();
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), Refused> {
        if self.problem.is_some() {
            return Ok(());
        }
        self.bytes += chunk.len() as u64;
        if self.bytes > self.limits.max_file {
            self.refuse(format!(
                "{} is larger than {} MB, the most a batch input may be",
                self.label,
                self.limits.max_file / (1024 * 1024)
            ));
            return Ok(());
        }
        self.out
            .write_all(chunk)
            .map_err(|e| Refused::Disk(format!("cannot write the upload: {e}")))?;
        self.hash.update(chunk);
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(end + 1);
            if self.partial.is_empty() {
                self.line_done(&line[..end]);
            } else {
                self.partial.extend_from_slice(&line[..end]);
                let whole = std::mem::take(&mut self.partial);
                self.line_done(&whole);
                self.partial = whole;
                self.partial.clear();
            }
            if self.problem.is_some() {
                return Ok(());
            }
            rest = after;
        }
        if self.partial.len() + rest.len() > self.limits.max_line {
            self.refuse(format!(
                "{}: line {} is longer than {} MB",
                self.label,
                self.line + 1,
                self.limits.max_line / (1024 * 1024)
            ));
            return Ok(());
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn finish(mut self) -> Result<Checked, Refused> {
        if self.problem.is_none() && !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line_done(&last);
        }
        if self.problem.is_none() && self.requests == 0 {
            self.refuse(format!("{} holds no requests", self.label));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| Refused::Disk(format!("cannot write the upload: {}", e.error())))?;
        file.sync_all()
            .map_err(|e| Refused::Disk(format!("cannot write the upload: {e}")))?;
        let temp = tempfile::NamedTempFile::from_parts(file, self.temp);
        Ok(Checked {
            file: Received {
                temp,
                bytes: self.bytes,
                requests: self.requests,
                summary: self.summary,
                content_hash: self.hash.finish(),
            },
            problem: self.problem,
        })
    }

    /// Checks one line (without its newline) as `volley run` checks its input.
    fn line_done(&mut self, bytes: &[u8]) {
        self.line += 1;
        let mut bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if self.line == 1 {
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            let problem = format!("{}: line {}: not valid UTF-8", self.label, self.line);
            return self.refuse(problem);
        };
        if text.trim().is_empty() {
            return;
        }
        self.requests += 1;
        if self.requests > self.limits.max_requests {
            let problem = format!(
                "{} holds more than {} requests, the most a batch may have",
                self.label, self.limits.max_requests
            );
            return self.refuse(problem);
        }
        let request = match parse_request(text, self.line, &self.defaults) {
            Ok(request) => request,
            Err(problem) => {
                let problem = format!("{}: line {}: {problem}", self.label, self.line);
                return self.refuse(problem);
            }
        };
        if !self.ids.insert(id_hashes(&request.custom_id)) {
            let problem = format!(
                "{}: line {}: custom_id {:?} is used by an earlier line; each request needs its own",
                self.label, self.line, request.custom_id
            );
            return self.refuse(problem);
        }
        let url = format!("/v1{}", request.path());
        if !self.summary.urls.iter().any(|(u, _)| *u == url) {
            if self.summary.urls.len() < FileSummary::URLS_KEPT {
                self.summary.urls.push((url, self.line));
            } else {
                self.summary.more_urls = true;
            }
        }
        if self.summary.model.is_none() {
            self.summary.model = Some(request.model().to_string());
        }
    }
}

/// A custom_id as two independent hashes: two ids are taken for one only if both
/// agree, a chance of about 2^-128.
fn id_hashes(id: &str) -> (u64, u64) {
    let mut first = StableHash::new();
    first.update(id.as_bytes());
    let mut second = StableHash::new();
    second.update(b"\x01custom_id\x01");
    second.update(id.as_bytes());
    (first.finish(), second.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]], limits: Limits) -> Result<Received, String> {
        let dir = tempfile::tempdir().unwrap();
        let temp = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let mut c = Check::new("in.jsonl".into(), limits, LineDefaults::default(), temp);
        for chunk in chunks {
            c.feed(chunk).unwrap();
        }
        let checked = c.finish().unwrap();
        match checked.problem {
            Some(p) => Err(p),
            None => Ok(checked.file),
        }
    }

    const LINE: &str = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}"#;

    #[test]
    fn lines_split_across_chunks_are_checked_whole() {
        let text = format!(
            "\u{feff}{LINE}\r\n\n{}\n{{\"id\":\"c\",\"prompt\":\"p\",\"model\":\"m\"}}",
            LINE.replace("\"a\"", "\"b\"")
        );
        let bytes = text.as_bytes();
        for split in [1, 7, 100, bytes.len() - 3] {
            let (a, b) = bytes.split_at(split);
            let got = check(&[a, b], Limits::default()).unwrap();
            assert_eq!(got.requests, 3);
            assert_eq!(got.bytes, bytes.len() as u64);
            assert_eq!(
                got.summary.urls,
                vec![("/v1/chat/completions".to_string(), 1)]
            );
            assert_eq!(got.summary.model.as_deref(), Some("m"));
        }
    }

    #[test]
    fn bad_files_name_the_line_and_the_limit() {
        let dup = format!("{LINE}\n{LINE}\n");
        let e = check(&[dup.as_bytes()], Limits::default()).unwrap_err();
        assert!(
            e.contains("line 2: custom_id \"a\" is used by an earlier line"),
            "{e}"
        );
        let e = check(&[b"{\"custom_id\":\"x\"}\n"], Limits::default()).unwrap_err();
        assert!(e.starts_with("in.jsonl: line 1:"), "{e}");
        let e = check(&[b"\n\n{not json\n"], Limits::default()).unwrap_err();
        assert!(e.contains("line 3: not valid JSON"), "{e}");
        let e = check(&[b"\n \n"], Limits::default()).unwrap_err();
        assert!(e.contains("holds no requests"), "{e}");
        let few = Limits {
            max_requests: 1,
            ..Limits::default()
        };
        let two = format!("{LINE}\n{}\n", LINE.replace("\"a\"", "\"b\""));
        let e = check(&[two.as_bytes()], few).unwrap_err();
        assert!(e.contains("more than 1 requests"), "{e}");
        let small = Limits {
            max_file: 10,
            ..Limits::default()
        };
        let e = check(&[LINE.as_bytes()], small).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        let short = Limits {
            max_line: 16,
            ..Limits::default()
        };
        let e = check(&[&LINE.as_bytes()[..20]], short).unwrap_err();
        assert!(e.contains("line 1 is longer than"), "{e}");
    }
}
