//! How many attempts may be on the wire at once, adapted to the provider when its
//! limits are unknown (SPEC §5: "with no limit known, concurrency adapts").
//!
//! AIMD, as TCP does it: every `limit` successes add one slot (additive increase,
//! about one per round trip); a 429 or a timeout halves the limit (multiplicative
//! decrease), at most once per cool-down so that one burst of 429s from requests that
//! were all in flight together counts as one signal. `--concurrency` is the ceiling.
//! Slots are semaphore permits: growing adds permits, shrinking retires permits as
//! attempts hand them back, so no attempt in flight is ever cut off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// After a decrease, further overload signals are ignored this long: they are echoes
/// of the same overload from attempts already in flight.
const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to retire as they come back, after a decrease.
    to_retire: usize,
    successes: usize,
    last_decrease: Option<Instant>,
}

/// The wire gate.
#[derive(Debug)]
pub struct Concurrency {
    semaphore: Arc<Semaphore>,
    /// When set, requests that are not urgent wait here in line, one at a time on the
    /// semaphore, so an urgent one (a client waiting) is at most one behind.
    in_line: Option<tokio::sync::Mutex<()>>,
    ceiling: usize,
    adaptive: bool,
    state: Arc<Mutex<State>>,
}

/// One attempt's slot on the wire. Dropping it gives it back — or retires it, when the
/// limit shrank meanwhile — so an attempt cut short by a halt or an abort leaks none.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    state: Arc<Mutex<State>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.to_retire > 0
            && let Some(permit) = self.permit.take()
        {
            state.to_retire -= 1;
            permit.forget();
        }
    }
}

impl Concurrency {
    /// `ceiling` slots; they adapt only when `adaptive`.
    pub fn new(ceiling: usize, adaptive: bool) -> Concurrency {
        let ceiling = ceiling.max(1);
        Concurrency {
            semaphore: Arc::new(Semaphore::new(ceiling)),
            in_line: None,
            ceiling,
            adaptive,
            state: Arc::new(Mutex::new(State {
                limit: ceiling,
                to_retire: 0,
                successes: 0,
                last_decrease: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.state().limit
    }

    /// Urgent requests (`acquire(true)`) go ahead of the others for slots. The others
    /// then pay a hand-off each, so an engine without urgent requests leaves it off.
    pub fn with_urgent_first(mut self) -> Concurrency {
        self.in_line = Some(tokio::sync::Mutex::new(()));
        self
    }

    /// Waits for a slot. `None` only if the gate was closed.
    pub async fn acquire(&self, urgent: bool) -> Option<Slot> {
        let _turn = match (&self.in_line, urgent) {
            (Some(line), false) => Some(line.lock().await),
            _ => None,
        };
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        Some(Slot {
            permit: Some(permit),
            state: self.state.clone(),
        })
    }

    /// An attempt succeeded. Returns the new limit if it grew.
    pub fn on_success(&self) -> Option<usize> {
        if !self.adaptive {
            return None;
        }
        let mut state = self.state();
        if state.limit >= self.ceiling {
            return None;
        }
        state.successes += 1;
        if state.successes < state.limit {
            return None;
        }
        state.successes = 0;
        state.limit += 1;
        if state.to_retire > 0 {
            // A slot due to be retired is simply kept.
            state.to_retire -= 1;
        } else {
            self.semaphore.add_permits(1);
        }
        Some(state.limit)
    }

    /// The provider pushed back (429, timeout). Returns the new limit if it shrank.
    pub fn on_overload(&self, now: Instant) -> Option<usize> {
        if !self.adaptive {
            return None;
        }
        let mut state = self.state();
        if state
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_COOLDOWN)
            || state.limit == 1
        {
            return None;
        }
        let new = (state.limit / 2).max(1);
        let shed = state.limit - new;
        // Free permits can be retired at once; the rest as attempts hand them back.
        let taken = self.semaphore.forget_permits(shed);
        state.to_retire += shed - taken;
        state.limit = new;
        state.successes = 0;
        state.last_decrease = Some(now);
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn halves_on_overload_once_per_cooldown_and_grows_back() {
        let c = Concurrency::new(8, true);
        let now = Instant::now();
        assert_eq!(c.on_overload(now), Some(4));
        assert_eq!(
            c.on_overload(now + Duration::from_millis(10)),
            None,
            "an echo of the same overload"
        );
        assert_eq!(c.on_overload(now + DECREASE_COOLDOWN), Some(2));
        assert_eq!(
            c.semaphore.available_permits(),
            2,
            "free permits were retired at once"
        );
        // Two successes at limit 2 add one slot.
        assert_eq!(c.on_success(), None);
        assert_eq!(c.on_success(), Some(3));
        assert_eq!(c.semaphore.available_permits(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_request_waits_behind_one_other_at_most() {
        let c = Arc::new(Concurrency::new(1, false).with_urgent_first());
        let held = c.acquire(false).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, urgent) in [("a", false), ("b", false), ("c", false), ("urgent", true)] {
            let (c, order) = (c.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = c.acquire(urgent).await.unwrap();
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a", "urgent", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_in_flight_are_retired_as_they_come_back() {
        let c = Concurrency::new(4, true);
        let slots: Vec<Slot> = futures_util::future::join_all((0..4).map(|_| c.acquire(false)))
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(c.on_overload(Instant::now()), Some(2));
        drop(slots);
        assert_eq!(c.semaphore.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_when_not_adaptive_and_never_above_the_ceiling() {
        let c = Concurrency::new(3, false);
        assert_eq!(c.on_overload(Instant::now()), None);
        let c = Concurrency::new(3, true);
        for _ in 0..10 {
            assert_eq!(c.on_success(), None);
        }
        assert_eq!(c.limit(), 3);
    }
}
