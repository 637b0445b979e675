//! What `GET /status` serves: the backend's part of the snapshot (volumes, tiers, pools,
//! conditions) as the node's refresh loop last read it, with each volume's publications
//! filled in from the enforcement controller at each request. A request never runs an LVM
//! command: the backend is read once per reconcile period, by
//! [`super::pool_gauges::refresh_every`], not per GET.

use std::sync::{Arc, PoisonError, RwLock};

use iops_controller::Enforcement;

use super::{DeviceStatus, NodeStatus};

/// The last backend reading, shared by the refresh loop (writer) and `/status` (readers).
#[derive(Debug, Clone, Default)]
pub struct StatusCache {
    last: Arc<RwLock<Option<Arc<NodeStatus>>>>,
}

impl StatusCache {
    /// Replaces the backend reading (its volumes' `publications` are ignored).
    pub fn set(&self, status: NodeStatus) {
        *self.last.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(status));
    }

    /// The last backend reading, `None` before the first one.
    pub fn get(&self) -> Option<Arc<NodeStatus>> {
        self.last
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What `/status` is served from.
#[derive(Debug, Clone)]
pub struct StatusSource {
    pub cache: StatusCache,
    pub enforcement: Arc<Enforcement>,
}

impl StatusSource {
    /// The snapshot: the last backend reading with every publication known now (the
    /// `io.max` caps in place and the `io.stat` counters read now). `None` before the
    /// refresh loop's first reading.
    pub async fn snapshot(&self) -> Option<NodeStatus> {
        let last = self.cache.get()?;
        let mut status = NodeStatus::clone(&last);
        let mut publications = self.enforcement.snapshot().await;
        for v in &mut status.volumes {
            v.publications = publications.remove(&v.id).unwrap_or_default();
        }
        status.devices = self
            .enforcement
            .priority_devices()
            .await
            .iter()
            .map(DeviceStatus::from)
            .collect();
        Some(status)
    }
}
