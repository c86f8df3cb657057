//! Log output: tracing to standard error, text or JSON, drawn around the progress bar
//! so log lines never tear it.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
