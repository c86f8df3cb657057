//! The hand-off both of the engine's queues use — the admission gate and the turnstile:
//! a waiter gets what it waits for (a place, the turn) through a oneshot, and what it
//! holds is handed on when dropped. A waiter that gives up just as it is handed its
//! due (a cancelled submit, an aborted task) hands it on instead of losing it.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Locks a queue's state. The state is counters and queues; a panic while holding it
/// cannot leave it worse than stopping would, so a poisoned lock is used as is.
pub fn lock<S>(state: &Mutex<S>) -> MutexGuard<'_, S> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a waiter holds once served; `hand_on` gives it to the next waiter (or frees it)
/// when dropped.
pub struct Held<S> {
    state: Arc<Mutex<S>>,
    hand_on: fn(&Mutex<S>),
}

impl<S> std::fmt::Debug for Held<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

impl<S> Held<S> {
    pub fn new(state: &Arc<Mutex<S>>, hand_on: fn(&Mutex<S>)) -> Held<S> {
        Held {
            state: state.clone(),
            hand_on,
        }
    }
}

impl<S> Drop for Held<S> {
    fn drop(&mut self) {
        (self.hand_on)(&self.state);
    }
}

/// Waits on `rx` for a queue's hand-off; if dropped after it was handed over, hands it
/// on with `hand_on`.
pub async fn wait<S>(
    rx: oneshot::Receiver<()>,
    state: &Arc<Mutex<S>>,
    hand_on: fn(&Mutex<S>),
) -> Held<S> {
    struct Waiting<'a, S> {
        rx: Option<oneshot::Receiver<()>>,
        state: &'a Mutex<S>,
        hand_on: fn(&Mutex<S>),
    }
    impl<S> Drop for Waiting<'_, S> {
        fn drop(&mut self) {
            if let Some(mut rx) = self.rx.take() {
                rx.close();
                if rx.try_recv().is_ok() {
                    (self.hand_on)(self.state);
                }
            }
        }
    }
    let mut waiting = Waiting {
        rx: Some(rx),
        state,
        hand_on,
    };
    if let Some(rx) = waiting.rx.as_mut() {
        // A sender is dropped unsent only when its waiter is gone, so this is the
        // hand-off (an error could only mean the queue itself is gone).
        let _ = rx.await;
    }
    waiting.rx = None;
    Held::new(state, hand_on)
}
