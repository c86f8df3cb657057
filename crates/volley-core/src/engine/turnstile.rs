//! Who books a key next: requests already in the engine go before requests not yet
//! sent (SPEC §5, "retries first").
//!
//! One request at a time holds the turn: it takes a wire slot, books a key and waits
//! until its booked instant, then hands the turn on. Waiting requests are served
//! retries first, then fresh ones by priority, the sources of one priority in rotation
//! (each source's own in arrival order). The rotation is what makes a limited lane's
//! rate shared fairly: the admission gate shares places in the engine, but the
//! requests holding those places may queue here for many seconds, and a queue in
//! arrival order would hand the lane to whichever source grabbed the places first.
//! A retry therefore waits for at most the one
//! booking ahead of it — not behind every fresh request queued for the key — so its
//! spacing is its backoff, and tail latency stays short. Only the turn's holder books
//! ahead of time, so no booking is ever made far in the future.
//!
//! The turn is a value: dropping it (or a cancelled wait for it) hands it on, so a
//! halt or an aborted task cannot leave the turnstile locked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::engine::admission::Precedence;
use crate::engine::handoff::{Held, lock, wait};

/// Where a request waits for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A request already admitted: a retry, or one moved off a retired key.
    Admitted,
    /// A request not yet sent, of `source`, with its source's priority: higher goes
    /// first, lower ones keep a tenth of the turns ([`Precedence`]); sources of one
    /// priority take turns.
    Fresh { level: u8, source: u64 },
}

/// The fresh waiters of one priority, by source, served in rotation: the source at the
/// front gives one waiter and goes to the back if it has more. A source with none
/// waiting leaves the ring and rejoins at the back, so no history is kept of sources
/// that are gone.
#[derive(Debug, Default)]
struct Ring {
    /// Never holds a source with an empty queue.
    sources: VecDeque<(u64, VecDeque<oneshot::Sender<()>>)>,
}

impl Ring {
    fn push(&mut self, source: u64, tx: oneshot::Sender<()>) {
        match self.sources.iter_mut().find(|(id, _)| *id == source) {
            Some((_, queue)) => queue.push_back(tx),
            None => self.sources.push_back((source, VecDeque::from([tx]))),
        }
    }

    fn pop(&mut self) -> Option<oneshot::Sender<()>> {
        let (source, mut queue) = self.sources.pop_front()?;
        let tx = queue.pop_front();
        if !queue.is_empty() {
            self.sources.push_back((source, queue));
        }
        tx
    }

    fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// The turnstile's queues, behind its lock.
#[derive(Debug, Default)]
pub struct State {
    held: bool,
    admitted: VecDeque<oneshot::Sender<()>>,
    /// Fresh requests by their source's priority.
    fresh: BTreeMap<u8, Ring>,
    precedence: Precedence,
    /// The lower level served last, for the rotation among lower levels.
    last_lower: Option<u8>,
}

impl State {
    /// The next fresh waiter: the top priority's, or, when it is their turn, a lower
    /// level's, the lower levels taking those turns in rotation.
    fn next_fresh(&mut self) -> Option<oneshot::Sender<()>> {
        self.fresh.retain(|_, q| !q.is_empty());
        let top = *self.fresh.keys().next_back()?;
        let level = if self.precedence.lower_turn(self.fresh.len() > 1) {
            let below = |limit: u8| self.fresh.range(..limit).next_back().map(|(l, _)| *l);
            let level = self
                .last_lower
                .and_then(below)
                .or_else(|| below(top))
                .unwrap_or(top);
            self.last_lower = Some(level);
            level
        } else {
            top
        };
        self.fresh.get_mut(&level)?.pop()
    }
}

/// The queue for the turn.
#[derive(Debug, Default)]
pub struct Turnstile {
    state: Arc<Mutex<State>>,
}

/// The turn: held by one request at a time; handed on when dropped.
pub type Turn = Held<State>;

/// Gives the turn to the next waiter still waiting, or frees it.
fn hand_on(state: &Mutex<State>) {
    let mut state = lock(state);
    loop {
        let next = state.admitted.pop_front().or_else(|| state.next_fresh());
        match next {
            // A waiter that gave up has dropped its receiver: try the next one.
            Some(tx) => {
                if tx.send(()).is_ok() {
                    return;
                }
            }
            None => {
                state.held = false;
                return;
            }
        }
    }
}

impl Turnstile {
    pub fn new() -> Turnstile {
        Turnstile::default()
    }

    /// Waits for the turn.
    pub async fn enter(&self, priority: Priority) -> Turn {
        let rx = {
            let mut state = lock(&self.state);
            if !state.held {
                state.held = true;
                return Held::new(&self.state, hand_on);
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Admitted => state.admitted.push_back(tx),
                Priority::Fresh { level, source } => {
                    state.fresh.entry(level).or_default().push(source, tx)
                }
            }
            rx
        };
        wait(rx, &self.state, hand_on).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A fresh request of source 0.
    fn fresh(level: u8) -> Priority {
        Priority::Fresh { level, source: 0 }
    }

    #[tokio::test(start_paused = true)]
    async fn admitted_requests_go_first_then_arrival_order() {
        let gate = Arc::new(Turnstile::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter(fresh(0)).await;
        let mut tasks = Vec::new();
        for (name, priority) in [
            ("fresh-1", fresh(0)),
            ("fresh-2", fresh(0)),
            ("retry-1", Priority::Admitted),
            ("fresh-3", fresh(0)),
            ("retry-2", Priority::Admitted),
        ] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = gate.enter(priority).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["retry-1", "retry-2", "fresh-1", "fresh-2", "fresh-3"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sources_of_one_priority_take_turns_whoever_queued_first() {
        let gate = Arc::new(Turnstile::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter(fresh(0)).await;
        let mut tasks = Vec::new();
        // Source 1 queues six before source 2 queues any: a queue in arrival order
        // would serve all six first.
        for source in [1u64, 1, 1, 1, 1, 1, 2, 2, 2] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = gate.enter(Priority::Fresh { level: 0, source }).await;
                order.lock().unwrap().push(source);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [1, 2, 1, 2, 1, 2, 1, 1, 1]);
    }

    /// Fresh requests of these levels queue, in this order, behind a held turn; returns
    /// the levels in the order they were served once it is handed on.
    async fn served(levels: impl Iterator<Item = u8>) -> Vec<u8> {
        let gate = Arc::new(Turnstile::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter(fresh(0)).await;
        let mut tasks = Vec::new();
        for level in levels {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = gate
                    .enter(Priority::Fresh {
                        level,
                        source: u64::from(level),
                    })
                    .await;
                order.lock().unwrap().push(level);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    /// (position, level) of every turn served below `top`.
    fn below(order: &[u8], top: u8) -> Vec<(usize, u8)> {
        (0..order.len())
            .filter(|&i| order[i] < top)
            .map(|i| (i, order[i]))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_priority_goes_first_but_lower_ones_keep_a_tenth() {
        let order = served(std::iter::repeat_n(0u8, 3).chain(std::iter::repeat_n(10u8, 20))).await;
        // Nine to the top, then one below, while both wait; the rest once it has none.
        assert_eq!(below(&order, 10), [(9, 0), (19, 0), (22, 0)], "{order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn lower_levels_take_the_lower_turns_in_rotation() {
        let levels = std::iter::repeat_n(0u8, 2)
            .chain(std::iter::repeat_n(5u8, 2))
            .chain(std::iter::repeat_n(10u8, 40));
        let order = served(levels).await;
        // Every tenth turn goes below the top, to 5 and 0 in turn: neither starves.
        assert_eq!(
            below(&order, 10),
            [(9, 5), (19, 0), (29, 5), (39, 0)],
            "{order:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_does_not_keep_the_turn() {
        let gate = Arc::new(Turnstile::new());
        let held = gate.enter(fresh(0)).await;
        let quitter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _turn = gate.enter(fresh(0)).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
        };
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _turn = gate.enter(fresh(0)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The quitter is aborted while waiting (or just as the turn reaches it).
        quitter.abort();
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the turn reached the next waiter")
            .unwrap();
        let _again = tokio::time::timeout(Duration::from_secs(1), gate.enter(fresh(0)))
            .await
            .expect("and it is free again");
    }
}
