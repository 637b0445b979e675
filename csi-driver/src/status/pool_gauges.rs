//! Pool gauges on `/metrics`, registered by the driver into the node's registry, and the
//! loop that refreshes them and `/status`'s backend reading every reconcile period.

use std::time::Duration;

use super::{PoolStatus, StatusCache};
use crate::driver::Driver;

/// Pool gauges on `/metrics`, labelled `device_class` and `location`, refreshed by the
/// node's reconcile loop: `iolane_pool_data_percent`, `iolane_pool_metadata_percent`
/// (lvm only), `iolane_pool_size_bytes`, `iolane_pool_provisioned_bytes`.
#[derive(Debug, Default, Clone)]
pub struct PoolGauges {
    data: PoolFamily,
    metadata: PoolFamily,
    size: PoolFamily,
    provisioned: PoolFamily,
}

type PoolFamily = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
>;

impl PoolGauges {
    /// Registers the four gauges.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "iolane_pool_data_percent",
            "Thin pool data usage (loop backend: the state directory's filesystem), percent",
            self.data.clone(),
        );
        registry.register(
            "iolane_pool_metadata_percent",
            "Thin pool metadata usage, percent",
            self.metadata.clone(),
        );
        registry.register(
            "iolane_pool_size_bytes",
            "Size of the pool's data (loop backend: of the filesystem)",
            self.size.clone(),
        );
        registry.register(
            "iolane_pool_provisioned_bytes",
            "Sum of the virtual sizes of the pool's volumes",
            self.provisioned.clone(),
        );
    }

    /// Sets every gauge from `pools`, dropping series of pools no longer reported.
    #[allow(clippy::cast_precision_loss)]
    pub fn update(&self, pools: &[PoolStatus]) {
        for f in [&self.data, &self.metadata, &self.size, &self.provisioned] {
            f.clear();
        }
        for p in pools {
            let labels = vec![
                ("device_class".to_owned(), p.name.clone()),
                ("location".to_owned(), p.location.clone()),
            ];
            self.data.get_or_create(&labels).set(p.data_percent);
            if let Some(m) = p.metadata_percent {
                self.metadata.get_or_create(&labels).set(m);
            }
            self.size.get_or_create(&labels).set(p.size_bytes as f64);
            self.provisioned
                .get_or_create(&labels)
                .set(p.provisioned_bytes as f64);
        }
    }
}

/// Refreshes `gauges` from the backend's pools and, when `/status` is served, `status`
/// from the backend's volumes, pools and conditions, every `period`, starting at once: one
/// reading of the backend per period for both. A failed read is logged and retried at the
/// next tick. Never returns.
pub async fn refresh_every(
    driver: Driver,
    gauges: Option<PoolGauges>,
    status: Option<StatusCache>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pools = match &status {
            Some(cache) => match driver.backend_status().await {
                Ok(s) => {
                    let pools = s.pools.clone();
                    cache.set(s);
                    Ok(pools)
                }
                Err(e) => Err(e),
            },
            None => driver.pools().await,
        };
        match pools {
            Ok(p) => {
                if let Some(g) = &gauges {
                    g.update(&p);
                }
            }
            Err(e) => tracing::debug!(error = %e, "pool usage not read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_gauges_follow_the_pools() {
        let gauges = PoolGauges::default();
        let mut registry = prometheus_client::registry::Registry::default();
        gauges.register(&mut registry);
        let pool = |name: &str, data| PoolStatus {
            name: name.to_owned(),
            location: format!("vg/{name}"),
            size_bytes: 1 << 30,
            data_percent: data,
            metadata_percent: Some(1.5),
            provisioned_bytes: 2 << 30,
            problem: None,
        };
        gauges.update(&[pool("a", 12.5), pool("b", 50.0)]);
        gauges.update(&[pool("a", 13.0)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"iolane_pool_data_percent{device_class="a",location="vg/a"} 13.0"#),
            "{text}"
        );
        assert!(!text.contains(r#"device_class="b""#), "{text}");
        assert!(text.contains("iolane_pool_provisioned_bytes"), "{text}");
    }
}
