//! What earlier runs left in RESULTS and ERRORS, and keeping those files tidy.
//!
//! Resume reads both files once, before anything is sent or changed, into compact maps
//! (a hash per custom_id and the fingerprint of the request its line answered). The
//! input pass then asks, line by line, whether a request is new, finished, or finished
//! in another version ([`Lookup`]). Only once the run is known to go ahead are the
//! files changed: a torn last line is cut (or a complete one given its newline), and
//! lines that no longer count are dropped ([`Checkpoint::tidy`]): ERRORS lines of ids
//! that later succeeded or failed again, lines of an older version of a request once
//! its new line is written, and invalid-input records, which each run writes afresh.
//!
//! Rewrites are atomic (a temporary file renamed over the old one), go through a
//! symlink to its target, and keep the file's permissions and owner.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::Replacement;
use super::recorded::{Entry, read_entries};
use super::sink::{OutputFiles, SinkError, io_error};
use crate::input::ids::{IdMap, IdTable, id_hash};
use crate::input::job::Fingerprint;
use crate::store::claim::is_regular_output;

/// Which output file a line is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Results,
    Errors,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Place::Results => "RESULTS",
            Place::Errors => "ERRORS",
        }
    }
}

/// What the output files say about one input request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// No line for this custom_id (or, with `--retry-failed`, only a failure): send it.
    New,
    /// A line answers this very request.
    Finished {
        place: Place,
        /// The line carries no fingerprint (written before volley recorded them): matched by
        /// custom_id alone.
        by_id_only: bool,
        /// Lines for other versions of the request are still in the files (a crash
        /// before a re-run could drop them): [`Checkpoint::tidy`] drops them.
        stale: bool,
    },
    /// The custom_id's line answered a different request (its model, path or body
    /// changed since).
    Changed { place: Place },
}

/// How the last line of a file ended, and what resume does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// A crash mid-write left a line that does not parse: it is cut.
    Torn { path: PathBuf, bytes: u64 },
    /// A complete record with no newline after it: it is kept and given one.
    Unterminated { path: PathBuf },
}

/// The state of the output files, read without changing them.
#[derive(Default)]
pub struct Checkpoint {
    /// custom_id → fingerprint (0: none recorded) of its first line in RESULTS.
    results: IdTable<u64>,
    /// custom_ids whose RESULTS lines carry more than one fingerprint, with all of them.
    several: IdMap<Vec<u64>>,
    /// custom_id → (fingerprint, line number) of its last line in ERRORS, invalid-input
    /// records aside.
    errors: IdMap<(u64, u64)>,
    /// Lines in RESULTS.
    pub results_lines: u64,
    /// Lines in RESULTS that repeat an earlier line's custom_id and fingerprint (two
    /// runs that shared RESULTS before there was a lock, a hand edit): dropped by
    /// [`Checkpoint::tidy`], so each request has one line.
    pub results_repeats: u64,
    /// (custom_id, fingerprint) → line number of the last of its repeated lines: the
    /// one [`Checkpoint::tidy`] keeps, as `volley report` counts the last.
    last_repeat: HashMap<(u64, u64), u64>,
    /// Invalid-input records in ERRORS, and the highest input line they name.
    invalid_records: u64,
    invalid_last_line: u64,
    /// Lines in ERRORS.
    pub errors_lines: u64,
    /// Lines without a fingerprint, in either file.
    pub unfingerprinted: u64,
    /// Last lines to repair before appending.
    pub tails: Vec<Tail>,
    /// Whether each file is a regular one (or none yet). A pipe or a terminal
    /// (`-o /dev/stdout`) is neither read back nor rewritten; with RESULTS such a file,
    /// there is no resume at all.
    results_regular: bool,
    errors_regular: bool,
}

impl Checkpoint {
    /// Reads both files. Changes nothing: see [`Checkpoint::repair_tails`] and
    /// [`Checkpoint::tidy`].
    pub fn read(files: &OutputFiles) -> Result<Checkpoint, SinkError> {
        let mut cp = Checkpoint {
            results_regular: is_regular_output(&files.results),
            errors_regular: is_regular_output(&files.errors),
            ..Checkpoint::default()
        };
        if cp.results_regular {
            cp.read_results(&files.results)?;
        }
        if cp.errors_regular {
            // Without resume (RESULTS a pipe) ERRORS is still appended to: its tail is
            // repaired and its lines checked, but nothing in it counts as finished.
            let resume = cp.results_regular;
            let tail = read_entries(&files.errors, Place::Errors, |number, entry, _| {
                cp.errors_lines += 1;
                if let Some(line) = entry.invalid_line {
                    cp.invalid_records += 1;
                    cp.invalid_last_line = cp.invalid_last_line.max(line);
                } else if resume {
                    cp.unfingerprinted += u64::from(entry.fingerprint == 0);
                    cp.errors
                        .insert(id_hash(&entry.custom_id), (entry.fingerprint, number));
                }
                Ok(())
            })?;
            cp.tails.extend(tail);
        }
        Ok(cp)
    }

    fn read_results(&mut self, path: &Path) -> Result<(), SinkError> {
        let cp = self;
        cp.results = IdTable::with_capacity(crate::input::lines::estimate_lines(path));
        let tail = read_entries(path, Place::Results, |number, entry, _| {
            cp.results_lines += 1;
            cp.unfingerprinted += u64::from(entry.fingerprint == 0);
            let h = id_hash(&entry.custom_id);
            let fp = entry.fingerprint;
            let Some(first) = cp.results.get_or_insert(h, fp) else {
                return Ok(());
            };
            let repeat = match cp.several.get_mut(&h) {
                // Kept in the order of each version's last line, the newest last.
                Some(all) => {
                    let had = all.contains(&fp);
                    all.retain(|p| *p != fp);
                    all.push(fp);
                    had
                }
                None if first == fp => true,
                None => {
                    cp.several.insert(h, vec![first, fp]);
                    false
                }
            };
            if repeat {
                cp.results_repeats += 1;
                cp.last_repeat.insert((h, fp), number);
            }
            Ok(())
        })?;
        cp.tails.extend(tail);
        Ok(())
    }

    /// Whether RESULTS is a file resume can read (see [`is_regular_output`]).
    pub fn resumable(&self) -> bool {
        self.results_regular
    }

    /// Whether RESULTS or ERRORS held anything.
    pub fn is_empty(&self) -> bool {
        self.results_lines == 0 && self.errors_lines == 0
    }

    /// Fingerprints of the custom_id's lines in RESULTS.
    fn result_prints(&self, h: u64) -> &[u64] {
        // `several` is empty but after a crash cut a re-run of changed lines short.
        let several = (!self.several.is_empty())
            .then(|| self.several.get(&h))
            .flatten();
        match several {
            Some(all) => all,
            None => self.results.get(h).map_or(&[], std::slice::from_ref),
        }
    }

    /// What the files say about the request `custom_id` with fingerprint `fp`. With
    /// `retry_failed`, a failure does not count as finished.
    pub fn lookup(&self, custom_id: &str, fp: Fingerprint, retry_failed: bool) -> Lookup {
        let h = id_hash(custom_id);
        let fp = fp.get();
        let results = self.result_prints(h);
        let failed = self.errors.get(&h).map(|(print, _)| *print);
        if results.contains(&fp) {
            return Lookup::Finished {
                place: Place::Results,
                by_id_only: false,
                stale: results.len() > 1,
            };
        }
        if results.contains(&0) {
            return Lookup::Finished {
                place: Place::Results,
                by_id_only: true,
                stale: false,
            };
        }
        match failed {
            // A failure of this very request: final, unless the user retries failures.
            Some(print) if print == fp && retry_failed => Lookup::New,
            Some(print) if print == fp => Lookup::Finished {
                place: Place::Errors,
                by_id_only: false,
                stale: !results.is_empty(),
            },
            // An answer to another version is never replaced without being asked,
            // `--retry-failed` or not.
            _ if !results.is_empty() => Lookup::Changed {
                place: Place::Results,
            },
            // Re-sending a failure replaces no answer, whichever version it was of.
            Some(_) if retry_failed => Lookup::New,
            Some(0) => Lookup::Finished {
                place: Place::Errors,
                by_id_only: true,
                stale: false,
            },
            Some(_) => Lookup::Changed {
                place: Place::Errors,
            },
            None => Lookup::New,
        }
    }

    /// The fingerprint of the custom_id's last-written line in RESULTS, when it has
    /// lines of several versions (a crash cut a re-run short): `--keep-changed` keeps
    /// that one.
    pub fn latest_print(&self, custom_id: &str) -> Option<u64> {
        self.several
            .get(&id_hash(custom_id))
            .and_then(|all| all.last().copied())
    }

    /// Whether a line of `custom_id` hashed `h` with fingerprint `fp` is in the files.
    pub fn holds(&self, h: u64, fp: u64) -> bool {
        self.result_prints(h).contains(&fp) || self.errors.get(&h).is_some_and(|(p, _)| *p == fp)
    }

    /// Whether the custom_id hashed `h` has any line in either file.
    pub fn knows(&self, h: u64) -> bool {
        self.has_id(Place::Results, h) || self.has_id(Place::Errors, h)
    }

    /// Whether `place` holds a line of the custom_id hashed `h`.
    pub fn has_id(&self, place: Place, h: u64) -> bool {
        match place {
            Place::Results => self.results.contains_key(h),
            Place::Errors => self.errors.contains_key(&h),
        }
    }

    /// Where RESULTS' table holds the custom_id hashed `h`, if it does: below
    /// [`Checkpoint::result_slots`], for marks kept beside the table.
    pub fn result_slot(&self, h: u64) -> Option<usize> {
        self.results.slot_of(h)
    }

    pub fn result_slots(&self) -> usize {
        self.results.slots()
    }

    /// Distinct custom_ids `place` holds lines of.
    pub fn id_count(&self, place: Place) -> u64 {
        match place {
            Place::Results => self.results.len() as u64,
            Place::Errors => self.errors.len() as u64,
        }
    }

    /// Up to `n` custom_ids of `place` for which `wanted` says true, in file order.
    pub fn ids(
        &self,
        files: &OutputFiles,
        place: Place,
        n: usize,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, SinkError> {
        let mut found: Vec<String> = Vec::new();
        let path = match place {
            Place::Results => &files.results,
            Place::Errors => &files.errors,
        };
        if !self.results_regular || !is_regular_output(path) {
            return Ok(found);
        }
        read_entries(path, place, |_, entry, _| {
            if found.len() < n
                && entry.invalid_line.is_none()
                && wanted(&entry.custom_id)
                && !found.iter().any(|f| *f == entry.custom_id)
            {
                found.push(entry.custom_id.into_owned());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Cuts torn last lines and ends complete ones with a newline, so appending starts
    /// on a line of its own.
    pub fn repair_tails(&mut self) -> Result<Vec<Tail>, SinkError> {
        for tail in &self.tails {
            match tail {
                Tail::Torn { path, bytes } => {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_error(path))?;
                    let len = file.metadata().map_err(io_error(path))?.len();
                    file.set_len(len.saturating_sub(*bytes))
                        .map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                }
                Tail::Unterminated { path } => {
                    let mut file = OpenOptions::new()
                        .append(true)
                        .open(path)
                        .map_err(io_error(path))?;
                    file.write_all(b"\n").map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                }
            }
        }
        Ok(std::mem::take(&mut self.tails))
    }

    /// Drops the lines that no longer count, rewriting a file only if it loses one:
    /// - of a custom_id in `current` (hash → the fingerprint of its request now, whose
    ///   line is in the files), every line of another version;
    /// - in ERRORS, every line but the last of a custom_id, and all of them once the
    ///   custom_id has a line in RESULTS;
    /// - in ERRORS, invalid-input records of input lines after `invalid_after` (the
    ///   run re-validates those lines and writes their records again).
    ///
    /// Returns the lines left in ERRORS.
    pub fn tidy(
        &self,
        files: &OutputFiles,
        current: &IdMap<u64>,
        invalid_after: Option<u64>,
    ) -> Result<u64, SinkError> {
        if !self.results_regular {
            return Ok(self.errors_lines);
        }
        let old_version = |h: u64, fp: u64| current.get(&h).is_some_and(|cur| *cur != fp);
        let results_lose = current
            .iter()
            .any(|(h, cur)| self.result_prints(*h).iter().any(|fp| fp != cur));
        if results_lose || self.results_repeats > 0 {
            rewrite(&files.results, Place::Results, |number, entry| {
                let h = id_hash(&entry.custom_id);
                let repeated = self.last_repeat.get(&(h, entry.fingerprint));
                !old_version(h, entry.fingerprint) && repeated.is_none_or(|last| *last == number)
            })?;
        }
        // A custom_id keeps its RESULTS line unless a newer version replaced it.
        let succeeded = |h: u64| {
            let prints = self.result_prints(h);
            !prints.is_empty() && current.get(&h).is_none_or(|cur| prints.contains(cur))
        };
        // ERRORS is copied only when it loses a line: an earlier failure of an id, an
        // invalid-input record this run writes afresh, or a failure answered since.
        let repeated_failures = self.errors_lines - self.invalid_records > self.errors.len() as u64;
        let records_rewritten = self.invalid_records > 0
            && invalid_after.is_some_and(|after| self.invalid_last_line > after);
        let superseded = self
            .errors
            .iter()
            .any(|(h, (fp, _))| old_version(*h, *fp) || succeeded(*h));
        if !self.errors_regular || !(repeated_failures || records_rewritten || superseded) {
            return Ok(self.errors_lines);
        }
        rewrite(&files.errors, Place::Errors, |number, entry| {
            if let Some(line) = entry.invalid_line {
                return invalid_after.is_none_or(|after| line <= after);
            }
            let h = id_hash(&entry.custom_id);
            let last = self.errors.get(&h).is_some_and(|(_, at)| *at == number);
            last && !old_version(h, entry.fingerprint) && !succeeded(h)
        })
    }
}

/// Rewrites `path` with only the lines `keep(line_number, entry)` accepts, if it
/// rejects any; returns the lines kept. Atomic, through a symlink, mode kept.
fn rewrite(
    path: &Path,
    place: Place,
    mut keep: impl FnMut(u64, &Entry<'_>) -> bool,
) -> Result<u64, SinkError> {
    let Some(mut replacement) = Replacement::beside(path).map_err(io_error(path))? else {
        return Ok(0);
    };
    let (mut kept, mut dropped) = (0u64, 0u64);
    {
        let mut out = BufWriter::with_capacity(1 << 16, replacement.file());
        read_entries(path, place, |number, entry, text| {
            if keep(number, &entry) {
                kept += 1;
                out.write_all(text.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(io_error(path))?;
            } else {
                dropped += 1;
            }
            Ok(())
        })?;
        out.flush().map_err(io_error(path))?;
    }
    if dropped > 0 {
        replacement.commit().map_err(io_error(path))?;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sink::tests::files;

    fn fp(n: u64) -> Fingerprint {
        Fingerprint::from_raw(n).unwrap()
    }

    fn line(id: &str, print: Option<u64>) -> String {
        let print = print.map_or("null".to_string(), |p| format!("\"{}\"", fp(p).to_hex()));
        format!(
            "{{\"id\":\"vol-1\",\"custom_id\":\"{id}\",\"response\":null,\"error\":null,\"volley\":{{\"attempts\":1,\"fingerprint\":{print}}}}}\n"
        )
    }

    fn failed(id: &str, print: u64) -> String {
        line(id, Some(print)).replace(
            "\"error\":null",
            "\"error\":{\"code\":\"server_error\",\"message\":\"x\"}",
        )
    }

    fn invalid(id: &str, input_line: u64) -> String {
        format!(
            "{{\"id\":\"vol-input-{input_line}\",\"custom_id\":\"{id}\",\"response\":null,\"error\":{{\"code\":\"invalid_input\",\"message\":\"x\"}},\"volley\":{{\"attempts\":0}}}}\n"
        )
    }

    const FINISHED: Lookup = Lookup::Finished {
        place: Place::Results,
        by_id_only: false,
        stale: false,
    };

    #[test]
    fn lookup_tells_new_finished_changed_and_unfingerprinted() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(
            &f.results,
            format!("{}{}", line("a", Some(1)), line("old", None)),
        )
        .unwrap();
        std::fs::write(&f.errors, failed("x", 3)).unwrap();
        let cp = Checkpoint::read(&f).unwrap();
        assert_eq!(cp.lookup("a", fp(1), false), FINISHED);
        assert_eq!(
            cp.lookup("a", fp(2), false),
            Lookup::Changed {
                place: Place::Results
            }
        );
        assert!(matches!(
            cp.lookup("old", fp(9), false),
            Lookup::Finished {
                by_id_only: true,
                ..
            }
        ));
        assert!(matches!(
            cp.lookup("x", fp(3), false),
            Lookup::Finished {
                place: Place::Errors,
                ..
            }
        ));
        assert_eq!(
            cp.lookup("x", fp(4), false),
            Lookup::Changed {
                place: Place::Errors
            }
        );
        assert_eq!(cp.lookup("x", fp(3), true), Lookup::New);
        // --retry-failed never replaces an answer to another version unasked.
        std::fs::write(&f.errors, format!("{}{}", failed("x", 3), failed("a", 5))).unwrap();
        let cp = Checkpoint::read(&f).unwrap();
        assert_eq!(
            cp.lookup("a", fp(6), true),
            Lookup::Changed {
                place: Place::Results
            }
        );
        assert_eq!(cp.lookup("nobody", fp(1), false), Lookup::New);
        assert_eq!(cp.unfingerprinted, 1);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_complete_one_gets_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let a = line("a", Some(1));
        std::fs::write(&f.results, format!("{a}{{\"id\":\"vol")).unwrap();
        std::fs::write(&f.errors, failed("x", 2).trim_end()).unwrap();
        let mut cp = Checkpoint::read(&f).unwrap();
        assert_eq!(cp.results_lines, 1);
        assert_eq!(cp.errors_lines, 1, "a complete last line counts");
        assert_eq!(
            std::fs::read_to_string(&f.results).unwrap().len(),
            a.len() + 10,
            "reading changes nothing"
        );
        let repaired = cp.repair_tails().unwrap();
        assert_eq!(repaired.len(), 2);
        assert_eq!(std::fs::read_to_string(&f.results).unwrap(), a);
        assert_eq!(std::fs::read_to_string(&f.errors).unwrap(), failed("x", 2));
    }

    #[test]
    fn a_file_that_is_one_torn_line_becomes_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(&f.results, "{\"custom_id\":").unwrap();
        let mut cp = Checkpoint::read(&f).unwrap();
        assert_eq!(cp.results_lines, 0);
        cp.repair_tails().unwrap();
        assert_eq!(std::fs::read(&f.results).unwrap().len(), 0);
    }

    #[test]
    fn a_corrupt_middle_line_or_a_foreign_line_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let text = format!("{}garbage\n{}", line("a", Some(1)), line("b", Some(1)));
        std::fs::write(&f.results, &text).unwrap();
        let err = Checkpoint::read(&f).err().unwrap();
        assert!(err.to_string().contains("r.jsonl:2"), "{err}");
        assert_eq!(std::fs::read_to_string(&f.results).unwrap(), text);
        // A failure in RESULTS, a success in ERRORS: files swapped.
        std::fs::write(&f.results, failed("a", 1)).unwrap();
        let err = Checkpoint::read(&f).err().unwrap();
        assert!(err.to_string().contains("swapped"), "{err}");
        std::fs::write(&f.results, "").unwrap();
        std::fs::write(&f.errors, line("a", Some(1))).unwrap();
        assert!(matches!(
            Checkpoint::read(&f),
            Err(SinkError::Foreign { .. })
        ));
        std::fs::write(&f.errors, "").unwrap();
        // A byte-order mark an editor added is not a corrupt line.
        std::fs::write(&f.results, format!("\u{feff}{}", line("a", Some(1)))).unwrap();
        assert_eq!(
            Checkpoint::read(&f).unwrap().lookup("a", fp(1), false),
            FINISHED
        );
        for foreign in ["{\"custom_id\":\"a\"}\n", "{\"custom_id\":\"a\"}"] {
            std::fs::write(&f.results, foreign).unwrap();
            let err = Checkpoint::read(&f).err().unwrap();
            assert!(matches!(err, SinkError::Foreign { line: 1, .. }), "{err}");
        }
    }

    #[test]
    fn tidy_keeps_one_line_per_failure_and_drops_succeeded_and_stale_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        // "a" was re-run: its old (1) and new (2) answers are both in RESULTS.
        std::fs::write(
            &f.results,
            format!(
                "{}{}{}",
                line("a", Some(1)),
                line("b", Some(1)),
                line("a", Some(2))
            ),
        )
        .unwrap();
        std::fs::write(
            &f.errors,
            format!(
                "{}{}{}{}{}",
                failed("b", 1),
                failed("x", 1),
                invalid("line-7", 7),
                failed("x", 1),
                invalid("line-2", 2)
            ),
        )
        .unwrap();
        let cp = Checkpoint::read(&f).unwrap();
        assert!(matches!(
            cp.lookup("a", fp(2), false),
            Lookup::Finished { stale: true, .. }
        ));
        let mut current = IdMap::default();
        current.insert(id_hash("a"), 2);
        // Input lines after 5 are checked again this run: line 7's record goes.
        let left = cp.tidy(&f, &current, Some(5)).unwrap();
        assert_eq!(left, 2);
        assert_eq!(
            std::fs::read_to_string(&f.results).unwrap(),
            format!("{}{}", line("b", Some(1)), line("a", Some(2)))
        );
        assert_eq!(
            std::fs::read_to_string(&f.errors).unwrap(),
            format!("{}{}", failed("x", 1), invalid("line-2", 2))
        );
    }

    #[test]
    fn output_that_is_not_a_regular_file_is_never_read() {
        let f = OutputFiles {
            results: PathBuf::from("/dev/null"),
            errors: PathBuf::from("/dev/null"),
        };
        let cp = Checkpoint::read(&f).unwrap();
        assert!(!cp.resumable() && cp.is_empty());
        assert_eq!(cp.tidy(&f, &IdMap::default(), Some(0)).unwrap(), 0);
    }
}
