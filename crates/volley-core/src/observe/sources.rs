//! Figures per source and in total (SPEC §13): one [`RunStats`] for everything the
//! engine did, and one for each source, so a gateway can show each batch apart and an
//! experiment each stage, from the same event stream.
//!
//! Events of the engine as a whole (a lane paused, a limit learned, a key retired)
//! count in the total only: they belong to no source.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::engine::SourceId;
use crate::observe::events::{Event, Observer};
use crate::observe::stats::{RunStats, Snapshot};

/// One source's figures, under its name.
#[derive(Debug)]
pub struct SourceStats {
    pub name: Arc<str>,
    pub stats: RunStats,
}

/// Stats of every source, and of all of them together.
#[derive(Debug, Default)]
pub struct StatsBySource {
    total: RunStats,
    sources: RwLock<HashMap<SourceId, Arc<SourceStats>>>,
}

impl StatsBySource {
    pub fn new() -> StatsBySource {
        StatsBySource::default()
    }

    /// Everything the engine did.
    pub fn total(&self) -> &RunStats {
        &self.total
    }

    /// One source's figures, once it has opened.
    pub fn source(&self, id: SourceId) -> Option<Arc<SourceStats>> {
        self.sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every source so far, in the order they opened, with a snapshot of each.
    pub fn snapshots(&self) -> Vec<(SourceId, Arc<str>, Snapshot)> {
        let sources = self.sources.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = sources
            .iter()
            .map(|(id, s)| (*id, s.name.clone(), s.stats.snapshot()))
            .collect();
        all.sort_by_key(|(id, ..)| *id);
        all
    }

    /// Forgets a source whose figures are no longer wanted (a finished batch whose
    /// report has been written), so a long-lived engine does not grow with them.
    pub fn forget(&self, id: SourceId) {
        self.sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

impl Observer for StatsBySource {
    fn on_event(&self, source: Option<SourceId>, event: &Event) {
        self.total.on_event(source, event);
        let Some(id) = source else { return };
        if let Event::SourceOpened { name, .. } = event {
            let stats = Arc::new(SourceStats {
                name: name.clone(),
                stats: RunStats::new(),
            });
            self.sources
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, stats);
            return;
        }
        if let Some(s) = self.source(id) {
            s.stats.on_event(source, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::usage::Usage;
    use std::time::Duration;

    fn finished(ok: bool) -> Event {
        Event::RequestFinished {
            custom_id: Arc::from("x"),
            ok,
            attempts: 1,
            error: (!ok).then_some("server_error"),
            latency: Duration::from_millis(5),
            usage: Usage::default(),
            model: None,
        }
    }

    #[test]
    fn each_source_counts_its_own_and_the_total_counts_all() {
        let stats = StatsBySource::new();
        let (a, b) = (SourceId(1), SourceId(2));
        for (id, name) in [(a, "a"), (b, "b")] {
            stats.on_event(
                Some(id),
                &Event::SourceOpened {
                    name: Arc::from(name),
                    priority: 0,
                },
            );
        }
        stats.on_event(Some(a), &finished(true));
        stats.on_event(Some(a), &finished(false));
        stats.on_event(Some(b), &finished(true));
        stats.on_event(None, &Event::ConcurrencyChanged { limit: 3 });
        let all = stats.snapshots();
        assert_eq!(all.len(), 2);
        let (sa, sb) = (&all[0].2, &all[1].2);
        assert_eq!((&*all[0].1, sa.succeeded, sa.failed), ("a", 1, 1));
        assert_eq!((&*all[1].1, sb.succeeded, sb.failed), ("b", 1, 0));
        let total = stats.total().snapshot();
        assert_eq!((total.succeeded, total.failed), (2, 1));
        stats.forget(a);
        assert!(stats.source(a).is_none());
        assert_eq!(stats.snapshots().len(), 1);
    }
}
