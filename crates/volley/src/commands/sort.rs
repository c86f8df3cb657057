//! `volley sort RESULTS --input INPUT`.

use anyhow::Context;

use volley_core::store::claim::{self, HeldFiles, NamedFile, OutputLock};

use crate::cli::SortArgs;
use crate::exit::Exit;

pub fn sort(args: SortArgs) -> anyhow::Result<Exit> {
    claim::check_distinct(&[
        NamedFile::read("--input", &args.input),
        NamedFile::write("RESULTS", &args.results),
    ])?;
    // A run writing RESULTS now would append to the file the sort is about to replace.
    let _lock = match OutputLock::acquire(&args.results) {
        Ok(lock) => lock,
        Err(e) => {
            errln!("error: {e}");
            return Ok(Exit::Usage);
        }
    };
    let mut held = HeldFiles::new();
    if let Err(e) = held.hold(&[NamedFile::write("RESULTS", &args.results)]) {
        errln!("error: {e}");
        return Ok(Exit::Usage);
    }
    let sorted = volley_core::store::sort::sort_results(&args.results, &args.input)
        .with_context(|| format!("cannot sort {}", args.results.display()))?;
    errln!(
        "sorted {} lines of {} into the order of {}{}",
        sorted.lines,
        args.results.display(),
        args.input.display(),
        if sorted.unmatched > 0 {
            format!(" ({} not in the input, kept at the end)", sorted.unmatched)
        } else {
            String::new()
        }
    );
    Ok(Exit::Success)
}
