//! `volley sort`: rewrites RESULTS in input order.
//!
//! RESULTS is written in completion order, which is what makes it crash-safe. Sorting
//! keeps memory small for big files: it holds only each line's offset, length and rank,
//! then copies lines into a temporary file that replaces RESULTS atomically (through a
//! symlink, its permissions kept). The caller holds RESULTS' lock: a run appending
//! meanwhile would lose its lines to the rename.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::input::batch::peek_custom_id;
use crate::input::ids::id_hash;
use crate::input::lines::Lines;
use crate::store::Replacement;

/// Why a sort failed.
#[derive(Debug, thiserror::Error)]
pub enum SortError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a valid output line: {reason}")]
    Corrupt {
        path: String,
        line: u64,
        reason: String,
    },
}

/// What a sort did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sorted {
    pub lines: u64,
    /// Lines whose custom_id is not in the input; they keep their order at the end.
    pub unmatched: u64,
}

/// Sorts `results` into the order of `input`, in place.
pub fn sort_results(results: &Path, input: &Path) -> Result<Sorted, SortError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| SortError::Io { path, source }
    };
    // Rank of each input id, by hash.
    let mut rank: HashMap<u64, u64> = HashMap::new();
    let mut lines = Lines::new(File::open(input).map_err(io(input))?);
    while let Some(line) = lines.next_line().map_err(io(input))? {
        if !line.is_blank() {
            let text = String::from_utf8_lossy(line.bytes);
            rank.entry(id_hash(&peek_custom_id(&text, line.number)))
                .or_insert(line.number);
        }
    }

    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        custom_id: std::borrow::Cow<'a, str>,
    }
    // (rank, offset, length) of every results line, without its newline (and a
    // byte-order mark an editor may have put on line 1).
    let mut entries: Vec<(u64, u64, u64)> = Vec::new();
    let mut lines = Lines::new(File::open(results).map_err(io(results))?);
    let mut unmatched = 0u64;
    while let Some(line) = lines.next_line().map_err(io(results))? {
        if line.is_blank() {
            continue;
        }
        let parsed: IdOnly<'_> =
            serde_json::from_slice(line.bytes).map_err(|e| SortError::Corrupt {
                path: results.display().to_string(),
                line: line.number,
                reason: e.to_string(),
            })?;
        let r = match rank.get(&id_hash(&parsed.custom_id)) {
            Some(r) => *r,
            None => {
                unmatched += 1;
                u64::MAX / 2 + line.number
            }
        };
        let skipped = line.bytes.as_ptr() as usize - line.raw.as_ptr() as usize;
        entries.push((r, line.offset + skipped as u64, line.bytes.len() as u64));
    }
    entries.sort_unstable();

    let mut replacement = Replacement::beside(results)
        .map_err(io(results))?
        .ok_or_else(|| io(results)(std::io::ErrorKind::NotFound.into()))?;
    {
        let mut src = File::open(results).map_err(io(results))?;
        let mut out = BufWriter::new(replacement.file());
        let mut buf = Vec::new();
        for (_, offset, len) in &entries {
            buf.resize(*len as usize, 0);
            src.seek(SeekFrom::Start(*offset)).map_err(io(results))?;
            src.read_exact(&mut buf).map_err(io(results))?;
            buf.push(b'\n');
            out.write_all(&buf).map_err(io(results))?;
        }
        out.flush().map_err(io(results))?;
    }
    replacement.commit().map_err(io(results))?;
    Ok(Sorted {
        lines: entries.len() as u64,
        unmatched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_into_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        let results = dir.path().join("out.jsonl");
        std::fs::write(&input, "{\"custom_id\":\"a\",\"body\":{}}\n\n{\"prompt\":\"x\"}\n{\"id\":\"c\",\"prompt\":\"y\"}\n").unwrap();
        let r = |id: &str| format!("{{\"custom_id\":\"{id}\",\"n\":1}}\n");
        std::fs::write(
            &results,
            format!("{}{}{}{}", r("zz"), r("c"), r("line-3"), r("a")),
        )
        .unwrap();
        let sorted = sort_results(&results, &input).unwrap();
        assert_eq!(
            sorted,
            Sorted {
                lines: 4,
                unmatched: 1
            }
        );
        let text = std::fs::read_to_string(&results).unwrap();
        assert_eq!(
            text,
            format!("{}{}{}{}", r("a"), r("line-3"), r("c"), r("zz"))
        );
    }
}
