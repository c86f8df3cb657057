//! Talking to an OpenAI-compatible provider: where it is and how it limits
//! ([`upstream`]), sending ([`transport`]), judging its
//! replies ([`classify`], [`validate`]), watching a streamed one ([`sse`]), counting
//! tokens before sending ([`tokens`]), which configured model goes where ([`routes`]),
//! and OpenRouter's own endpoints ([`openrouter`]).

pub mod classify;
pub mod openrouter;
pub mod routes;
pub mod sse;
pub mod tokens;
pub mod transport;
pub mod upstream;
pub mod validate;
