//! The enforcement loop: a pass every period, after the driver has fed in what the mount
//! table says.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Enforcement;

impl Enforcement {
    /// Runs a pass every `period`, starting at once (re-applying after a restart). Before
    /// each pass `observe` brings the desired set up to date with the node (the driver
    /// forgets publications whose mounts are gone and adopts kubelet's that it does not
    /// know yet) and returns how many it adopted; when it fails the pass is skipped, logged
    /// and retried at the next tick. Never returns.
    pub async fn run<F, Fut, E>(self: Arc<Self>, period: Duration, mut observe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<usize, E>>,
        E: Display,
    {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(period_secs = period.as_secs(), "io.max reconciler started");
        loop {
            tick.tick().await;
            match observe().await {
                Ok(adopted) => {
                    let report = self.pass().await;
                    tracing::debug!(
                        in_sync = report.in_sync,
                        applied = report.applied,
                        repaired = report.repaired,
                        pending = report.pending,
                        gone = report.gone,
                        lifted = report.lifted,
                        errors = report.errors.len(),
                        adopted,
                        ms = report.duration.as_secs_f64() * 1000.0,
                        "reconcile pass"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
            }
        }
    }
}

impl Enforcement {
    /// Runs the priority controllers every `period` (the law's, 100 ms by default) until
    /// the process ends; returns at once when they are not enabled.
    pub async fn run_priority(self: Arc<Self>) {
        let Some(period) = self.priority_period().await else {
            return;
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            period_ms = period.as_millis(),
            "priority controller started"
        );
        loop {
            tick.tick().await;
            let this = Arc::clone(&self);
            // Sysfs and cgroupfs reads: off the async workers.
            match tokio::task::spawn_blocking(move || this.priority_pass()).await {
                Ok(Some(pass)) if !pass.errors.is_empty() => {
                    tracing::debug!(
                        errors = pass.errors.len(),
                        written = pass.written,
                        "priority pass"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "priority pass failed"),
            }
        }
    }
}
