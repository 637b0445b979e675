//! Prometheus metrics of enforcement: what each reconcile pass did, and each publication's
//! caps and IO counters as of the last pass.
//!
//! [`EnforcementMetrics`] registers itself into the node's registry
//! ([`EnforcementMetrics::register`]) and is fed after every pass with
//! [`EnforcementMetrics::observe`], and after every publish, which writes its own line
//! without a pass, with [`EnforcementMetrics::observe_publish`] (its outcome counts in the
//! applies, repairs, pending, gone and errors counters, not in the passes). The registry, `iolane_build_info` and the HTTP endpoint
//! serving them are the binary's (`csi-driver/src/http.rs`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `iolane_volume_io_limit` | gauge | `volume`, `pod_uid`, `tier`, `key` | the cap in force on a published volume, per second: IOs for `key` = `riops`/`wiops`, bytes for `rbps`/`wbps`. Only caps that are set have a series: a `max` (uncapped) key has none, and neither has a publication whose line is not enforced (pending, gone, failed) |
//! | `iolane_volume_read_ios_total` | counter | `volume`, `pod_uid` | read IOs the pod issued to the volume (`io.stat` `rios`) |
//! | `iolane_volume_write_ios_total` | counter | `volume`, `pod_uid` | write IOs (`wios`) |
//! | `iolane_volume_read_bytes_total` | counter | `volume`, `pod_uid` | bytes read (`rbytes`) |
//! | `iolane_volume_write_bytes_total` | counter | `volume`, `pod_uid` | bytes written (`wbytes`) |
//! | `iolane_reconcile_passes_total` | counter | | reconcile passes run |
//! | `iolane_reconcile_applies_total` | counter | | `io.max` lines written for the first time, after a tier change or after a restart |
//! | `iolane_reconcile_repairs_total` | counter | | lines rewritten because they had changed behind iolane's back |
//! | `iolane_reconcile_pending_total` | counter | | publications found pending (no pod cgroup yet, or no io controller), summed over passes |
//! | `iolane_reconcile_gone_total` | counter | | publications found with their pod cgroup gone, summed over passes |
//! | `iolane_reconcile_errors_total` | counter | | failures (enforcement or `io.stat`), summed over passes |
//! | `iolane_reconcile_last_pass_duration_seconds` | gauge | | how long the last pass took |
//!
//! The priority controllers' per-device series (opt-in, `[priority]`) are
//! [`PriorityMetrics`]'s (`metrics/priority.rs`).
//!
//! The per-volume series are the reconciler's state as of the last pass: they appear with
//! a publication and disappear with it. The `io.stat` series of a publication appear once
//! its pod has done IO on the volume (the kernel lists a device in `io.stat` only then). The `io.stat` counters belong to the pod's cgroup,
//! so they start from zero for every new pod (a new `pod_uid`), as counters should.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

use crate::reconcile::{Outcome, PassReport, Reconciler};
use crate::tier::Limit;

/// Enforcement's metrics; see the module docs for the list.
#[derive(Debug, Default)]
pub struct EnforcementMetrics {
    passes: Counter,
    applies: Counter,
    repairs: Counter,
    pending: Counter,
    gone: Counter,
    errors: Counter,
    last_pass_seconds: Gauge<f64, AtomicU64>,
    volumes: Arc<VolumeCollector>,
}

impl EnforcementMetrics {
    /// The metrics with every series at zero, not registered yet.
    pub fn new() -> EnforcementMetrics {
        EnforcementMetrics::default()
    }

    /// Adds every series to `registry` (they share state with `self`).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "iolane_reconcile_passes",
                "Reconcile passes run",
                &self.passes,
            ),
            (
                "iolane_reconcile_applies",
                "io.max lines written for the first time, after a tier change or after a restart",
                &self.applies,
            ),
            (
                "iolane_reconcile_repairs",
                "io.max lines rewritten because they had changed behind iolane's back",
                &self.repairs,
            ),
            (
                "iolane_reconcile_pending",
                "Publications found without a pod cgroup or io controller, summed over passes",
                &self.pending,
            ),
            (
                "iolane_reconcile_gone",
                "Publications found with their pod cgroup gone, summed over passes",
                &self.gone,
            ),
            (
                "iolane_reconcile_errors",
                "Reconcile failures (io.max or io.stat), summed over passes",
                &self.errors,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register_with_unit(
            "iolane_reconcile_last_pass_duration",
            "How long the last reconcile pass took",
            Unit::Seconds,
            self.last_pass_seconds.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&self.volumes)));
    }

    /// Takes in one reconcile pass: its counts, and the per-volume state it left.
    pub fn observe(&self, report: &PassReport, reconciler: &Reconciler) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.passes.inc();
        self.applies.inc_by(count(report.applied));
        self.repairs.inc_by(count(report.repaired));
        self.pending.inc_by(count(report.pending));
        self.gone.inc_by(count(report.gone));
        self.errors.inc_by(count(report.errors.len()));
        self.last_pass_seconds.set(report.duration.as_secs_f64());
        self.observe_volumes(reconciler);
    }

    /// Takes in a publish, which writes its own line and is not a pass: its outcome's
    /// count, and the per-volume state.
    pub fn observe_publish(&self, outcome: Outcome, reconciler: &Reconciler) {
        match outcome {
            Outcome::Applied => self.applies.inc(),
            Outcome::Repaired => self.repairs.inc(),
            Outcome::Pending(_) => self.pending.inc(),
            Outcome::Gone => self.gone.inc(),
            Outcome::Failed => self.errors.inc(),
            Outcome::InSync => 0,
        };
        self.observe_volumes(reconciler);
    }

    fn observe_volumes(&self, reconciler: &Reconciler) {
        let samples = reconciler
            .publications()
            .map(|p| {
                let publication = p.publication;
                let limits = p.enforced.map(|l| {
                    [
                        ("riops", l.read_iops),
                        ("wiops", l.write_iops),
                        ("rbps", l.read_bps),
                        ("wbps", l.write_bps),
                    ]
                });
                VolumeSample {
                    volume: publication.volume_id.clone(),
                    pod_uid: publication.pod_uid.to_string(),
                    tier: publication.tier.clone(),
                    limits,
                    stats: p.stats.map(|s| [s.rios, s.wios, s.rbytes, s.wbytes]),
                }
            })
            .collect();
        *self.volumes.samples() = samples;
    }
}

/// One publication as of the last pass.
#[derive(Debug, Clone)]
struct VolumeSample {
    volume: String,
    pod_uid: String,
    tier: String,
    /// (key, cap) in `riops`, `wiops`, `rbps`, `wbps` order, when enforced.
    limits: Option<[(&'static str, Limit); 4]>,
    /// rios, wios, rbytes, wbytes.
    stats: Option<[u64; 4]>,
}

/// Encodes the per-volume series from the last pass's samples on each scrape.
#[derive(Debug, Default)]
struct VolumeCollector {
    samples: Mutex<Vec<VolumeSample>>,
}

impl VolumeCollector {
    fn samples(&self) -> MutexGuard<'_, Vec<VolumeSample>> {
        // The samples are replaced whole; a panic elsewhere leaves a consistent set.
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `io.stat` counters: (name, help, unit, index into [`VolumeSample::stats`]).
const STAT_COUNTERS: [(&str, &str, Option<Unit>, usize); 4] = [
    (
        "iolane_volume_read_ios",
        "Read IOs the pod issued to the volume (io.stat rios).",
        None,
        0,
    ),
    (
        "iolane_volume_write_ios",
        "Write IOs the pod issued to the volume (io.stat wios).",
        None,
        1,
    ),
    (
        "iolane_volume_read",
        "Bytes the pod read from the volume (io.stat rbytes).",
        Some(Unit::Bytes),
        2,
    ),
    (
        "iolane_volume_write",
        "Bytes the pod wrote to the volume (io.stat wbytes).",
        Some(Unit::Bytes),
        3,
    ),
];

impl Collector for VolumeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let samples = self.samples().clone();
        {
            let mut family = encoder.encode_descriptor(
                "iolane_volume_io_limit",
                "Cap in force on a published volume, per second (IOs for riops/wiops, bytes \
                 for rbps/wbps); no series for a key at max.",
                None,
                MetricType::Gauge,
            )?;
            for s in &samples {
                for (key, limit) in s.limits.iter().flatten() {
                    let Some(value) = limit.get() else { continue };
                    let labels = [
                        ("volume", s.volume.as_str()),
                        ("pod_uid", s.pod_uid.as_str()),
                        ("tier", s.tier.as_str()),
                        ("key", key),
                    ];
                    // Caps above i64::MAX bytes/s are beyond any device; show the ceiling.
                    let value = i64::try_from(value).unwrap_or(i64::MAX);
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, unit, index) in &STAT_COUNTERS {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            for s in &samples {
                let Some(stats) = s.stats else { continue };
                let labels = [
                    ("volume", s.volume.as_str()),
                    ("pod_uid", s.pod_uid.as_str()),
                ];
                ConstCounter::new(stats[*index]).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

mod priority;
pub use priority::PriorityMetrics;

#[cfg(test)]
mod tests;
