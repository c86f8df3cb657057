//! Log output: tracing to standard error, text or JSON, drawn around the progress bar
//! so log lines never tear it.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use serde::Serialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use crate::cli::LogFormat;

/// The bar that log lines must be drawn around, once there is one.
#[derive(Clone, Default)]
pub struct BarSlot(Arc<Mutex<Option<ProgressBar>>>);

impl BarSlot {
    pub fn set(&self, bar: Option<ProgressBar>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = bar;
    }
    fn get(&self) -> Option<ProgressBar> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Buffers one log record and writes it in one piece, above the bar if there is one.
pub struct LineWriter {
    slot: BarSlot,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let emit = || {
            let _ = std::io::stderr().lock().write_all(&buf);
        };
        match self.slot.get() {
            Some(bar) => bar.suspend(emit),
            None => emit(),
        }
    }
}

impl<'a> MakeWriter<'a> for BarSlot {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            slot: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the level.
pub fn init(format: LogFormat, quiet: bool, slot: BarSlot) {
    let level = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(slot)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests calling twice) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.without_time().try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// One record shaped like the JSON log lines (`timestamp`, `level`, `fields`), for
/// output that is data, not a message: tracing can only put flat values in `fields`, and
/// a consumer of `--log-format json` should find the final summary as nested JSON in
/// the same stream, read the same way as every other line.
pub fn json_record(level: tracing::Level, fields: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Record<'a, F> {
        timestamp: String,
        level: &'a str,
        fields: &'a F,
    }
    let mut timestamp = String::new();
    // The subscriber's own clock and format, so every line's timestamp reads alike.
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let record = Record {
        timestamp,
        level: level.as_str(),
        fields,
    };
    // Plain data with string keys always serializes; should it not, a line that still
    // parses beats a missing one.
    serde_json::to_string(&record).unwrap_or_else(|e| {
        serde_json::json!({"level": "ERROR", "fields": {"message": format!("cannot encode a log record: {e}")}})
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_record_reads_like_a_json_log_line() {
        let line = json_record(
            tracing::Level::INFO,
            &serde_json::json!({"message": "m", "n": {"a": 1}}),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["n"]["a"], 1);
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
