//! Talking to an OpenAI-compatible provider: where it is and how it limits
//! ([`upstream`]), sending ([`transport`]), judging its
//! replies ([`classify`], [`validate`]), counting tokens before sending ([`tokens`]),
//! and OpenRouter's own endpoints ([`openrouter`]).

pub mod classify;
pub mod openrouter;
pub mod tokens;
pub mod transport;
pub mod upstream;
pub mod validate;
