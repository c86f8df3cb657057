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
