//! Reading back an output line volley wrote: the few fields resume needs (its
//! custom_id, the fingerprint of the request it answered, whether it failed) and, for
//! each file, how its last line ended. A line volley did not write, or one in the wrong
//! file, is refused with its file and line, never taken for finished work.

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;

use serde::Deserialize;

use super::checkpoint::{Place, Tail};
use super::sink::{SinkError, io_error};
use crate::input::job::Fingerprint;
use crate::input::lines::Lines;
use crate::provider::classify::Reason;

/// The fields resume needs from an output line. `volley` is required: it is what tells
/// a line volley wrote from any other JSON with a custom_id.
#[derive(Deserialize)]
struct Recorded<'a> {
    #[serde(borrow)]
    custom_id: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<RecordedError<'a>>,
    #[serde(borrow)]
    volley: RecordedVolley<'a>,
}

#[derive(Deserialize)]
struct RecordedError<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RecordedVolley<'a> {
    #[allow(dead_code)]
    attempts: u32,
    #[serde(borrow, default)]
    fingerprint: Option<Cow<'a, str>>,
}

/// One output line, as resume sees it.
pub(super) struct Entry<'a> {
    pub custom_id: Cow<'a, str>,
    /// 0 when the line has none.
    pub fingerprint: u64,
    /// The input line an invalid-input record is about (its `id` is `vol-input-N`;
    /// 0 if it says none).
    pub invalid_line: Option<u64>,
    /// The line has an `error`: it belongs in ERRORS, never in RESULTS.
    pub failed: bool,
}

/// Why a line is not an entry.
enum Problem {
    /// Not JSON at all: a torn write, if it is the last line.
    Unparsable(String),
    /// JSON, but not a line volley writes.
    Foreign(String),
}

impl<'a> Entry<'a> {
    fn parse(text: &'a str) -> Result<Entry<'a>, Problem> {
        let recorded: Recorded<'a> = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                return Err(Problem::Foreign(e.to_string()));
            }
            Err(e) => return Err(Problem::Unparsable(e.to_string())),
        };
        let fingerprint = match recorded.volley.fingerprint.as_deref() {
            None => 0,
            Some(hex) => Fingerprint::parse(hex)
                .map(Fingerprint::get)
                .ok_or_else(|| {
                    Problem::Foreign(format!("volley.fingerprint {hex:?} is not 16 hex digits"))
                })?,
        };
        let failed = recorded.error.is_some();
        let invalid = recorded
            .error
            .is_some_and(|e| e.code == Reason::InvalidInput.as_str());
        let invalid_line = invalid.then(|| {
            recorded
                .id
                .as_deref()
                .and_then(|id| id.strip_prefix("vol-input-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        });
        Ok(Entry {
            custom_id: recorded.custom_id,
            fingerprint,
            invalid_line,
            failed,
        })
    }
}

/// Calls `f(line_number, entry, text)` for each line of an output file (a missing file
/// has none) and says how its last line ended. A line of the wrong file (a failure in
/// RESULTS, a success in ERRORS: `-o` and `--errors` swapped) is refused like a line
/// volley did not write, never taken as finished work of the other kind.
pub(super) fn read_entries(
    path: &Path,
    place: Place,
    mut f: impl FnMut(u64, Entry<'_>, &str) -> Result<(), SinkError>,
) -> Result<Option<Tail>, SinkError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut lines = Lines::new(file);
    while let Some(line) = lines.next_line().map_err(io_error(path))? {
        let (number, terminated) = (line.number, line.terminated);
        let torn = || {
            Ok(Some(Tail::Torn {
                path: path.to_path_buf(),
                bytes: line.raw.len() as u64,
            }))
        };
        let corrupt = |reason: String| SinkError::Corrupt {
            path: path.display().to_string(),
            line: number,
            reason,
        };
        let text = match line.text() {
            Ok(text) => text,
            Err(_) if !terminated => return torn(),
            Err(e) => return Err(corrupt(format!("not valid UTF-8: {e}"))),
        };
        if text.trim().is_empty() {
            continue;
        }
        match Entry::parse(text) {
            Ok(entry) if entry.failed != (place == Place::Errors) => {
                let reason = match place {
                    Place::Results => "a failed request's line (it has an \"error\") in RESULTS",
                    Place::Errors => "a successful request's line (no \"error\") in ERRORS",
                };
                return Err(SinkError::Foreign {
                    path: path.display().to_string(),
                    line: number,
                    reason: format!("{reason}; were -o and --errors swapped?"),
                });
            }
            Ok(entry) => {
                f(number, entry, text)?;
                if !terminated {
                    return Ok(Some(Tail::Unterminated {
                        path: path.to_path_buf(),
                    }));
                }
            }
            // Only the last line can be torn, and a torn line has no newline.
            Err(Problem::Unparsable(_)) if !terminated => return torn(),
            Err(Problem::Unparsable(reason)) => return Err(corrupt(reason)),
            Err(Problem::Foreign(reason)) => {
                return Err(SinkError::Foreign {
                    path: path.display().to_string(),
                    line: number,
                    reason,
                });
            }
        }
    }
    Ok(None)
}
