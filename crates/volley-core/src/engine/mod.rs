//! The flow of one request: admitted, given its turn and a connection slot, attempted,
//! classified, retried or recorded ([`scheduler`]), under the retry policy ([`retry`]),
//! the wire's concurrency ([`concurrency`]) and the order in which requests book a key
//! ([`turnstile`]).

pub mod concurrency;
pub mod retry;
pub mod scheduler;
pub mod turnstile;
