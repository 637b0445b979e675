//! Prometheus metrics of the priority controllers (issue 9), per physical device and
//! class, as of the last priority pass. Registered like [`super::EnforcementMetrics`]
//! ([`PriorityMetrics::register`]) and fed after every pass ([`PriorityMetrics::observe`]).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `iolane_priority_device_capacity_iops` | gauge | `device`, `direction` | the capacity model in force (calibration or config, times the online scale): `read` or `write` IOPS |
//! | `iolane_priority_device_capacity_scale` | gauge | `device` | the online correction of the configured capacity (1.0 = as configured) |
//! | `iolane_priority_class_demand_ratio` | gauge | `device`, `class` | what the class used in the last period, as a fraction of the device (smoothed) |
//! | `iolane_priority_class_publications` | gauge | `device`, `class` | publications of the class on the device |
//! | `iolane_priority_batch_budget_ratio` | gauge | `device` | the batch class budget in force, a fraction of the device (above 1.0: streaming idle, batch may probe past the model) |
//! | `iolane_priority_device_saturated` | gauge | `device` | 1 when the device showed a standing queue in the last period |
//! | `iolane_priority_streaming_active` | gauge | `device` | 1 when a streaming publication did IO in the last period |
//! | `iolane_priority_writes_total` | counter | | `io.max` lines the priority controllers wrote |
//! | `iolane_priority_deferred_total` | counter | | changed `io.max` lines held back for a pass because their group ran over its line in force (a write then would lift blk-throttle's hold on Linux 6.1; docs/priority.md) |
//!
//! A device's series appear with its first publication and go with its last.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::priority::{DeviceState, PriorityPass};

/// The priority controllers' metrics; see the module docs.
#[derive(Debug, Default)]
pub struct PriorityMetrics {
    writes: Counter,
    deferred: Counter,
    devices: Arc<DeviceCollector>,
}

impl PriorityMetrics {
    pub fn new() -> PriorityMetrics {
        PriorityMetrics::default()
    }

    /// Adds every series to `registry` (they share state with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "iolane_priority_writes",
            "io.max lines the priority controllers wrote",
            self.writes.clone(),
        );
        registry.register(
            "iolane_priority_deferred",
            "changed io.max lines held back because their group ran over its line in force",
            self.deferred.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&self.devices)));
    }

    /// Takes in one priority pass.
    pub fn observe(&self, pass: &PriorityPass) {
        self.writes
            .inc_by(u64::try_from(pass.written).unwrap_or(u64::MAX));
        self.deferred
            .inc_by(u64::try_from(pass.deferred).unwrap_or(u64::MAX));
        *self.devices.states() = pass.devices.clone();
    }
}

#[derive(Debug, Default)]
struct DeviceCollector {
    states: Mutex<Vec<DeviceState>>,
}

impl DeviceCollector {
    fn states(&self) -> MutexGuard<'_, Vec<DeviceState>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Gauges<'a> = Vec<(Vec<(&'static str, &'a str)>, f64)>;

impl Collector for DeviceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let states = self.states().clone();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let families: [(&str, &str, Gauges<'_>); 7] = [
            (
                "iolane_priority_device_capacity_iops",
                "Capacity model in force for the device (configured times the online scale), IOPS",
                states
                    .iter()
                    .flat_map(|s| {
                        [
                            (
                                vec![("device", s.name.as_str()), ("direction", "read")],
                                s.report.capacity.read_iops,
                            ),
                            (
                                vec![("device", s.name.as_str()), ("direction", "write")],
                                s.report.capacity.write_iops,
                            ),
                        ]
                    })
                    .collect(),
            ),
            (
                "iolane_priority_device_capacity_scale",
                "Online correction of the device's configured capacity (1.0 = as configured)",
                states
                    .iter()
                    .map(|s| (vec![("device", s.name.as_str())], s.report.capacity_scale))
                    .collect(),
            ),
            (
                "iolane_priority_class_demand_ratio",
                "What the class used in the last period, as a fraction of the device",
                states
                    .iter()
                    .flat_map(|s| {
                        [
                            (
                                vec![("device", s.name.as_str()), ("class", "streaming")],
                                s.report.streaming_use,
                            ),
                            (
                                vec![("device", s.name.as_str()), ("class", "batch")],
                                s.report.batch_use,
                            ),
                        ]
                    })
                    .collect(),
            ),
            (
                "iolane_priority_class_publications",
                "Publications of the class on the device",
                states
                    .iter()
                    .flat_map(|s| {
                        [
                            (
                                vec![("device", s.name.as_str()), ("class", "streaming")],
                                s.publications.0 as f64,
                            ),
                            (
                                vec![("device", s.name.as_str()), ("class", "batch")],
                                s.publications.1 as f64,
                            ),
                        ]
                    })
                    .collect(),
            ),
            (
                "iolane_priority_batch_budget_ratio",
                "Batch class budget in force on the device, a fraction of its capacity",
                states
                    .iter()
                    .map(|s| (vec![("device", s.name.as_str())], s.report.batch_budget))
                    .collect(),
            ),
            (
                "iolane_priority_device_saturated",
                "1 when the device showed a standing queue in the last period",
                states
                    .iter()
                    .map(|s| (vec![("device", s.name.as_str())], flag(s.report.saturated)))
                    .collect(),
            ),
            (
                "iolane_priority_streaming_active",
                "1 when a streaming publication on the device did IO in the last period",
                states
                    .iter()
                    .map(|s| {
                        (
                            vec![("device", s.name.as_str())],
                            flag(s.report.streaming_active),
                        )
                    })
                    .collect(),
            ),
        ];
        for (name, help, series) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in series {
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::{DeviceModel, DeviceReport};

    #[test]
    fn a_pass_shows_per_device_and_class_series() {
        let m = PriorityMetrics::new();
        let mut r = Registry::default();
        m.register(&mut r);
        m.observe(&PriorityPass {
            written: 3,
            deferred: 2,
            errors: vec![],
            devices: vec![DeviceState {
                name: "nvme0n1".into(),
                source: crate::priority::CapacitySource::Config,
                report: DeviceReport {
                    capacity: DeviceModel::uniform_iops(1500.0),
                    capacity_scale: 1.0,
                    streaming_use: 0.5,
                    batch_use: 0.25,
                    streaming_active: true,
                    streaming_backlogged: false,
                    batch_budget: 0.4,
                    saturated: true,
                },
                publications: (1, 4),
            }],
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "iolane_priority_writes_total 3",
            "iolane_priority_deferred_total 2",
            r#"iolane_priority_device_capacity_iops{device="nvme0n1",direction="read"} 1500.0"#,
            r#"iolane_priority_class_demand_ratio{device="nvme0n1",class="batch"} 0.25"#,
            r#"iolane_priority_class_publications{device="nvme0n1",class="batch"} 4.0"#,
            r#"iolane_priority_batch_budget_ratio{device="nvme0n1"} 0.4"#,
            r#"iolane_priority_device_saturated{device="nvme0n1"} 1.0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        m.observe(&PriorityPass::default());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(!text.contains("nvme0n1"), "{text}");
    }
}
