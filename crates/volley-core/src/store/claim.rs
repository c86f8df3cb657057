//! The files a run claims: which of them are the same file, who else is writing them,
//! and whether they can be written at all — all settled before any request is sent.
//!
//! A paid-for result must never be written over the input, over another output, or
//! next to a second run sending the same requests. So every file a command names is
//! compared by identity (device and inode, or for a file not created yet its resolved
//! place), never by the spelling of its path; and a run holds an [`OutputLock`] beside
//! RESULTS for as long as it writes. This module only looks at paths and holds locks: it
//! never reads or writes a result line.

use std::fs::{File, Metadata, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed when resolving one dangling link, as the kernel's own limit
/// (Linux `MAXSYMLINKS`): a longer chain is a loop.
const MAX_LINKS: u32 = 40;

/// Times [`OutputLock::acquire`] opens the lock file again because the file it locked
/// had just been removed by a run on its way out. Each retry needs another run to take
/// and drop the lock in between, so a handful is plenty; the bound only keeps a
/// pathological race from spinning.
const LOCK_ATTEMPTS: u32 = 16;

/// Why a run cannot claim its files. Each variant names the files and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "{path} is being written by another volley run ({}); wait for it to finish or stop it, then run again",
        holder(*.pid)
    )]
    Held {
        /// The RESULTS file the other run holds.
        path: String,
        /// The holder's process id, when its lock file says it.
        pid: Option<u32>,
    },
    #[error(
        "{first_label} {first} and {second_label} {second} are the same file; name a different file for {second_label}"
    )]
    SameFile {
        first_label: String,
        first: String,
        second_label: String,
        second: String,
    },
    #[error(
        "{label} {path} is being written by another volley run that names it differently (a hard link, or the same --errors for another OUTPUT); wait for it to finish or stop it, then run again"
    )]
    InUse { label: String, path: String },
    #[error("{label} {path}: {source}")]
    Io {
        label: String,
        path: String,
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid not known yet".into(),
    }
}

fn io_error<'a>(label: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> ClaimError + 'a {
    move |source| ClaimError::Io {
        label: label.into(),
        path: path.display().to_string(),
        source,
    }
}

/// What makes two paths the same file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileIdentity {
    /// An existing file: the same device and inode whatever path reaches it (symlinks,
    /// `..`, hard links).
    Existing { dev: u64, ino: u64 },
    /// A file not created yet: the absolute place it will be created at, with every
    /// existing folder on the way canonicalized and `..` resolved.
    Future(PathBuf),
}

/// Where a path leads.
enum Located {
    Existing(Metadata),
    Future(PathBuf),
}

impl FileIdentity {
    /// The identity of `path`, following symlinks; a dangling symlink is the file that
    /// writing through it would create.
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        Ok(match locate(path)? {
            Located::Existing(m) => FileIdentity::Existing {
                dev: m.dev(),
                ino: m.ino(),
            },
            Located::Future(at) => FileIdentity::Future(at),
        })
    }
}

fn locate(path: &Path) -> std::io::Result<Located> {
    // The file itself first: a pipe reached through `/dev/stdout` has an inode but no
    // path to resolve.
    match std::fs::metadata(path) {
        Ok(m) => return Ok(Located::Existing(m)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let at = future_place(&past_dangling_links(path)?)?;
    Ok(match std::fs::metadata(&at) {
        // `missing/../batch.jsonl` is `batch.jsonl` once `missing` is created.
        Ok(m) => Located::Existing(m),
        Err(_) => Located::Future(at),
    })
}

/// The canonical path of `path` if it exists, else the place it will be created at.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            future_place(&past_dangling_links(path)?)
        }
        Err(e) => Err(e),
    }
}

/// `path`, or if it is a dangling symlink what it leads to, link after link: opening a
/// dangling link for writing creates its target, so that is the file.
fn past_dangling_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !link || std::fs::metadata(&path).is_ok() {
            return Ok(path);
        }
        let target = std::fs::read_link(&path)?;
        path = match path.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// Where a path that does not exist yet will be created. Folders that exist are
/// canonicalized one by one, so `..` after a symlinked folder goes where the kernel
/// goes; past the first missing folder `..` is lexical, which is also what creating the
/// missing folders and then opening the path does.
fn future_place(path: &Path) -> std::io::Result<PathBuf> {
    let mut at = PathBuf::new();
    for part in std::path::absolute(path)?.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => at.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                at.pop();
            }
            Component::Normal(name) => {
                at.push(name);
                if let Ok(real) = std::fs::canonicalize(&at) {
                    at = real;
                }
            }
        }
    }
    Ok(at)
}

/// Whether a run reads or writes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A file a command names, with the label a user knows it by (`INPUT`, `--report`).
#[derive(Debug, Clone, Copy)]
pub struct NamedFile<'a> {
    pub label: &'a str,
    pub path: &'a Path,
    pub access: Access,
}

impl<'a> NamedFile<'a> {
    pub fn read(label: &'a str, path: &'a Path) -> NamedFile<'a> {
        NamedFile {
            label,
            path,
            access: Access::Read,
        }
    }
    pub fn write(label: &'a str, path: &'a Path) -> NamedFile<'a> {
        NamedFile {
            label,
            path,
            access: Access::Write,
        }
    }
}

/// Refuses the first two of `files` that are the same file, in the order given.
///
/// Only one exception: a pipe or a device (`/dev/stdout`, `/dev/null`) may take the
/// writes of several outputs, since nothing is read back from it nor written over; it is
/// still refused as any file that is read.
pub fn check_distinct(files: &[NamedFile<'_>]) -> Result<(), ClaimError> {
    let mut seen: Vec<(&NamedFile<'_>, FileIdentity)> = Vec::with_capacity(files.len());
    for file in files {
        let identity = FileIdentity::of(file.path).map_err(io_error(file.label, file.path))?;
        let shared_stream = file.access == Access::Write && !is_regular_output(file.path);
        let clash = seen.iter().find(|(earlier, id)| {
            *id == identity && !(shared_stream && earlier.access == Access::Write)
        });
        if let Some((earlier, _)) = clash {
            return Err(ClaimError::SameFile {
                first_label: earlier.label.into(),
                first: earlier.path.display().to_string(),
                second_label: file.label.into(),
                second: file.path.display().to_string(),
            });
        }
        seen.push((file, identity));
    }
    Ok(())
}

/// Whether an output path is (or will be created as) a regular file of its own,
/// following symlinks. Anything else cannot be read back to resume from, locked beside,
/// named after or rewritten: a pipe such as `/dev/stdout | jq` (reading one's own pipe
/// waits forever), a character device, and any name under `/dev` or `/proc`, even one
/// that leads to a regular file (`/dev/stdout > out.jsonl`, `/dev/fd/3`): it names
/// whatever the shell opened, which a rewrite would replace behind the shell's back.
pub fn is_regular_output(path: &Path) -> bool {
    if names_a_stream(path) {
        return false;
    }
    match std::fs::metadata(path) {
        Ok(m) => m.is_file(),
        // Not there yet: it will be created as a regular file. Any other error is met,
        // and named, where the file is opened.
        Err(_) => true,
    }
}

/// Whether `path`, or a symlink on the way to its file, names something under `/dev`
/// or `/proc`.
fn names_a_stream(path: &Path) -> bool {
    let system = |p: &Path| p.starts_with("/dev") || p.starts_with("/proc");
    let mut at = match std::path::absolute(path) {
        Ok(at) => at,
        Err(_) => return false,
    };
    for _ in 0..=MAX_LINKS {
        if system(&at) {
            return true;
        }
        match std::fs::read_link(&at) {
            Ok(target) => {
                at = match at.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            Err(_) => return false,
        }
    }
    false
}

/// Finds out now, before any request is sent, whether `path` can be written once the
/// run is over: a read-only file system, a missing folder, a folder or a file without
/// write permission is an error naming `label` and the OS's reason. The path is opened
/// for appending, so nothing in an existing file changes; a file created by the check
/// is removed again.
pub fn check_writable(label: &str, path: &Path) -> Result<(), ClaimError> {
    let created = match locate(path).map_err(io_error(label, path))? {
        // A pipe with no reader would block the open; a device or pipe is written at
        // the end or fails then, with the reason said.
        Located::Existing(m) if !m.is_file() && !m.is_dir() => return Ok(()),
        Located::Existing(_) => None,
        Located::Future(at) => Some(at),
    };
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error(label, path))?;
    if let Some(at) = created {
        // An empty file left behind would only be overwritten by the report later.
        let _ = std::fs::remove_file(at);
    }
    Ok(())
}

/// An exclusive claim on a run's RESULTS (and with them its ERRORS): an advisory lock
/// (`flock`) on `RESULTS.lock`, which holds the holder's pid for the message a second
/// run prints. The kernel releases the lock when the process ends however it ends, so a
/// lock file left by a crash blocks nobody. Dropping the guard removes the file.
///
/// Removal is safe against a run starting at that moment: the file is unlinked while
/// still locked, and a run that locked a file checks that the path still leads to the
/// file it locked, else it starts over on the new one.
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    /// `RESULTS.lock`, beside the file RESULTS is (symlinks and `..` resolved), so that
    /// every name of one RESULTS leads to one lock.
    pub fn path_for(results: &Path) -> Result<PathBuf, ClaimError> {
        let mut name = resolve(results)
            .map_err(io_error("RESULTS", results))?
            .into_os_string();
        name.push(".lock");
        Ok(PathBuf::from(name))
    }

    /// Takes the lock at once, or says who holds it ([`ClaimError::Held`]). Creates
    /// RESULTS's folder if missing, as writing RESULTS would.
    pub fn acquire(results: &Path) -> Result<OutputLock, ClaimError> {
        let path = Self::path_for(results)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error("folder", dir))?;
        }
        for _ in 0..LOCK_ATTEMPTS {
            if let Some(file) = lock_once(&path, results)? {
                return Ok(OutputLock { file, path });
            }
        }
        Err(io_error("lock file", &path)(std::io::Error::other(
            "replaced by other runs on every try; run again",
        )))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Unlinked while still locked (the lock goes with `file`, after this), and only
        // if it is still ours: someone may have deleted it by hand and another run made
        // a new one.
        if still_at(&self.file, &self.path).unwrap_or(false) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Locks on the output files themselves, beside [`OutputLock`]: the lock file is found
/// by RESULTS' name, but a hard link or one ERRORS named by two runs reaches the same
/// file by another name. An advisory lock on each file (its inode) catches those.
///
/// A rewrite (resume dropping lines that no longer count) puts a new file in place, so
/// [`HeldFiles::hold`] is called again after one to lock the new file too.
#[derive(Debug, Default)]
pub struct HeldFiles {
    held: Vec<(FileIdentity, File)>,
}

impl HeldFiles {
    pub fn new() -> HeldFiles {
        HeldFiles::default()
    }

    /// Locks each of `files` that exists as a regular file and is not held yet; one
    /// that another process holds is [`ClaimError::InUse`].
    pub fn hold(&mut self, files: &[NamedFile<'_>]) -> Result<(), ClaimError> {
        for named in files {
            let metadata = match std::fs::metadata(named.path) {
                Ok(m) if m.is_file() => m,
                // Not created yet, or a pipe or device: nothing to lock.
                _ => continue,
            };
            let identity = FileIdentity::Existing {
                dev: metadata.dev(),
                ino: metadata.ino(),
            };
            // flock belongs to an open file: locking ours again through a second open
            // would refuse ourselves.
            if self.held.iter().any(|(held, _)| *held == identity) {
                continue;
            }
            let err = io_error(named.label, named.path);
            let file = File::open(named.path).map_err(&err)?;
            match file.try_lock() {
                Ok(()) => self.held.push((identity, file)),
                Err(TryLockError::WouldBlock) => {
                    return Err(ClaimError::InUse {
                        label: named.label.into(),
                        path: named.path.display().to_string(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(err(e)),
            }
        }
        Ok(())
    }
}

/// Opens and locks the lock file at `path`, writing our pid into it; `None` if the file
/// locked was unlinked meanwhile by a run on its way out (the caller tries again).
fn lock_once(path: &Path, results: &Path) -> Result<Option<File>, ClaimError> {
    let err = io_error("lock file", path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(&err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ClaimError::Held {
                path: results.display().to_string(),
                pid: read_pid(&mut file),
            });
        }
        Err(TryLockError::Error(e)) => return Err(err(e)),
    }
    if !still_at(&file, path).map_err(&err)? {
        return Ok(None);
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(&err)?;
    Ok(Some(file))
}

/// Whether `path` still leads to the open `file` (a run on its way out may have
/// unlinked it after we opened it).
fn still_at(file: &File, path: &Path) -> std::io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The pid a holder wrote into its lock file; `None` if it has not written it yet.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &Path) -> FileIdentity {
        FileIdentity::of(path).unwrap()
    }

    #[test]
    fn a_second_claim_is_refused_with_the_holders_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let results = dir.path().join("b.results.jsonl");
        let lock = OutputLock::acquire(&results).unwrap();
        assert_eq!(lock.path(), base.join("b.results.jsonl.lock"));
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock belongs to the open file, so a second open in this process is refused
        // as another process would be.
        let err = OutputLock::acquire(&results).unwrap_err();
        assert!(
            matches!(err, ClaimError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id()))
                && message.contains("b.results.jsonl"),
            "{message}"
        );
        // Another name of the same RESULTS is the same claim.
        std::fs::write(&results, "").unwrap();
        std::os::unix::fs::symlink(&results, dir.path().join("link.jsonl")).unwrap();
        for alias in [
            dir.path().join("link.jsonl"),
            dir.path().join("x/../b.results.jsonl"),
        ] {
            let err = OutputLock::acquire(&alias).unwrap_err();
            assert!(
                matches!(err, ClaimError::Held { .. }),
                "{}: {err:?}",
                alias.display()
            );
        }
        drop(lock);
        assert!(!base.join("b.results.jsonl.lock").exists());
        let again = OutputLock::acquire(&results).unwrap();
        drop(again);
    }

    #[test]
    fn a_lock_file_left_by_a_dead_run_blocks_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("b.results.jsonl");
        // Exists with a pid in it, but nobody holds the lock: what `kill -9` leaves.
        std::fs::write(OutputLock::path_for(&results).unwrap(), "4000000\n").unwrap();
        let lock = OutputLock::acquire(&results).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(
            text,
            format!("{}\n", std::process::id()),
            "the pid is replaced"
        );
    }

    #[test]
    fn a_lock_whose_file_was_replaced_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let file = File::create(&path).unwrap();
        assert!(still_at(&file, &path).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(!still_at(&file, &path).unwrap(), "unlinked");
        std::fs::write(&path, "").unwrap();
        assert!(!still_at(&file, &path).unwrap(), "a new file at the path");
    }

    #[test]
    fn the_guard_leaves_a_lock_file_that_is_no_longer_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("r.jsonl");
        let lock = OutputLock::acquire(&results).unwrap();
        // Deleted by hand, then another run made a new one.
        std::fs::remove_file(lock.path()).unwrap();
        let other = OutputLock::acquire(&results).unwrap();
        drop(lock);
        assert!(other.path().exists(), "the other run's lock file stays");
    }

    #[test]
    fn one_file_by_any_path_is_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let input = base.join("batch.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        std::fs::create_dir(base.join("x")).unwrap();
        std::os::unix::fs::symlink(&input, base.join("link.jsonl")).unwrap();
        std::os::unix::fs::symlink(base.join("x"), base.join("xlink")).unwrap();
        std::fs::hard_link(&input, base.join("hard.jsonl")).unwrap();
        for same in [
            base.join("x/../batch.jsonl"),
            base.join("./batch.jsonl"),
            base.join("link.jsonl"),
            base.join("hard.jsonl"),
            base.join("xlink/../batch.jsonl"),
            // A missing folder then `..`: creating the folder and opening the path
            // reaches the input.
            base.join("missing/../batch.jsonl"),
        ] {
            assert_eq!(id(&same), id(&input), "{}", same.display());
        }
        assert_ne!(id(&base.join("other.jsonl")), id(&input));
    }

    #[test]
    fn files_not_created_yet_are_told_apart_by_where_they_will_be() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("x")).unwrap();
        std::os::unix::fs::symlink(base.join("x"), base.join("xlink")).unwrap();
        let future = FileIdentity::Future(base.join("x/out.jsonl"));
        assert_eq!(id(&base.join("x/out.jsonl")), future);
        assert_eq!(id(&base.join("xlink/out.jsonl")), future);
        assert_eq!(id(&base.join("x/./../x/out.jsonl")), future);
        // A dangling symlink is the file writing through it would create.
        std::os::unix::fs::symlink(base.join("x/out.jsonl"), base.join("dangling")).unwrap();
        assert_eq!(id(&base.join("dangling")), future);
        // Relative links resolve from the link's folder.
        std::os::unix::fs::symlink("x/out.jsonl", base.join("relative")).unwrap();
        assert_eq!(id(&base.join("relative")), future);
        assert_eq!(
            id(&base.join("a/b/../c.jsonl")),
            FileIdentity::Future(base.join("a/c.jsonl"))
        );
        assert_ne!(id(&base.join("x/other.jsonl")), future);
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert!(FileIdentity::of(&dir.path().join("a")).is_err());
        let err = check_distinct(&[NamedFile::write("RESULTS", &dir.path().join("a"))])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("RESULTS "), "{err}");
    }

    #[test]
    fn the_first_clash_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let results = dir.path().join("in.results.jsonl");
        let alias = dir.path().join("x/../in.results.jsonl");
        std::fs::create_dir(dir.path().join("x")).unwrap();
        let files = [
            NamedFile::read("INPUT", &input),
            NamedFile::write("RESULTS", &results),
            NamedFile::write("--events", &alias),
        ];
        let err = check_distinct(&files).unwrap_err().to_string();
        assert!(
            err.contains("RESULTS") && err.contains("--events") && err.contains("x/../"),
            "{err}"
        );
        assert!(check_distinct(&files[..2]).is_ok());
        // Two reads of one file are refused too (`volley report X --errors X`).
        let err = check_distinct(&[
            NamedFile::read("RESULTS", &input),
            NamedFile::read("--errors", &input),
        ])
        .unwrap_err();
        assert!(matches!(err, ClaimError::SameFile { .. }), "{err:?}");
    }

    #[test]
    fn a_device_may_take_several_outputs_but_is_never_also_an_input() {
        let null = Path::new("/dev/null");
        assert!(!is_regular_output(null));
        assert!(
            check_distinct(&[
                NamedFile::write("RESULTS", null),
                NamedFile::write("ERRORS", null)
            ])
            .is_ok()
        );
        assert!(
            check_distinct(&[
                NamedFile::read("INPUT", null),
                NamedFile::write("RESULTS", null)
            ])
            .is_err()
        );
    }

    #[test]
    fn regular_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.jsonl");
        assert!(is_regular_output(&file), "not created yet");
        std::fs::write(&file, "").unwrap();
        assert!(is_regular_output(&file));
        assert!(!is_regular_output(dir.path()));
    }

    #[test]
    fn writable_is_checked_without_leaving_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.json");
        check_writable("--report", &report).unwrap();
        assert!(!report.exists(), "the probe removes what it created");
        std::fs::write(&report, "kept").unwrap();
        check_writable("--report", &report).unwrap();
        assert_eq!(std::fs::read_to_string(&report).unwrap(), "kept");
        // Through a dangling link: the probe's file (the link's target) goes again.
        let target = dir.path().join("target.json");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        check_writable("--report", &link).unwrap();
        assert!(!target.exists());
        for bad in [dir.path().to_path_buf(), dir.path().join("missing/r.json")] {
            let err = check_writable("--report", &bad).unwrap_err().to_string();
            assert!(
                err.starts_with("--report ") && err.contains(&*bad.to_string_lossy()),
                "{err}"
            );
        }
    }
}
