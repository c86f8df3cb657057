//! `--max-cost`: a spending cap (SPEC §2, §4).
//!
//! The run stops admitting requests, and requests stop starting new attempts, once the
//! cost recorded so far plus a conservative estimate for the attempts in flight (the
//! dearest attempt seen so far, times the attempts in flight) reaches the cap. So the
//! overshoot is bounded by what is in flight when the cap is reached. Only known costs
//! count: an attempt whose cost is unknown (no `usage.cost`, no price) is reported once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Spent {
    total: f64,
    dearest_attempt: f64,
}

/// The cap and what has been spent against it.
#[derive(Debug)]
pub struct CostBudget {
    cap: Option<f64>,
    spent: Mutex<Spent>,
    in_flight: AtomicU64,
    unknown_reported: AtomicBool,
}

impl CostBudget {
    pub fn new(cap: Option<f64>) -> CostBudget {
        CostBudget {
            cap,
            spent: Mutex::new(Spent::default()),
            in_flight: AtomicU64::new(0),
            unknown_reported: AtomicBool::new(false),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An attempt goes on the wire.
    pub fn attempt_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt came back costing `cost` (`None`: no usage, or unknown cost).
    pub fn attempt_finished(&self, cost: Option<f64>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(cost) = cost {
            let mut spent = self.spent();
            spent.total += cost;
            spent.dearest_attempt = spent.dearest_attempt.max(cost);
        }
    }

    /// True the first time an attempt's cost is unknown while a cap is set.
    pub fn report_unknown(&self) -> bool {
        self.cap.is_some() && !self.unknown_reported.swap(true, Ordering::Relaxed)
    }

    /// Why no further attempt may start, once the cap is (about to be) reached.
    pub fn exhausted(&self) -> Option<String> {
        let cap = self.cap?;
        let spent = self.spent();
        let in_flight = self.in_flight.load(Ordering::Relaxed) as f64;
        let committed = spent.total + spent.dearest_attempt * in_flight;
        (committed >= cap).then(|| {
            format!(
                "cost cap reached: ${:.4} spent, ${:.4} more may be in flight, --max-cost ${cap:.4}",
                spent.total,
                spent.dearest_attempt * in_flight
            )
        })
    }

    /// Cost recorded so far.
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
        b.attempt_started();
        b.attempt_started();
        b.attempt_finished(Some(0.3));
        assert!(
            b.exhausted().is_none(),
            "0.3 spent + 1 × 0.3 in flight < 1.0"
        );
        b.attempt_started();
        assert!(
            b.exhausted().is_none(),
            "0.3 spent + 2 × 0.3 in flight < 1.0"
        );
        b.attempt_started();
        let why = b.exhausted().expect("0.3 spent + 3 × 0.3 in flight ≥ 1.0");
        assert!(why.contains("cost cap reached"), "{why}");
        assert!((b.total() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn no_cap_never_stops_and_unknown_is_reported_once() {
        let b = CostBudget::new(None);
        b.attempt_started();
        b.attempt_finished(Some(1e9));
        assert!(b.exhausted().is_none());
        assert!(!b.report_unknown());
        let b = CostBudget::new(Some(1.0));
        assert!(b.report_unknown());
        assert!(!b.report_unknown());
    }
}
