//! What the worker knows about its own health, shared by its tasks.

use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness of the worker's parts. The worker is ready when it has a consumer on the
/// work queue, the database answers, and dispatch is not paused by a refused token.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
    database_reachable: AtomicBool,
    dispatch_paused: AtomicBool,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness {
            database_reachable: AtomicBool::new(true),
            ..Readiness::default()
        }
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    pub fn set_database_reachable(&self, reachable: bool) {
        self.database_reachable.store(reachable, Ordering::Relaxed);
    }

    pub fn set_dispatch_paused(&self, paused: bool) {
        self.dispatch_paused.store(paused, Ordering::Relaxed);
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    pub fn is_database_reachable(&self) -> bool {
        self.database_reachable.load(Ordering::Relaxed)
    }

    pub fn is_dispatch_paused(&self) -> bool {
        self.dispatch_paused.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.is_consuming() && self.is_database_reachable() && !self.is_dispatch_paused()
    }
}
