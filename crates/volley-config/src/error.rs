//! Why a configuration file cannot be used, said so the user can find the spot:
//! `volley.toml:14: experiments.arith-eval.models[1]: no model named "larg" (…)`.

use std::fmt;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file as the user named it.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Its name says neither TOML nor YAML.
    #[error("{path}: a configuration file is TOML (name ending in .toml) or YAML (.yaml or .yml)")]
    Format {
        /// The file as the user named it.
        path: String,
    },
    /// Larger than any configuration file needs to be: refused before it is parsed.
    #[error("{path}: {bytes} bytes is too large for a configuration file (at most {max})")]
    TooLarge {
        /// The file as the user named it.
        path: String,
        /// Its size.
        bytes: u64,
        /// The most accepted.
        max: u64,
    },
    /// Not valid TOML/YAML, or a value that is wrong: at a line and key of the file.
    #[error("{0}")]
    Invalid(Located),
}

/// What is wrong, and where: the file, the line and the key path.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The file as the user named it.
    pub file: String,
    /// 1-based; 0 when the parser could not tell.
    pub line: u32,
    /// The key path of the value (`providers.openrouter.rpm`); empty for the file as a
    /// whole or a syntax error.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    /// Where the error is, when it is about a place in the file.
    pub fn located(&self) -> Option<&Located> {
        match self {
            ConfigError::Invalid(located) => Some(located),
            _ => None,
        }
    }
}
