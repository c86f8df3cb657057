//! Rewriting a file safely: a new version written beside it and renamed over it.

use std::fs::File;
use std::path::{Path, PathBuf};

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
        let (dir, prefix) = scratch_place(&target, "rewrite");
        let tmp = tempfile::Builder::new().prefix(&prefix).tempfile_in(dir)?;
        Ok(Some(Replacement { tmp, target }))
    }

    /// Removes new versions of `path` that a process killed mid-rewrite left behind
    /// (see [`clear_scratch`]).
    pub fn clear_leftovers(path: &Path) {
        if let Ok(target) = std::fs::canonicalize(path) {
            clear_scratch(&target, "rewrite");
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

/// The folder and name prefix of the scratch files of `file`: `.NAME.KIND-…` beside
/// it. Named after their file, they can be told from any other file's.
pub fn scratch_place<'a>(file: &'a Path, kind: &str) -> (&'a Path, String) {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    (dir, format!(".{name}.{kind}-"))
}

/// Removes the `kind` scratch files of `file` that a process killed mid-run left
/// behind. Only for the holder of `file`'s lock: no other run is using them.
pub fn clear_scratch(file: &Path, kind: &str) {
    let (dir, prefix) = scratch_place(file, kind);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
