//! volley's configuration file (SPEC §10, §12): one TOML file (or YAML, the same
//! structure) holding defaults for the flags of `volley run` and `volley serve`,
//! named providers and models, and the datasets, prompts and experiments of
//! `volley experiment`.
//!
//! [`ConfigFile::load`] reads, parses and checks a file in full: unknown keys, values
//! of the wrong type or out of range, and names that point nowhere (a model's
//! provider, an experiment's datasets) are errors naming the file, the line and the
//! key path, e.g. `volley.toml:14: experiments.arith-eval.models[1]: no model named
//! "larg" (configured: small, large)`. What it hands back is resolved: defaults filled
//! in, names checked, paths absolute.
//!
//! This crate knows no command line and starts nothing: flag sections are kept as
//! keys and values for the binary to check against its own flags, and providers as
//! settings for it to connect.

#![warn(missing_docs)]

mod de;
mod error;
mod file;
mod flags;
mod path;
mod raw;
mod tree;
mod types;

pub use error::{ConfigError, Located};
pub use file::{ConfigFile, Format, MAX_FILE_BYTES};
pub use flags::{FlagDefault, FlagValue};
pub use path::{KeyPath, Segment};
pub use types::{
    DEFAULT_POSTPROCESS_TIMEOUT, DEFAULT_POSTPROCESS_WORKERS, Dataset, DatasetFormat, Expect,
    Experiment, Judge, Lanes, Model, Postprocess, Prompt, Provider, Verdict,
};
