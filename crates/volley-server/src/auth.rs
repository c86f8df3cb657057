//! Who is asking: every `/v1` route needs a bearer token when the gateway has any, and
//! the token names the tenant whose files and batches the request may see.
//!
//! The client's `Authorization` is only ever the gateway's: it is never sent upstream
//! (upstream requests carry the key pool's keys) and never logged.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The tenant of a request, put in its extensions by [`require_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// The tenant of a gateway without tokens, or with one token.
pub const DEFAULT_TENANT: &str = "default";

/// Why the tokens could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Token(String),
}

/// A token and the tenant it names.
type Token = (Tenant, Vec<u8>);

/// The tokens the gateway takes.
#[derive(Clone)]
pub struct Auth {
    /// `None`: no token needed (every request is the default tenant).
    tokens: Option<Arc<Vec<Token>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tokens {
            None => f.write_str("Auth(open)"),
            Some(t) => write!(f, "Auth({} token(s), hidden)", t.len()),
        }
    }
}

/// The shortest token taken: a short one can be guessed.
const MIN_TOKEN: usize = 16;

impl Auth {
    /// No token needed.
    pub fn open() -> Auth {
        Auth { tokens: None }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// One token, for the default tenant.
    pub fn token(token: &str) -> Result<Auth, AuthError> {
        check_token(token).map_err(AuthError::Token)?;
        Ok(Auth {
            tokens: Some(Arc::new(vec![(
                Tenant(Arc::from(DEFAULT_TENANT)),
                token.as_bytes().to_vec(),
            )])),
        })
    }

    /// A file of `tenant token` lines (`#` comments and blank lines skipped).
    pub fn tokens_file(path: &Path) -> Result<Auth, AuthError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: label.clone(),
            source,
        })?;
        let mut tokens: Vec<Token> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_error = |reason: String| AuthError::Line {
                path: label.clone(),
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(tenant), Some(token), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(line_error("expected `tenant token`".into()));
            };
            if !tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(line_error(format!(
                    "tenant {tenant:?}: letters, digits, '-', '_' and '.' only"
                )));
            }
            check_token(token).map_err(line_error)?;
            if tokens.iter().any(|(_, t)| t == token.as_bytes()) {
                return Err(line_error(
                    "this token is given to another tenant too".into(),
                ));
            }
            tokens.push((Tenant(Arc::from(tenant)), token.as_bytes().to_vec()));
        }
        if tokens.is_empty() {
            return Err(AuthError::Token(format!("{label} holds no tokens")));
        }
        Ok(Auth {
            tokens: Some(Arc::new(tokens)),
        })
    }

    /// The tenant whose token this is, comparing in constant time against every token
    /// (a match does not end the search early).
    pub fn tenant_of(&self, presented: Option<&[u8]>) -> Option<Tenant> {
        let Some(tokens) = &self.tokens else {
            return Some(Tenant(Arc::from(DEFAULT_TENANT)));
        };
        let presented = presented?;
        let mut found = None;
        for (tenant, token) in tokens.iter() {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN {
        return Err(format!(
            "a token must be at least {MIN_TOKEN} characters (this one has {})",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// Middleware: answers 401 to a request without a known token, else tags it with its
/// tenant.
pub async fn require_token(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| {
            // The scheme's name is case-insensitive (RFC 7235).
            let v = v.as_bytes();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        })
        .map(<[u8]>::trim_ascii);
    match auth.tenant_of(presented) {
        Some(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_tenant_and_nothing_else_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# tenants\nalpha tok-alpha-0123456789abc\n\nbeta  tok-beta-0123456789abcd\n",
        )
        .unwrap();
        let auth = Auth::tokens_file(&path).unwrap();
        let tenant = |t: &str| auth.tenant_of(Some(t.as_bytes())).map(|t| t.0.to_string());
        assert_eq!(tenant("tok-alpha-0123456789abc").as_deref(), Some("alpha"));
        assert_eq!(tenant("tok-beta-0123456789abcd").as_deref(), Some("beta"));
        assert_eq!(tenant("tok-alpha-0123456789ab"), None);
        assert_eq!(tenant(""), None);
        assert_eq!(auth.tenant_of(None), None);
        assert!(!format!("{auth:?}").contains("tok-"));
        assert!(Auth::open().tenant_of(None).is_some());
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        for (text, says) in [
            ("alpha\n", ":1: expected"),
            (
                "a tok-aaaaaaaaaaaaaaaa\nb short\n",
                ":2: a token must be at least",
            ),
            ("a/b tok-aaaaaaaaaaaaaaaa\n", ":1: tenant"),
            (
                "a tok-aaaaaaaaaaaaaaaa\nb tok-aaaaaaaaaaaaaaaa\n",
                ":2: this token",
            ),
            ("# nothing\n", "holds no tokens"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Auth::tokens_file(&path).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
