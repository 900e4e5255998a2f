//! GHL's per-location request budget shared by the nodes of a cluster, kept in the store
//! ([`store::Cluster::take_budget`]), for the client's [`ghl::SharedBudget`].

use std::sync::Arc;
use std::time::Duration;
use store::Store;

pub struct StoreBudget(pub Arc<dyn Store>);

impl ghl::SharedBudget for StoreBudget {
    fn take(
        &self,
        location: &str,
        window: Duration,
        per_window: u32,
        daily: u32,
        want: u32,
    ) -> Result<ghl::Grant, String> {
        let cluster = self.0.cluster().ok_or("the store is not shared by a cluster")?;
        let g = cluster.take_budget(location, window, per_window, daily, want).map_err(|e| e.to_string())?;
        Ok(ghl::Grant { granted: g.granted, window_ends_in: g.window_ends_in, day_spent: g.day_spent })
    }
}
