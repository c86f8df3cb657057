//! `--max-cost`: a spending cap (SPEC §2, §4).
//!
//! An attempt may start only while the cost recorded so far plus a conservative
//! estimate for the attempts already in flight (the dearest attempt seen so far, times
//! the attempts in flight) stays under the cap. Checking and starting are one step
//! under one lock, so two requests cannot both slip under the cap with the same
//! headroom: the overshoot is bounded by what is in flight when the cap is reached.
//! Only known costs count: an attempt whose cost is unknown (no `usage.cost`, no
//! price) is reported once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Spent {
    /// Known cost of the attempts that came back.
    total: f64,
    /// The dearest single attempt so far: the estimate for each one in flight.
    dearest_attempt: f64,
    /// Attempts started and not yet back.
    in_flight: u64,
}

impl Spent {
    /// Spent plus the estimate for what is in flight.
    fn committed(&self) -> f64 {
        self.total + self.dearest_attempt * self.in_flight as f64
    }
}

/// The cap and what has been spent against it.
#[derive(Debug)]
pub struct CostBudget {
    /// What the user set the cap as, for the message when it is reached.
    name: &'static str,
    cap: Option<f64>,
    spent: Arc<Mutex<Spent>>,
    unknown_reported: AtomicBool,
}

/// An attempt counted as in flight against the cap. [`CostReservation::finish`] records
/// what it cost; dropped unfinished (a halt, an abort), it simply stops counting as in
/// flight, so no path leaks a reservation and blocks the cap.
#[derive(Debug)]
#[must_use]
pub struct CostReservation {
    /// `None` without a cap (nothing is counted) or once finished.
    spent: Option<Arc<Mutex<Spent>>>,
}

impl CostReservation {
    /// The attempt came back costing `cost` (`None`: no usage, or unknown cost).
    pub fn finish(mut self, cost: Option<f64>) {
        if let Some(spent) = self.spent.take() {
            let mut spent = spent.lock().unwrap_or_else(|p| p.into_inner());
            spent.in_flight = spent.in_flight.saturating_sub(1);
            // Only a real cost counts: a hostile negative one must not buy headroom.
            if let Some(cost) = cost.filter(|c| c.is_finite() && *c >= 0.0) {
                spent.total += cost;
                spent.dearest_attempt = spent.dearest_attempt.max(cost);
            }
        }
    }
}

impl Drop for CostReservation {
    fn drop(&mut self) {
        if let Some(spent) = self.spent.take() {
            let mut spent = spent.lock().unwrap_or_else(|p| p.into_inner());
            spent.in_flight = spent.in_flight.saturating_sub(1);
        }
    }
}

impl CostBudget {
    pub fn new(cap: Option<f64>) -> CostBudget {
        CostBudget::named(cap, "--max-cost")
    }

    /// A cap the user set as `name` (a flag, a batch's metadata key): the message of a
    /// reached cap names it, so the user knows what to raise.
    pub fn named(cap: Option<f64>, name: &'static str) -> CostBudget {
        CostBudget {
            name,
            cap,
            spent: Arc::new(Mutex::new(Spent::default())),
            unknown_reported: AtomicBool::new(false),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attempt unless the cap is reached; `Err` says why it may not start.
    pub fn start_attempt(&self) -> Result<CostReservation, String> {
        // Without a cap nothing is counted: no lock on the way to the wire.
        if self.cap.is_none() {
            return Ok(CostReservation { spent: None });
        }
        let mut spent = self.spent();
        if let Some(why) = self.over_cap(&spent) {
            return Err(why);
        }
        spent.in_flight += 1;
        Ok(CostReservation {
            spent: Some(self.spent.clone()),
        })
    }

    /// True the first time an attempt's cost is unknown while a cap is set.
    pub fn report_unknown(&self) -> bool {
        self.cap.is_some() && !self.unknown_reported.swap(true, Ordering::Relaxed)
    }

    /// Why no further attempt may start, once the cap is (about to be) reached.
    pub fn exhausted(&self) -> Option<String> {
        self.cap?;
        self.over_cap(&self.spent())
    }

    fn over_cap(&self, spent: &Spent) -> Option<String> {
        let cap = self.cap?;
        (spent.committed() >= cap).then(|| {
            format!(
                "cost cap reached: ${:.4} spent, ${:.4} more may be in flight, {} ${cap:.4}",
                spent.total,
                spent.committed() - spent.total,
                self.name
            )
        })
    }

    /// Cost recorded so far (counted only under a cap).
    pub fn total(&self) -> f64 {
        self.spent().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_what_is_in_flight() {
        let b = CostBudget::new(Some(1.0));
        assert!(b.exhausted().is_none());
        let first = b.start_attempt().unwrap();
        let second = b.start_attempt().unwrap();
        first.finish(Some(0.3));
        assert!(
            b.exhausted().is_none(),
            "0.3 spent + 1 × 0.3 in flight < 1.0"
        );
        let third = b
            .start_attempt()
            .expect("0.3 spent + 1 × 0.3 in flight < 1.0");
        let fourth = b
            .start_attempt()
            .expect("0.3 spent + 2 × 0.3 in flight < 1.0");
        let why = b
            .start_attempt()
            .expect_err("0.3 spent + 3 × 0.3 in flight ≥ 1.0");
        assert!(why.contains("cost cap reached"), "{why}");
        assert_eq!(b.exhausted(), Some(why));
        assert!((b.total() - 0.3).abs() < 1e-12);
        // What was in flight comes back cheaper than feared: room again.
        for r in [second, third, fourth] {
            r.finish(Some(0.01));
        }
        assert!(b.start_attempt().is_ok(), "0.33 spent, 0 in flight");
        // A reservation dropped unfinished (an aborted attempt) stops counting.
        let leaked = b.start_attempt().unwrap();
        let before = b.spent().in_flight;
        drop(leaked);
        assert_eq!(b.spent().in_flight, before - 1);
    }

    #[test]
    fn racing_starts_never_share_the_last_headroom() {
        // 0.5 spent, the dearest attempt 0.5, cap 0.9: one more attempt may start
        // (0.5 + 0 in flight < 0.9), a second may not (0.5 + 1 × 0.5 ≥ 0.9). Sixteen
        // threads race for that one start: only one may win.
        let b = std::sync::Arc::new(CostBudget::new(Some(0.9)));
        b.start_attempt().unwrap().finish(Some(0.5));
        let wins: Vec<CostReservation> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let b = b.clone();
                    // A winner's reservation is held until every thread is done.
                    s.spawn(move || b.start_attempt().ok())
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(wins.len(), 1);
    }

    #[test]
    fn no_cap_never_stops_and_unknown_is_reported_once() {
        let b = CostBudget::new(None);
        b.start_attempt().unwrap().finish(Some(1e9));
        assert!(b.exhausted().is_none());
        assert!(b.start_attempt().is_ok());
        assert!(!b.report_unknown());
        let b = CostBudget::new(Some(1.0));
        assert!(b.report_unknown());
        assert!(!b.report_unknown());
    }
}
