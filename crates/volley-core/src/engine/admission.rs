//! Which source's request enters the engine next (SPEC §13).
//!
//! The engine admits a bounded number of requests at once (in flight, waiting for a
//! key, or sleeping in backoff). When that bound is reached, sources queue for the
//! next free place and are served by two rules:
//!
//! - **Equal priority, equal share.** Among waiting sources of one priority, the one
//!   served longest ago goes next, so a 100-line batch beside a 100,000-line one gets
//!   every other admission instead of waiting for the big one to drain.
//! - **Higher priority first, never alone.** A source of higher priority (the proxy, a
//!   client waiting on the line) is served before lower ones, except that after
//!   [`LOWER_EVERY`]` - 1` admissions in a row to the top while a lower source waited,
//!   the next goes to the lower ones: they keep at least a tenth of admissions.
//!
//! A place is an [`Admit`] value: dropping it hands the place to the next waiter, and a
//! waiter that gives up (its submit was cancelled) passes a place it was just handed on,
//! so no path leaks one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::engine::handoff::{Held, lock, wait};

/// One admission in this many goes to lower-priority sources while they wait.
pub const LOWER_EVERY: u32 = 10;

/// Serves the top priority first while lower ones keep one turn in [`LOWER_EVERY`].
/// Shared by the admission gate and the [`crate::engine::turnstile`], so a source of
/// high priority cannot starve the others at either.
#[derive(Debug, Default)]
pub(crate) struct Precedence {
    /// Turns in a row to the top priority while a lower one waited.
    top_streak: u32,
}

impl Precedence {
    /// Whether this turn goes to the lower priorities, given whether any waits.
    pub fn lower_turn(&mut self, lower_waits: bool) -> bool {
        if !lower_waits {
            self.top_streak = 0;
            false
        } else if self.top_streak + 1 >= LOWER_EVERY {
            self.top_streak = 0;
            true
        } else {
            self.top_streak += 1;
            false
        }
    }
}

#[derive(Debug)]
struct Queue {
    priority: u8,
    /// The grant number of this source's last admission: the smallest goes next.
    last_served: u64,
    waiters: VecDeque<oneshot::Sender<()>>,
}

/// The gate's places and queues, behind its lock.
#[derive(Debug)]
pub struct State {
    free: usize,
    /// Admissions granted so far (the clock of `last_served`).
    granted: u64,
    precedence: Precedence,
    queues: HashMap<u64, Queue>,
}

impl State {
    /// The source whose waiter is served next, if any waits.
    fn pick(&mut self) -> Option<u64> {
        // Waiters whose submit was dropped (a client gone) neither wait nor count.
        for queue in self.queues.values_mut() {
            queue.waiters.retain(|tx| !tx.is_closed());
        }
        let waiting = || self.queues.iter().filter(|(_, q)| !q.waiters.is_empty());
        let top = waiting().map(|(_, q)| q.priority).max()?;
        let lower_waits = waiting().any(|(_, q)| q.priority < top);
        let lower_turn = self.precedence.lower_turn(lower_waits);
        let id = waiting()
            .filter(|(_, q)| {
                if lower_turn {
                    q.priority < top
                } else {
                    q.priority == top
                }
            })
            .min_by_key(|(id, q)| (q.last_served, **id))
            .map(|(id, _)| *id)?;
        Some(id)
    }

    /// Hands a free place to the next waiter still waiting; true if one took it.
    fn hand_on(&mut self) -> bool {
        while let Some(id) = self.pick() {
            self.granted += 1;
            let granted = self.granted;
            let Some(queue) = self.queues.get_mut(&id) else {
                return false;
            };
            queue.last_served = granted;
            if let Some(tx) = queue.waiters.pop_front()
                && tx.send(()).is_ok()
            {
                return true;
            }
            // That waiter gave up: try the next.
        }
        false
    }
}

/// The admission gate shared by every source of an engine.
#[derive(Debug, Clone)]
pub struct Admission {
    state: Arc<Mutex<State>>,
}

/// A place in the engine, held for a request's whole life; handed on when dropped.
pub type Admit = Held<State>;

fn release(state: &Mutex<State>) {
    let mut state = lock(state);
    if !state.hand_on() {
        state.free += 1;
    }
}

impl Admission {
    /// A gate of `places` requests at once (at least one).
    pub fn new(places: usize) -> Admission {
        Admission {
            state: Arc::new(Mutex::new(State {
                free: places.max(1),
                granted: 0,
                precedence: Precedence::default(),
                queues: HashMap::new(),
            })),
        }
    }

    /// Waits for a place for a request of `source`.
    pub async fn enter(&self, source: u64, priority: u8) -> Admit {
        let rx = {
            let mut state = lock(&self.state);
            let nobody_waits = state
                .queues
                .values()
                .all(|q| q.waiters.iter().all(|tx| tx.is_closed()));
            if state.free > 0 && nobody_waits {
                state.free -= 1;
                state.granted += 1;
                let granted = state.granted;
                if let Some(q) = state.queues.get_mut(&source) {
                    q.last_served = granted;
                }
                return Held::new(&self.state, release);
            }
            let (tx, rx) = oneshot::channel();
            state
                .queues
                .entry(source)
                .or_insert_with(|| Queue {
                    priority,
                    last_served: 0,
                    waiters: VecDeque::new(),
                })
                .waiters
                .push_back(tx);
            rx
        };
        wait(rx, &self.state, release).await
    }

    /// Forgets a source that will submit no more: its turn history goes with it (any
    /// waiter left behind is one whose submit was dropped).
    pub fn forget(&self, source: u64) {
        lock(&self.state).queues.remove(&source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Queues `n` waiters for each `(source, priority)` behind a full gate of one
    /// place, then releases the place and returns the order sources were served in.
    async fn order(sources: &[(u64, u8, usize)]) -> Vec<u64> {
        let gate = Admission::new(1);
        let held = gate.enter(0, 0).await;
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(source, priority, n) in sources {
            for _ in 0..n {
                let (gate, served) = (gate.clone(), served.clone());
                tasks.push(tokio::spawn(async move {
                    let _place = gate.enter(source, priority).await;
                    served.lock().unwrap().push(source);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }));
                tokio::time::sleep(Duration::from_micros(10)).await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(served).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sources_of_one_priority_take_turns() {
        let served = order(&[(1, 0, 6), (2, 0, 3)]).await;
        assert_eq!(served, [1, 2, 1, 2, 1, 2, 1, 1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_priority_goes_first_but_lower_ones_keep_a_tenth() {
        let served = order(&[(1, 0, 5), (2, 5, 30)]).await;
        // Nine to the top, then one to the lower source, while both wait.
        let first_low = served.iter().position(|s| *s == 1).unwrap();
        assert_eq!(first_low, 9, "{served:?}");
        let lows: Vec<usize> = served
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == 1)
            .map(|(i, _)| i)
            .collect();
        // Every tenth while both wait; the rest once the top source has none waiting.
        assert_eq!(lows, [9, 19, 29, 33, 34], "{served:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_passes_its_place_on() {
        let gate = Admission::new(1);
        let held = gate.enter(1, 0).await;
        let quitter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _place = gate.enter(2, 0).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
        };
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _place = gate.enter(3, 0).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        quitter.abort();
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the place reached the next waiter")
            .unwrap();
        let _again = tokio::time::timeout(Duration::from_secs(1), gate.enter(1, 0))
            .await
            .expect("and it is free again");
    }
}
