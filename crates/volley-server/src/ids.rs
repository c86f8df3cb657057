//! Object ids: random, opaque, and checked before they are used for anything.
//!
//! An id is a fixed prefix and 24 letters or digits. Anything else a client sends as an
//! id is not found, before any lookup: an id names a row of the store and, for files, a
//! file in the data directory, so `../` or a NUL in one must never reach a path.

use rand::Rng;

/// What an id is of; its prefix says so, as OpenAI's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Batch,
    /// One line of a batch's output.
    BatchRequest,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::File => "file-",
            Kind::Batch => "batch_",
            Kind::BatchRequest => "batch_req_",
        }
    }
}

/// Letters and digits after the prefix.
const RANDOM_CHARS: usize = 24;

/// A new id of `kind`: 24 random letters and digits, about 143 bits.
pub fn new(kind: Kind) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(kind.prefix().len() + RANDOM_CHARS);
    id.push_str(kind.prefix());
    for _ in 0..RANDOM_CHARS {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Whether `id` is one the gateway could have made for `kind`.
pub fn is_valid(kind: Kind, id: &str) -> bool {
    id.strip_prefix(kind.prefix()).is_some_and(|rest| {
        rest.len() == RANDOM_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_valid_and_nothing_else_is() {
        for kind in [Kind::File, Kind::Batch, Kind::BatchRequest] {
            let id = new(kind);
            assert!(is_valid(kind, &id), "{id}");
            assert_ne!(new(kind), id);
        }
        let file = new(Kind::File);
        assert!(!is_valid(Kind::Batch, &file));
        for bad in [
            "file-../../etc/passwd",
            "file-",
            "file-AAAAAAAAAAAAAAAAAAAAAAA/",
            "file-AAAAAAAAAAAAAAAAAAAAAAAAA",
            "file-AAAAAAAAAAAAAAAAAAAAAA.\u{0}",
            "../file-AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!is_valid(Kind::File, bad), "{bad:?}");
        }
    }
}
