//! `Router`: holds the current routing [`Table`] in an `ArcSwap`. Writers build a whole new
//! table and publish it; the hot path does one `load()` per request.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::table::Table;

/// Holds the current table. Writers build a whole new table and `publish` it; readers `load`.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<Table>,
    epoch: Instant,
}

impl Router {
    pub fn new(table: Table) -> Self {
        Router {
            table: ArcSwap::from_pointee(table),
            epoch: Instant::now(),
        }
    }

    /// The current table (cheap; do not hold it across awaits).
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// Swap in a new table atomically: a request sees the old one or the new one, never a mix.
    pub fn publish(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// The instant the proxy's millisecond clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }
}
