//! The first pass over a `volley run` input: every line checked and given its fate
//! (sent, skipped, invalid) against what RESULTS and ERRORS already hold, before any
//! request is sent or any file changed. It keeps one byte per line and a hash per id.

use std::fs::File;
use std::io::Seek;
use std::path::Path;

use crate::input::batch::{parse_request, peek_custom_id};
use crate::input::ids::{IdMap, IdSet, id_hash};
use crate::input::lines::Lines;
use crate::runner::{ChangedLine, ChangedPolicy, RunError, RunPlan};
use crate::store::checkpoint::{Checkpoint, Lookup, Place};

/// An input line that cannot be sent.
#[derive(Debug, Clone)]
pub struct InputIssue {
    pub line: u64,
    /// The id its error record is filed under: its custom_id if it has a usable,
    /// unrepeated one, else `line-N`.
    pub custom_id: String,
    pub message: String,
}

/// What the first pass over the input found.
pub struct Scan {
    /// How the input is named in messages (`<stdin>` or the path).
    pub label: String,
    /// Non-blank lines read (after `--offset`).
    pub lines: u64,
    /// Non-blank lines `--offset` skipped.
    pub before_offset: u64,
    /// Requests this run will send.
    pub to_send: u64,
    /// Lines skipped because an earlier run finished them.
    pub already_done: u64,
    /// Invalid lines, in file order.
    pub issues: Vec<InputIssue>,
    /// Finished custom_ids whose request changed (see [`ChangedPolicy`]).
    pub changed: u64,
    /// The first [`CHANGED_SHOWN`] of them, in file order.
    pub changed_lines: Vec<ChangedLine>,
    /// Requests found finished by custom_id alone: their lines carry no fingerprint.
    pub matched_by_id_only: u64,
    /// Custom_ids in RESULTS that no input line has.
    pub stray_results: Strays,
    /// Custom_ids failed in ERRORS that no input line has: they still count for the
    /// exit code, so a run that failed nothing may exit 1 for them.
    pub stray_failures: Strays,
    /// custom_id → fingerprint of requests finished now whose older versions are still
    /// in the files (a crash cut a re-run short): those lines are dropped at start.
    pub(super) stale: IdMap<u64>,
    /// custom_id → fingerprint of requests this run sends that already have a line:
    /// their old lines are dropped once the new ones are written.
    pub(super) replacing: IdMap<u64>,
    /// The input, open since the first pass.
    pub(super) file: File,
    /// [`line_check`] of each line to send, in order: the second pass sends a line
    /// only if it still is the request the first pass checked (an input rewritten in
    /// place during the run is caught, not sent).
    pub(super) expected: Vec<u32>,
    /// With `--tpm`, each line to send's token estimate, in order (empty without): the
    /// second pass books it instead of tokenizing the request again.
    pub(super) estimates: Vec<u32>,
    pub(super) plan: Vec<LineFate>,
    /// Holds stdin's copy alive for the second pass.
    pub(super) _spool: Option<tempfile::NamedTempFile>,
}

/// What happens to one physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineFate {
    /// Not sent: blank, outside `--offset`/`--limit`, finished, or invalid (its record
    /// is written from [`Scan::issues`]).
    Skip,
    Send,
}

/// How many changed lines a scan keeps to name.
pub const CHANGED_SHOWN: usize = 20;

/// How many custom_ids missing from the input a scan names.
pub(super) const STRAYS_SHOWN: usize = 5;

/// Custom_ids in an output file that no line of the input has.
#[derive(Debug, Clone, Default)]
pub struct Strays {
    /// How many (distinct).
    pub count: u64,
    /// The first few, in file order, to name.
    pub examples: Vec<String>,
}

/// Calls `f(line_number, text)` for every line; a line that is not UTF-8 is given as
/// `Err` so it can be reported instead of stopping the read.
pub(super) fn for_each_line(
    file: &File,
    label: &str,
    mut f: impl FnMut(u64, Result<&str, String>) -> bool,
) -> Result<(), RunError> {
    let err = |source| RunError::Input {
        path: label.to_string(),
        source,
    };
    // Clones share the read position: each pass starts from the top.
    let mut file = file.try_clone().map_err(err)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
    let mut lines = Lines::new(file);
    while let Some(line) = lines.next_line().map_err(err)? {
        let text = line.text().map_err(|e| format!("not valid UTF-8: {e}"));
        if !f(line.number, text) {
            break;
        }
    }
    Ok(())
}

/// The input's ids, and how many of them RESULTS and ERRORS hold.
///
/// An id RESULTS holds is marked in a bitmap beside RESULTS' table (a bit per slot)
/// rather than added to a set of its own: re-running a finished batch then makes one
/// lookup per line, in a table the line's own lookup reads anyway, and keeps no second
/// table of a million ids. Ids RESULTS lacks go to `others`.
///
/// Ids the output files hold for no input line (strays) are counted from this: each
/// file's ids less those the input has, with no pass over the files' ids afterwards.
pub(super) struct Seen<'a> {
    others: IdSet,
    /// A bit per slot of RESULTS' table: the input has that id.
    in_results_table: Vec<u64>,
    checkpoint: &'a Checkpoint,
    in_results: u64,
    in_errors: u64,
}

impl<'a> Seen<'a> {
    /// Room for an input of about `lines` lines beside `checkpoint`.
    fn new(checkpoint: &'a Checkpoint, lines: usize) -> Seen<'a> {
        let finished = checkpoint.id_count(Place::Results) as usize;
        Seen {
            others: IdSet::with_capacity(lines.saturating_sub(finished)),
            in_results_table: vec![0; checkpoint.result_slots().div_ceil(64)],
            checkpoint,
            in_results: 0,
            in_errors: 0,
        }
    }

    /// Adds an id of the input; false if an earlier line had it.
    fn insert(&mut self, id: &str) -> bool {
        let h = id_hash(id);
        match self.checkpoint.result_slot(h) {
            Some(slot) => {
                let (word, bit) = (slot / 64, 1u64 << (slot % 64));
                if self.in_results_table[word] & bit != 0 {
                    return false;
                }
                self.in_results_table[word] |= bit;
                self.in_results += 1;
            }
            None => {
                if !self.others.insert_hash(h) {
                    return false;
                }
            }
        }
        self.in_errors += u64::from(self.checkpoint.has_id(Place::Errors, h));
        true
    }

    /// Whether a line of the input has `id`.
    pub fn contains(&self, id: &str) -> bool {
        let h = id_hash(id);
        match self.checkpoint.result_slot(h) {
            Some(slot) => self.in_results_table[slot / 64] & (1u64 << (slot % 64)) != 0,
            None => self.others.contains_hash(h),
        }
    }

    /// How many custom_ids `place` holds that no input line has.
    pub fn strays(&self, place: Place) -> u64 {
        let known = match place {
            Place::Results => self.in_results,
            Place::Errors => self.in_errors,
        };
        self.checkpoint.id_count(place).saturating_sub(known)
    }
}

/// The first pass: decides every line's fate and returns the ids the input holds.
pub(super) fn scan<'a>(
    path: &Path,
    label: String,
    spool: Option<tempfile::NamedTempFile>,
    plan: &RunPlan,
    checkpoint: &'a Checkpoint,
) -> Result<(Scan, Seen<'a>), RunError> {
    let mut seen = Seen::new(checkpoint, crate::input::lines::estimate_lines(path));
    let mut fates = Vec::new();
    let mut issues = Vec::new();
    let (mut lines, mut to_send, mut already_done) = (0u64, 0u64, 0u64);
    let mut before_offset = 0u64;
    let (mut changed, mut changed_lines, mut by_id_only) = (0u64, Vec::new(), 0u64);
    let (mut stale, mut replacing) = (IdMap::default(), IdMap::default());
    // The line each id was first seen on, so a repeat can name it (bounded; see
    // `first_seen_note`).
    let mut first_seen: IdMap<u64> = IdMap::default();
    // Kept open for the second pass: a file saved over the input meanwhile (a new
    // file renamed in) cannot change what is sent.
    let file = File::open(path).map_err(|source| RunError::Input {
        path: label.clone(),
        source,
    })?;
    let mut expected = Vec::new();
    // Tokenizing is the dearest step of a line: only when some upstream has a ceiling.
    let any_tpm = plan.tpm.iter().any(Option::is_some);
    let mut estimates = Vec::new();
    for_each_line(&file, &label, |number, text| {
        let fate = match text {
            Ok(t) if t.trim().is_empty() => LineFate::Skip,
            Ok(t) if number <= plan.offset => {
                before_offset += 1;
                // Not this run's to send, but still the input's: its id is not one that
                // RESULTS holds for no line.
                if let Ok(request) = parse_request(t, number, &plan.defaults) {
                    seen.insert(&request.custom_id);
                }
                LineFate::Skip
            }
            _ if number <= plan.offset => {
                before_offset += 1;
                LineFate::Skip
            }
            Ok(t) => {
                lines += 1;
                match parse_request(t, number, &plan.defaults) {
                    Ok(request) => {
                        let id = request.custom_id.as_str();
                        if !seen.insert(id) {
                            let first = first_seen.get(&id_hash(id)).copied();
                            let message = match first {
                                Some(first) => format!("custom_id {id:?} repeats line {first}"),
                                None => format!("custom_id {id:?} repeats an earlier line"),
                            };
                            issue(&mut issues, number, format!("line-{number}"), message)
                        } else {
                            first_seen_note(&mut first_seen, id, number);
                            let fp = request.fingerprint();
                            let lookup = checkpoint.lookup(id, fp, plan.retry_failed);
                            let send = match lookup {
                                Lookup::Finished {
                                    by_id_only: old,
                                    stale: older_versions,
                                    ..
                                } => {
                                    by_id_only += u64::from(old);
                                    if older_versions {
                                        stale.insert(id_hash(id), fp.get());
                                    }
                                    false
                                }
                                Lookup::Changed { place } => {
                                    changed += 1;
                                    if changed_lines.len() < CHANGED_SHOWN {
                                        changed_lines.push(ChangedLine {
                                            line: number,
                                            custom_id: id.to_string(),
                                            place,
                                        });
                                    }
                                    if plan.changed == ChangedPolicy::Keep
                                        && let Some(latest) = checkpoint.latest_print(id)
                                    {
                                        // Lines of two older versions (a re-run cut
                                        // short): the one written last is kept.
                                        stale.insert(id_hash(id), latest);
                                    }
                                    plan.changed == ChangedPolicy::Rerun
                                }
                                Lookup::New => {
                                    // A failure of this version re-sent (--retry-failed):
                                    // lines of other versions are superseded by it.
                                    if checkpoint.holds(id_hash(id), fp.get()) {
                                        stale.insert(id_hash(id), fp.get());
                                    }
                                    true
                                }
                            };
                            // Counted once here, and handed to the second pass, which
                            // books it: tokenizing is the dearest step of a line.
                            let tokens = (send && any_tpm).then(|| request.estimated_tokens());
                            let tpm = plan.tpm.get(request.upstream()).and_then(Option::as_ref);
                            if !send {
                                already_done += 1;
                                LineFate::Skip
                            } else if let Some((tokens, tpm)) =
                                tokens.zip(tpm).filter(|(tokens, tpm)| *tokens > tpm.tokens)
                            {
                                let message = format!(
                                    "needs about {tokens} tokens (prompt plus max_tokens), more than {} {}: it can never be sent within the limit",
                                    tpm.set_by, tpm.tokens
                                );
                                issue(&mut issues, number, id.to_string(), message)
                            } else if plan.limit.is_some_and(|l| to_send >= l) {
                                LineFate::Skip
                            } else {
                                if checkpoint.knows(id_hash(id)) {
                                    replacing.insert(id_hash(id), fp.get());
                                }
                                to_send += 1;
                                expected.push(line_check(id, fp));
                                if let Some(tokens) = tokens {
                                    estimates.push(u32::try_from(tokens).unwrap_or(u32::MAX));
                                }
                                LineFate::Send
                            }
                        }
                    }
                    Err(problem) => {
                        // A line's own custom_id is reserved even when the rest of it is
                        // wrong (a later line reusing it is a repeat). The `line-N` an
                        // unusable one files under is not an id of the input, so it
                        // reserves nothing: a real custom_id "line-N" stays valid.
                        let fallback = format!("line-{number}");
                        let id = peek_custom_id(t, number);
                        let id = if id == fallback || !seen.insert(&id) {
                            fallback
                        } else {
                            id
                        };
                        issue(&mut issues, number, id, problem.to_string())
                    }
                }
            }
            Err(why) => {
                lines += 1;
                issue(&mut issues, number, format!("line-{number}"), why)
            }
        };
        fates.push(fate);
        true
    })?;
    let scan = Scan {
        label,
        lines,
        before_offset,
        to_send,
        already_done,
        issues,
        changed,
        changed_lines,
        matched_by_id_only: by_id_only,
        stray_results: Strays::default(),
        stray_failures: Strays::default(),
        stale,
        replacing,
        file,
        expected,
        estimates,
        plan: fates,
        _spool: spool,
    };
    Ok((scan, seen))
}

/// Remembers the first line of an id, bounded: only the hash and line number, and only
/// while the map is small, so a million-line file does not keep a million entries.
fn first_seen_note(map: &mut IdMap<u64>, id: &str, line: u64) {
    const REMEMBERED: usize = 100_000;
    if map.len() < REMEMBERED {
        map.insert(crate::input::ids::id_hash(id), line);
    }
}

/// Notes an invalid line. Its record is written afresh each run (`--skip-invalid`), so
/// a line fixed since is sent, never skipped as "finished".
fn issue(issues: &mut Vec<InputIssue>, line: u64, custom_id: String, message: String) -> LineFate {
    issues.push(InputIssue {
        line,
        custom_id,
        message,
    });
    LineFate::Skip
}

impl Scan {
    /// `file:line: message` for an issue.
    pub fn describe(&self, issue: &InputIssue) -> String {
        format!("{}:{}: {}", self.label, issue.line, issue.message)
    }
}

/// A line's custom_id and fingerprint folded into 4 bytes: enough to tell a rewritten
/// line from the one checked, at a fixed cost per line to send.
pub(super) fn line_check(custom_id: &str, fp: crate::input::job::Fingerprint) -> u32 {
    let h = id_hash(custom_id) ^ fp.get().rotate_left(17);
    (h ^ (h >> 32)) as u32
}
