//! Datasets: JSONL (one object per line) or CSV (a header row), read as a stream of
//! rows with an id, so a run's memory does not grow with the dataset.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use volley_core::input::ids::IdSet;

use crate::plan::DatasetSpec;

/// Why a dataset cannot be read: the file, the line, and what is wrong there.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Row {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("{path}: a dataset is a .jsonl or .csv file")]
    Format { path: String },
}

/// One row: its id and its fields (CSV values are strings).
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub fields: Map<String, Value>,
    /// 1-based line in the file, for error messages.
    pub line: u64,
}

enum Reader {
    Jsonl(std::io::Lines<BufReader<File>>),
    Csv {
        records: csv::StringRecordsIntoIter<File>,
        headers: Vec<String>,
    },
}

/// The rows of a dataset, in file order; each id must be unique.
pub struct Rows {
    reader: Reader,
    path: PathBuf,
    id_field: String,
    line: u64,
    seen: IdSet,
}

/// The longest id kept: ids name answers and appear in every line about them.
const MAX_ID_LEN: usize = 512;

impl Rows {
    /// Opens `dataset` for reading; the format follows the extension.
    pub fn open(dataset: &DatasetSpec) -> Result<Rows, DatasetError> {
        let path = &dataset.path;
        let shown = || path.display().to_string();
        let io = |source| DatasetError::Io {
            path: shown(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let (reader, line) = match extension(path).as_deref() {
            Some("jsonl") | Some("ndjson") => (Reader::Jsonl(BufReader::new(file).lines()), 0),
            Some("csv") => {
                let mut csv = csv::ReaderBuilder::new().flexible(false).from_reader(file);
                let headers = csv
                    .headers()
                    .map_err(|e| DatasetError::Row {
                        path: shown(),
                        line: 1,
                        reason: format!("cannot read the header row: {e}"),
                    })?
                    .iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>();
                if !headers.iter().any(|h| h == &dataset.id_field) {
                    return Err(DatasetError::Row {
                        path: shown(),
                        line: 1,
                        reason: format!(
                            "no column \"{}\" (the id field) in the header: {}",
                            dataset.id_field,
                            headers.join(", ")
                        ),
                    });
                }
                // The header is line 1.
                let reader = Reader::Csv {
                    records: csv.into_records(),
                    headers,
                };
                (reader, 1)
            }
            _ => return Err(DatasetError::Format { path: shown() }),
        };
        Ok(Rows {
            reader,
            path: path.clone(),
            id_field: dataset.id_field.clone(),
            line,
            seen: IdSet::new(),
        })
    }

    fn error(&self, reason: String) -> DatasetError {
        DatasetError::Row {
            path: self.path.display().to_string(),
            line: self.line,
            reason,
        }
    }

    /// The next row's fields, `None` at the end; blank JSONL lines are skipped.
    fn next_fields(&mut self) -> Option<Result<Map<String, Value>, DatasetError>> {
        match &mut self.reader {
            Reader::Jsonl(lines) => loop {
                let line = lines.next()?;
                self.line += 1;
                let line = match line {
                    Ok(line) => line,
                    Err(e) => return Some(Err(self.error(format!("cannot read: {e}")))),
                };
                if line.trim().is_empty() {
                    continue;
                }
                return Some(match serde_json::from_str::<Value>(&line) {
                    Ok(Value::Object(fields)) => Ok(fields),
                    Ok(_) => Err(self.error("not a JSON object".into())),
                    Err(e) => Err(self.error(format!("not valid JSON: {e}"))),
                });
            },
            Reader::Csv { records, headers } => {
                let record = records.next()?;
                Some(match record {
                    Ok(record) => {
                        // The record's own line: a quoted field may span several.
                        self.line = record.position().map_or(self.line + 1, |p| p.line());
                        Ok(headers
                            .iter()
                            .zip(record.iter())
                            .map(|(h, v)| (h.clone(), Value::String(v.to_owned())))
                            .collect())
                    }
                    Err(e) => {
                        self.line = e.position().map_or(self.line + 1, |p| p.line());
                        Err(self.error(format!("not a valid CSV record: {e}")))
                    }
                })
            }
        }
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

impl Iterator for Rows {
    type Item = Result<Row, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let fields = match self.next_fields()? {
            Ok(fields) => fields,
            Err(e) => return Some(Err(e)),
        };
        let id = match fields.get(&self.id_field) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Some(Err(self.error(format!(
                    "the id field \"{}\" must be a non-empty string or a number",
                    self.id_field
                ))));
            }
            None => {
                return Some(Err(
                    self.error(format!("no \"{}\" field (the id field)", self.id_field))
                ));
            }
        };
        if id.len() > MAX_ID_LEN {
            return Some(Err(self.error(format!(
                "the id is {} bytes long; at most {MAX_ID_LEN}",
                id.len()
            ))));
        }
        if !self.seen.insert(&id) {
            return Some(Err(
                self.error(format!("the id \"{id}\" is used by an earlier row"))
            ));
        }
        Some(Ok(Row {
            id,
            fields,
            line: self.line,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path) -> DatasetSpec {
        DatasetSpec {
            name: "d".into(),
            path: path.to_owned(),
            id_field: "id".into(),
        }
    }

    #[test]
    fn jsonl_and_csv_rows_with_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(
            &jsonl,
            "{\"id\": 1, \"q\": \"a\"}\n\n{\"id\": \"x\", \"q\": \"b\"}\n",
        )
        .unwrap();
        let rows: Vec<Row> = Rows::open(&spec(&jsonl))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].id.as_str(), rows[0].line), ("1", 1));
        assert_eq!((rows[1].id.as_str(), rows[1].line), ("x", 3));

        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "id,q\nr1,\"two\nlines\"\nr2,b\n").unwrap();
        let rows: Vec<Row> = Rows::open(&spec(&csv))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].fields["q"], "two\nlines");
        assert_eq!((rows[0].line, rows[1].line), (2, 4));
    }

    #[test]
    fn bad_rows_are_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("a.jsonl", "{\"id\": 1}\n[1]\n", ":2: not a JSON object"),
            (
                "b.jsonl",
                "{\"id\": 1}\n{\"q\": 2}\n",
                ":2: no \"id\" field",
            ),
            (
                "c.jsonl",
                "{\"id\": 1}\n{\"id\": 1}\n",
                ":2: the id \"1\" is used",
            ),
            ("d.jsonl", "{\"id\": true}\n", ":1: the id field"),
            ("e.jsonl", "{\"id\": 1\n", ":1: not valid JSON"),
            ("f.csv", "q,r\n1,2\n", ":1: no column \"id\""),
            ("g.csv", "id,q\n1,2\n3\n", ":3: not a valid CSV record"),
        ];
        for (name, text, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = match Rows::open(&spec(&path)) {
                Err(e) => e,
                Ok(rows) => rows.filter_map(Result::err).next().expect(name),
            };
            let shown = err.to_string();
            assert!(
                shown.contains(name) && shown.contains(want),
                "{name}: {shown}"
            );
        }
        let txt = dir.path().join("x.txt");
        std::fs::write(&txt, "").unwrap();
        assert!(matches!(
            Rows::open(&spec(&txt)),
            Err(DatasetError::Format { .. })
        ));
    }
}
