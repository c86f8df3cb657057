//! The run directory's record: what each stage finished, one JSON line each, and what
//! a re-run reads back to do every stage exactly once.
//!
//! - `answers.jsonl`: the models' answers, in `volley run`'s RESULTS shape plus the
//!   cell (`experiment`, `dataset`, `item`, `model`, `run`) and `stage`.
//! - `postprocessed.jsonl`: what the `postprocess` command made of each answer.
//! - `judgements.jsonl`: the judges' replies, with the judge's identity and the verdict.
//! - `errors.jsonl`: whatever failed for good, at any stage, in ERRORS' shape.
//!
//! Lines are appended as each request ends, so a crash loses at most what was in
//! flight. Resume keeps a fixed-size hash per finished line, and for an answer the
//! offset of its line, so that a later stage can read it again: memory grows with the
//! cells of the run by 16 bytes each, never with their text.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use volley_core::input::ids::{IdSet, IdTable, StableHash};
use volley_core::store::Outcome;
use volley_core::store::appender::{AppendHandle, Appender};
use volley_core::store::line::{ErrorPart, OutputLine};

/// The files of a run directory, in the order the writer holds them.
pub const ANSWERS: &str = "answers.jsonl";
pub const JUDGEMENTS: &str = "judgements.jsonl";
pub const ERRORS: &str = "errors.jsonl";
pub const POSTPROCESSED: &str = "postprocessed.jsonl";
/// Judgements last: the writer flushes in this order, so a judgement never reaches the
/// disk before the answer (and output) it graded.
const FILES: [&str; 4] = [ANSWERS, POSTPROCESSED, ERRORS, JUDGEMENTS];

/// Which file a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File_ {
    Answers = 0,
    Postprocessed = 1,
    Errors = 2,
    Judgements = 3,
}

/// The stages a cell goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Answer,
    Postprocess,
    Judge,
}

/// One model's answer to one row in one run: the unit every stage works on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub experiment: Arc<str>,
    pub dataset: Arc<str>,
    pub item: Arc<str>,
    pub model: Arc<str>,
    pub run: u32,
}

impl Cell {
    /// The id its requests carry: readable, not parsed back (an item id may hold `/`).
    pub fn custom_id(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.experiment, self.dataset, self.item, self.model, self.run
        )
    }

    /// A stable hash of the cell (each part length-prefixed, so no two cells collide
    /// by their separators).
    pub fn hash(&self) -> u64 {
        let mut h = StableHash::new();
        for part in [&self.experiment, &self.dataset, &self.item, &self.model] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&self.run.to_le_bytes());
        h.finish()
    }

    /// The hash of the cell as graded by the judge `judge`.
    pub fn judged_hash(&self, judge: &str) -> u64 {
        let mut h = StableHash::new();
        h.update(&self.hash().to_le_bytes());
        h.update(judge.as_bytes());
        h.finish()
    }
}

/// Why the record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: not a line volley writes ({reason}); volley will not append to a file it cannot resume from, so move it or choose another --out"
    )]
    Foreign {
        path: String,
        line: u64,
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What an earlier run of this directory finished.
#[derive(Default)]
pub struct Done {
    /// Answered cells → the offset of their line in `answers.jsonl`.
    pub answered: IdTable<u64>,
    /// Cells whose answer failed for good.
    pub answer_failed: IdSet,
    /// Postprocessed cells → the offset of their line in `postprocessed.jsonl`.
    pub postprocessed: IdTable<u64>,
    /// Cells whose postprocess failed.
    pub postprocess_failed: IdSet,
    /// (cell, judge) pairs graded or failed for good ([`Cell::judged_hash`]).
    pub judged: IdSet,
}

/// The fields resume reads from a line.
#[derive(Deserialize)]
struct Seen {
    #[serde(flatten)]
    cell: Cell,
    stage: Stage,
    judge: Option<String>,
}

/// Reads what the directory's files hold. A last line cut short by a crash is cut
/// off the file (its request is sent again, as one in flight would be); any other
/// line volley cannot read stops the run rather than be appended to.
pub fn scan(dir: &Path) -> Result<Done, RecordError> {
    let mut done = Done::default();
    for (index, name) in FILES.iter().enumerate() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        read_lines(&path, |offset, line_no, line| {
            let seen: Seen = serde_json::from_slice(line).map_err(|e| RecordError::Foreign {
                path: path.display().to_string(),
                line: line_no,
                reason: e.to_string(),
            })?;
            let cell = seen.cell.hash();
            match (FILES[index], seen.stage, seen.judge) {
                (ANSWERS, _, _) => {
                    done.answered.insert_new(cell, offset);
                }
                (POSTPROCESSED, _, _) => {
                    done.postprocessed.insert_new(cell, offset);
                }
                (JUDGEMENTS, _, Some(judge)) | (ERRORS, Stage::Judge, Some(judge)) => {
                    done.judged.insert_hash(seen.cell.judged_hash(&judge));
                }
                (ERRORS, Stage::Answer, _) => {
                    done.answer_failed.insert_hash(cell);
                }
                (ERRORS, Stage::Postprocess, _) => {
                    done.postprocess_failed.insert_hash(cell);
                }
                _ => {
                    return Err(RecordError::Foreign {
                        path: path.display().to_string(),
                        line: line_no,
                        reason: "a judgement without its judge".into(),
                    });
                }
            }
            Ok(())
        })?;
    }
    Ok(done)
}

/// Calls `each(offset, line number, line)` for every complete line of `path`, after
/// cutting off a last line that has no newline (a crash mid-write).
pub fn read_lines(
    path: &Path,
    each: impl FnMut(u64, u64, &[u8]) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    lines_of(path, true, each)
}

/// As [`read_lines`], but a torn last line is only skipped, never cut off: for a
/// reader (`report`) that may run beside a run still writing it.
pub fn read_complete_lines(
    path: &Path,
    each: impl FnMut(u64, u64, &[u8]) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    lines_of(path, false, each)
}

/// As [`read_complete_lines`], up to byte `end` of `path`: the lines an earlier reading
/// saw, not those a run appended since.
pub fn read_complete_lines_upto(
    path: &Path,
    end: u64,
    each: impl FnMut(u64, u64, &[u8]) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    lines_of_upto(path, false, end, each)
}

fn lines_of(
    path: &Path,
    cut_torn: bool,
    each: impl FnMut(u64, u64, &[u8]) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    lines_of_upto(path, cut_torn, u64::MAX, each)
}

fn lines_of_upto(
    path: &Path,
    cut_torn: bool,
    end: u64,
    mut each: impl FnMut(u64, u64, &[u8]) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::with_capacity(1 << 16, file.take(end));
    let mut buf = Vec::new();
    let (mut offset, mut line_no) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            if !cut_torn {
                return Ok(());
            }
            // Torn by a crash: nothing after it, and it was never finished.
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            file.set_len(offset).map_err(io(path))?;
            return Ok(());
        }
        if buf.iter().any(|b| !b.is_ascii_whitespace()) {
            each(offset, line_no, &buf)?;
        }
        offset += n as u64;
    }
}

/// Reads the line at `offset` of `path`, newline excluded.
pub fn line_at(path: &Path, offset: u64) -> Result<Vec<u8>, RecordError> {
    let mut file = File::open(path).map_err(io(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io(path))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(io(path))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// The text of a chat completion's first choice; `""` when it has none.
pub fn answer_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Completion {
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Message,
    }
    #[derive(Deserialize)]
    struct Message {
        content: Option<String>,
    }
    serde_json::from_slice::<Completion>(body)
        .ok()
        .and_then(|c| c.choices.into_iter().next())
        .and_then(|c| c.message.content)
        .unwrap_or_default()
}

/// An answer line read back: its reply's text.
pub fn answer_at(dir: &Path, offset: u64) -> Result<String, RecordError> {
    #[derive(Deserialize)]
    struct Line {
        response: Option<Body>,
    }
    #[derive(Deserialize)]
    struct Body {
        body: Box<serde_json::value::RawValue>,
    }
    let path = dir.join(ANSWERS);
    let line = line_at(&path, offset)?;
    let parsed: Line = serde_json::from_slice(&line).map_err(|e| RecordError::Foreign {
        path: path.display().to_string(),
        line: 0,
        reason: e.to_string(),
    })?;
    Ok(parsed
        .response
        .map(|r| answer_text(r.body.get().as_bytes()))
        .unwrap_or_default())
}

/// A postprocessed line read back: the command's output.
pub fn output_at(dir: &Path, offset: u64) -> Result<Value, RecordError> {
    #[derive(Deserialize)]
    struct Line {
        output: Value,
    }
    let path = dir.join(POSTPROCESSED);
    let line = line_at(&path, offset)?;
    serde_json::from_slice::<Line>(&line)
        .map(|l| l.output)
        .map_err(|e| RecordError::Foreign {
            path: path.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })
}

/// Appends lines to the run directory's files on a thread of their own.
pub struct Recorder {
    appender: Appender,
}

/// Queues lines for the [`Recorder`]; cheap to clone.
#[derive(Clone)]
pub struct RecordHandle(AppendHandle);

impl Recorder {
    /// Opens (creating) the run directory's files for appending.
    pub fn open(dir: &Path) -> Result<Recorder, RecordError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let files = FILES
            .iter()
            .map(|name| {
                let path = dir.join(name);
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))
                    .map(|f| (path, f))
            })
            .collect::<Result<Vec<(PathBuf, File)>, _>>()?;
        let appender = Appender::start("volley-experiment-writer", files).map_err(io(dir))?;
        Ok(Recorder { appender })
    }

    pub fn handle(&self) -> RecordHandle {
        RecordHandle(self.appender.handle())
    }

    /// Writes everything queued and closes the files.
    pub fn finish(mut self) -> Result<(), RecordError> {
        self.appender
            .finish()
            .map(|_| ())
            .map_err(|e| RecordError::Io {
                path: e.path.display().to_string(),
                source: e.source,
            })
    }
}

/// A line about a cell: the cell, the stage, and the rest of its fields.
#[derive(Serialize)]
struct CellLine<'a, T: Serialize> {
    #[serde(flatten)]
    cell: &'a Cell,
    stage: Stage,
    #[serde(flatten)]
    judge: Option<&'a JudgeTag<'a>>,
    #[serde(flatten)]
    rest: T,
}

/// Which judge graded, on a judgement line.
#[derive(Serialize)]
pub struct JudgeTag<'a> {
    /// The judge's identity ([`crate::plan::JudgeSpec::identity`]).
    #[serde(rename = "judge")]
    pub id: &'a str,
    /// The judge model's name in the config.
    pub judge_model: &'a str,
}

fn encode<T: Serialize>(line: &CellLine<'_, T>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1024);
    // Plain structs with string keys always serialize.
    let _ = serde_json::to_writer(&mut bytes, line);
    bytes.push(b'\n');
    bytes
}

/// The verdict part of a judgement line.
#[derive(Serialize)]
struct Verdict {
    /// 1/0 for a correct-verdict, the score for a score; `null` if the reply held none.
    value: Option<f64>,
}

/// A postprocess failure.
#[derive(Serialize)]
struct ProcessError<'a> {
    error: ErrorPart<'a>,
    duration_ms: f64,
}

/// A postprocess output.
#[derive(Serialize)]
struct ProcessOutput<'a> {
    custom_id: &'a str,
    output: &'a Value,
    duration_ms: f64,
}

impl RecordHandle {
    /// Records an answer (or its failure) as the engine reported it. False once the
    /// writer has stopped (a disk error).
    pub fn answer(&self, cell: &Cell, outcome: &Outcome) -> bool {
        self.outcome(cell, Stage::Answer, None, outcome, None)
    }

    /// Records a judgement (or its failure) with the verdict read from it.
    pub fn judgement(
        &self,
        cell: &Cell,
        judge: &JudgeTag<'_>,
        outcome: &Outcome,
        value: Option<f64>,
    ) -> bool {
        self.outcome(cell, Stage::Judge, Some(judge), outcome, Some(value))
    }

    fn outcome(
        &self,
        cell: &Cell,
        stage: Stage,
        judge: Option<&JudgeTag<'_>>,
        outcome: &Outcome,
        verdict: Option<Option<f64>>,
    ) -> bool {
        let id = format!("vol-{:016x}-{}", cell.hash(), stage_tag(stage));
        let custom_id = match judge {
            Some(j) => format!("{}/judge/{}", cell.custom_id(), j.id),
            None => cell.custom_id(),
        };
        let failed = outcome.error.is_some();
        let file = match (failed, stage) {
            (true, _) => File_::Errors,
            (false, Stage::Judge) => File_::Judgements,
            (false, _) => File_::Answers,
        };
        #[derive(Serialize)]
        struct WithVerdict<'a, 'b> {
            #[serde(flatten)]
            line: &'a OutputLine<'b>,
            #[serde(flatten)]
            verdict: Option<Verdict>,
        }
        let bytes = outcome.with_output_line(&id, &custom_id, |line| {
            let rest = WithVerdict {
                line,
                verdict: verdict.filter(|_| !failed).map(|value| Verdict { value }),
            };
            encode(&CellLine {
                cell,
                stage,
                judge,
                rest,
            })
        });
        self.0.write(file as usize, bytes)
    }

    /// Records what the postprocess command made of an answer.
    pub fn postprocessed(&self, cell: &Cell, output: &Value, duration_ms: f64) -> bool {
        let custom_id = cell.custom_id();
        let rest = ProcessOutput {
            custom_id: &custom_id,
            output,
            duration_ms,
        };
        self.0.write(
            File_::Postprocessed as usize,
            encode(&CellLine {
                cell,
                stage: Stage::Postprocess,
                judge: None,
                rest,
            }),
        )
    }

    /// Records a failure volley found itself, at `stage`: a postprocess command that
    /// crashed, hung or printed no JSON, a judge template that cannot render.
    pub fn failed(
        &self,
        cell: &Cell,
        stage: Stage,
        judge: Option<&JudgeTag<'_>>,
        code: &str,
        message: &str,
        duration_ms: f64,
    ) -> bool {
        #[derive(Serialize)]
        struct Failed<'a> {
            custom_id: &'a str,
            #[serde(flatten)]
            failure: ProcessError<'a>,
        }
        let custom_id = cell.custom_id();
        let rest = Failed {
            custom_id: &custom_id,
            failure: ProcessError {
                error: ErrorPart { code, message },
                duration_ms,
            },
        };
        self.0.write(
            File_::Errors as usize,
            encode(&CellLine {
                cell,
                stage,
                judge,
                rest,
            }),
        )
    }
}

fn stage_tag(stage: Stage) -> &'static str {
    match stage {
        Stage::Answer => "a",
        Stage::Postprocess => "p",
        Stage::Judge => "j",
    }
}

/// Reads a whole small file (the run's `run.json`).
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, RecordError> {
    let file = File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).map_err(io(path))?;
    Ok(bytes)
}
