//! Whether this replica may act: the leadership state the elector (`runtime::leader`)
//! grants and revokes, and the [`Guard`] a long-running job carries. Plain state on this
//! process's monotonic clock: no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Whether this replica may act. Cheap to clone and to ask.
#[derive(Clone, Debug)]
pub struct Leadership {
    always: bool,
    until: Arc<Mutex<Option<Instant>>>,
    /// Counts the grants that began a new stretch of leadership (see [`Leadership::term`]).
    term: Arc<AtomicU64>,
}

impl Leadership {
    /// Without leader election: this replica always acts.
    pub fn always() -> Self {
        Self {
            always: true,
            until: Arc::default(),
            term: Arc::new(AtomicU64::new(1)),
        }
    }

    /// With leader election: acts only while the elector grants it.
    pub fn elected() -> Self {
        Self {
            always: false,
            until: Arc::default(),
            term: Arc::default(),
        }
    }

    /// True while this replica holds a valid grant to act.
    pub fn is_leader(&self) -> bool {
        self.always || lock(&self.until).is_some_and(|t| Instant::now() < t)
    }

    /// Which stretch of leadership this is: it grows each time this replica starts acting
    /// after a time it did not (0 before the first). What a replica remembers having
    /// written in an earlier term may have been overwritten by another leader since.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    pub(crate) fn grant(&self, until: Instant) {
        let mut held = lock(&self.until);
        if !held.is_some_and(|t| Instant::now() < t) {
            self.term.fetch_add(1, Ordering::SeqCst);
        }
        *held = Some(until);
    }

    pub(crate) fn revoke(&self) {
        *lock(&self.until) = None;
    }
}

impl Leadership {
    /// The right to act in the current term, for work that spans many steps.
    pub fn guard(&self) -> Guard {
        Guard {
            leadership: self.clone(),
            term: self.term(),
        }
    }
}

/// A right to act, tied to the term it was taken in. It stops holding when leadership
/// lapses — and stays void if this replica leads again later, since another leader may have
/// acted in between. Background jobs (redrives) check it before every step and every write,
/// so a replica that was frozen past its Lease does nothing once it runs again.
#[derive(Clone, Debug)]
pub struct Guard {
    leadership: Leadership,
    term: u64,
}

impl Guard {
    /// True while this replica still leads in the term the guard was taken in.
    pub fn holds(&self) -> bool {
        self.leadership.is_leader() && self.leadership.term() == self.term
    }

    /// The term the guard was taken in.
    pub fn term(&self) -> u64 {
        self.term
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grants_lapse_on_their_own() {
        let l = Leadership::elected();
        assert!(!l.is_leader());
        l.grant(Instant::now() + Duration::from_secs(60));
        assert!(l.is_leader());
        l.grant(Instant::now() - Duration::from_millis(1));
        assert!(!l.is_leader());
        assert!(Leadership::always().is_leader());
    }

    #[test]
    fn a_new_term_begins_after_a_gap() {
        let l = Leadership::elected();
        assert_eq!(l.term(), 0);
        l.grant(Instant::now() + Duration::from_secs(60));
        assert_eq!(l.term(), 1);
        // Renewals while leading keep the term.
        l.grant(Instant::now() + Duration::from_secs(60));
        assert_eq!(l.term(), 1);
        l.revoke();
        l.grant(Instant::now() + Duration::from_secs(60));
        assert_eq!(l.term(), 2);
        // A grant that lapsed before the next one counts as a gap too.
        l.grant(Instant::now() - Duration::from_millis(1));
        l.grant(Instant::now() + Duration::from_secs(60));
        assert_eq!(l.term(), 3);
    }

    #[test]
    fn a_guard_holds_only_in_its_own_term() {
        let l = Leadership::elected();
        assert!(!l.guard().holds(), "no right before the first grant");
        l.grant(Instant::now() + Duration::from_secs(60));
        let g = l.guard();
        assert!(g.holds());
        l.grant(Instant::now() + Duration::from_secs(60));
        assert!(g.holds(), "renewals keep it");
        l.revoke();
        assert!(!g.holds());
        l.grant(Instant::now() + Duration::from_secs(60));
        assert!(!g.holds(), "a later term does not revive it");
        assert!(l.guard().holds());
        assert!(Leadership::always().guard().holds());
    }
}
