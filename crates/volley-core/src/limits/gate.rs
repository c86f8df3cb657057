//! The rate gate: what a lane asks before each attempt and tells after it (SPEC §5).
//!
//! One trait, so the in-process gate ([`crate::limits::local::LocalGate`]) and a later
//! Redis gate shared by several machines are interchangeable. The shape is the one a
//! Redis script can implement:
//!
//! - [`RateGate::reserve`] is the one step that must be atomic and awaited: it takes
//!   one request and its tokens together, at the earliest moment both limits allow, and
//!   answers with a *duration* to wait (a shared gate runs on the server's clock, not
//!   this process's instants).
//! - Everything after it — [`RateGate::sent`], [`RateGate::release`],
//!   [`RateGate::settle`], [`RateGate::pause`] — corrects what was reserved and never
//!   blocks: a shared gate may send it on in the background. `release` runs from a
//!   `Drop`, so it cannot wait.
//! - [`RateGate::wait`] is a cheap estimate to choose between lanes; only `reserve`
//!   decides.
//!
//! `now` is the caller's clock reading: the local gate computes with it (so tests can
//! drive time), a shared gate ignores it and asks its server.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::limits::headers::Observation;

/// A reservation's record, kept by the lane's [`crate::limits::lanes::Booking`] guard
/// and handed back to the gate that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// How long from the reservation until it may be sent.
    pub wait: Duration,
    /// Tokens reserved: the estimate, capped at what the token limit can ever hold.
    pub tokens: u64,
    /// Reserved before the gate metered tokens: its token figure is unknown.
    pub blind: bool,
    /// Where the reservation is in its life (the gate's own bookkeeping).
    pub stage: Stage,
}

impl Grant {
    /// What a refusal of this attempt tells its gate (see [`RateGate::pause`]).
    pub fn refusal(&self) -> Refused {
        match self.stage {
            Stage::Sent { seq, probing, .. } => Refused { seq, probing },
            _ => Refused::default(),
        }
    }
}

/// Where a reservation is in its life; decides what giving it back means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reserved, not sent: given back whole.
    Reserved,
    /// On the wire as the gate's `seq`-th attempt: the provider may count it, so giving
    /// it back keeps the request and its token estimate. `older` is what was on the
    /// wire, sent shortly before it, when it was sent; `probing` whether the provider's
    /// last word was "nothing remains" (requests, tokens).
    Sent {
        seq: u64,
        sent_at: Instant,
        older: OnWire,
        probing: (bool, bool),
    },
    /// Answered and settled: nothing left to give back.
    Settled,
}

/// What a set of attempts on the wire amounts to: how many, their booked tokens, and
/// how many were booked before tokens were metered (their tokens unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnWire {
    pub count: u64,
    pub tokens: u64,
    pub blind: u64,
}

/// The attempt a 429 refused: its send order, and whether it was sent when the
/// provider had said nothing remains (requests, tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    pub seq: u64,
    pub probing: (bool, bool),
}

/// What a response taught a gate about its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Learned {
    /// The per-minute limits now in force, when one of them changed.
    pub changed: Option<(Option<u64>, Option<u64>)>,
    /// The provider said nothing is left until this long from now.
    pub exhausted_for: Option<Duration>,
    /// Whether an announced limit paces what is left (then `exhausted_for` needs no
    /// pause unless it outlasts `--max-wait`, which means the quota is spent).
    pub paced: bool,
}

/// The per-minute limits a gate has in force (`None`: none known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
}

/// Limits for one lane: requests and tokens per minute, reserved together.
pub trait RateGate: Send + Sync + std::fmt::Debug {
    /// The limits in force now.
    fn limits(&self) -> Limits;

    /// How long a request of `tokens` would wait if reserved now: an estimate to choose
    /// between lanes, reserving nothing.
    fn wait(&self, tokens: u64, now: Instant) -> Duration;

    /// Reserves one request and `tokens` tokens at the earliest moment both limits and
    /// any pause allow, in one atomic step.
    fn reserve(&self, tokens: u64, blind: bool, now: Instant) -> BoxFuture<'_, Grant>;

    /// The reserved attempt goes on the wire now: from here on the provider may count it.
    fn sent(&self, grant: &mut Grant, now: Instant);

    /// Gives back a reservation that gets no reply: whole if it was never sent; a sent
    /// one keeps its request and token estimate in the window.
    fn release(&self, grant: &Grant);

    /// The provider answered: `billed` tokens (`None`: the reply carried no usage, so
    /// nothing was billed), and its headers said `seen`. Settles the reservation to what
    /// was billed and learns from what the provider announced, in one step.
    fn settle(
        &self,
        grant: &Grant,
        billed: Option<u64>,
        seen: &Observation,
        now: Instant,
    ) -> Learned;

    /// Nothing goes before `until` (a 429's Retry-After) for every user of the gate;
    /// `refused` is the attempt refused. True when this starts a new pause (so it is
    /// reported once, not once per request that ran into it).
    fn pause(&self, until: Instant, now: Instant, refused: Refused) -> bool;

    /// Whether the gate is paused past `now`.
    fn paused(&self, now: Instant) -> bool;

    /// What the provider last said remains of each limit, as it stands at `now` (what
    /// went out since taken off, what the window gave back added): for people watching
    /// (the dashboard), not for pacing. `None` where no reply announced a `remaining`.
    fn remaining(&self, _now: Instant) -> Limits {
        Limits::default()
    }
}
