//! Reading a JSONL file line by line: the input, RESULTS and ERRORS all go through this
//! one reader, so they agree on line numbers, byte offsets, a byte-order mark and a last
//! line without its newline.

use std::io::{BufRead, BufReader, Read};

/// How many lines a file probably has, from its size and the lines in its first
/// 256 KiB, capped: enough to size a table of its ids once instead of letting it double
/// its way up (each doubling briefly holds the old table and the new one). An
/// estimate, never a promise: the table still grows if it is short.
pub fn estimate_lines(path: &std::path::Path) -> usize {
    /// Past this, a table grows as it must; sizing it ahead is not worth the risk of a
    /// file whose first lines say nothing of the rest.
    const MOST: usize = 2_000_000;
    const SAMPLE: usize = 256 * 1024;
    let Ok(file) = std::fs::File::open(path) else {
        return 0;
    };
    let size = file.metadata().map_or(0, |m| m.len()) as usize;
    let mut sample = Vec::with_capacity(SAMPLE.min(size));
    if file.take(SAMPLE as u64).read_to_end(&mut sample).is_err() || sample.is_empty() {
        return 0;
    }
    let lines = memchr::memchr_iter(b'\n', &sample).count().max(1);
    if sample.len() >= size {
        return lines.min(MOST);
    }
    let per_line = sample.len() / lines;
    (size / per_line.max(1) + size / per_line.max(1) / 20).min(MOST)
}

/// One line of a JSONL file.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// 1-based.
    pub number: u64,
    /// Where the line starts in the file, in bytes.
    pub offset: u64,
    /// The line's bytes on disk, newline included (for copying it elsewhere as is).
    pub raw: &'a [u8],
    /// The line without its newline, and on line 1 without a UTF-8 byte-order mark
    /// (editors on Windows write one; it is not part of the JSON).
    pub bytes: &'a [u8],
    /// Whether the line ended with a newline: only a file's last line may lack one,
    /// and a crash mid-write leaves exactly that.
    pub terminated: bool,
}

impl<'a> Line<'a> {
    /// The line as text.
    pub fn text(&self) -> Result<&'a str, std::str::Utf8Error> {
        std::str::from_utf8(self.bytes)
    }

    /// Whether the line holds nothing but white space (blank lines are skipped), by
    /// the same rule as `str::trim` that the input and resume passes apply.
    pub fn is_blank(&self) -> bool {
        self.bytes.trim_ascii().is_empty() || self.text().is_ok_and(|text| text.trim().is_empty())
    }
}

/// Lines of a reader, one at a time into one reused buffer (a lending iterator: each
/// line borrows the reader until the next call).
pub struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    number: u64,
    offset: u64,
}

impl<R: Read> Lines<R> {
    pub fn new(source: R) -> Lines<R> {
        Lines {
            reader: BufReader::with_capacity(1 << 20, source),
            buf: Vec::new(),
            number: 0,
            offset: 0,
        }
    }

    /// The next line; `None` at the end.
    pub fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        let offset = self.offset;
        self.offset += n as u64;
        let terminated = self.buf.last() == Some(&b'\n');
        let mut bytes = &self.buf[..];
        if terminated {
            bytes = &bytes[..bytes.len() - 1];
            if bytes.last() == Some(&b'\r') {
                bytes = &bytes[..bytes.len() - 1];
            }
        }
        if self.number == 1
            && let Some(rest) = bytes.strip_prefix("\u{feff}".as_bytes())
        {
            bytes = rest;
        }
        Ok(Some(Line {
            number: self.number,
            offset,
            raw: &self.buf,
            bytes,
            terminated,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_offsets_bom_crlf_and_an_unterminated_tail() {
        let text = "\u{feff}{\"a\":1}\r\n\n{\"b\":2}\n{\"c\"";
        let mut lines = Lines::new(text.as_bytes());
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            seen.push((
                line.number,
                line.offset,
                line.text().unwrap().to_string(),
                line.terminated,
                line.is_blank(),
            ));
        }
        assert_eq!(
            seen,
            vec![
                (1, 0, "{\"a\":1}".into(), true, false),
                (2, 12, "".into(), true, true),
                (3, 13, "{\"b\":2}".into(), true, false),
                (4, 21, "{\"c\"".into(), false, false),
            ]
        );
    }
}
