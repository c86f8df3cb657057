//! Exit codes (SPEC §2), as a type so every path says which one it means.

/// How `volley` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every request succeeded.
    Success = 0,
    /// Some requests failed for good; they are in ERRORS.
    Failures = 1,
    /// A usage or input error, found before any request was sent.
    Usage = 2,
    /// Stopped early (interrupted, no key left); a re-run resumes.
    Stopped = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}
