//! `volley sort RESULTS --input INPUT`.

use anyhow::Context;

use crate::cli::SortArgs;
use crate::exit::Exit;

pub fn sort(args: SortArgs) -> anyhow::Result<Exit> {
    let sorted = volley_core::sort::sort_results(&args.results, &args.input)
        .with_context(|| format!("cannot sort {}", args.results.display()))?;
    eprintln!(
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
