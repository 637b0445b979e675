//! Lifting caps that outlive their publication: the queue of `io.max` lines still to be
//! reset, for a release whose write failed and for publications forgotten because their
//! mounts went away. Every pass retries the queue before it enforces the publications, so
//! no line is left behind that nothing tracks.

use std::path::{Path, PathBuf};

use super::{CgroupState, PassError, PassReport, Publication, Reconciler, Tracked};
use crate::apply::{self, CgroupFs};
use crate::device::DeviceNumber;

/// A line to reset: the publication it was written for (for logs and errors).
#[derive(Debug, Clone)]
pub(super) struct Lift {
    pub(super) publication: Publication,
    /// How many writes failed so far; the first failure is logged as a warning, the
    /// retries quietly until one succeeds.
    pub(super) failures: u32,
}

impl Reconciler {
    /// Queues the reset of `t`'s line, when its cgroup was found (a line can only have
    /// been written there).
    pub(super) fn queue_lift(&mut self, t: Tracked, failures: u32) {
        if let CgroupState::Found(cgroup) = t.cgroup {
            self.lifts.insert(
                (cgroup, t.publication.device),
                Lift {
                    publication: t.publication,
                    failures,
                },
            );
        }
    }

    /// Whether a tracked publication still enforces `dev` in `cgroup` (its line is then
    /// not to be reset).
    pub(super) fn enforced_elsewhere(&self, cgroup: &Path, dev: DeviceNumber) -> bool {
        self.tracked.values().any(|other| {
            other.publication.device == dev
                && matches!(&other.cgroup, CgroupState::Found(c) if c == cgroup)
        })
    }

    /// Resets every queued line that no tracked publication enforces; a cgroup that has
    /// gone needs nothing. What fails stays queued and is reported in `report.errors`.
    pub(super) fn retry_lifts(&mut self, report: &mut PassReport, fs: &dyn CgroupFs) {
        let queued: Vec<(PathBuf, DeviceNumber)> = self.lifts.keys().cloned().collect();
        for (cgroup, dev) in queued {
            if self.enforced_elsewhere(&cgroup, dev) {
                self.lifts.remove(&(cgroup, dev));
                continue;
            }
            match apply::reset(fs, &cgroup, dev) {
                Ok(()) => {
                    if let Some(l) = self.lifts.remove(&(cgroup, dev)) {
                        tracing::info!(
                            volume.id = %l.publication.volume_id,
                            pod.uid = %l.publication.pod_uid,
                            device = %dev,
                            retries = l.failures,
                            "io.max caps lifted"
                        );
                    }
                    report.lifted += 1;
                }
                Err(e) if e.is_not_found() => {
                    self.lifts.remove(&(cgroup, dev));
                }
                Err(e) => {
                    let Some(l) = self.lifts.get_mut(&(cgroup, dev)) else {
                        continue;
                    };
                    l.failures += 1;
                    if l.failures == 1 {
                        tracing::warn!(
                            volume.id = %l.publication.volume_id,
                            pod.uid = %l.publication.pod_uid,
                            device = %dev,
                            error = %e,
                            "io.max caps not lifted; every pass retries"
                        );
                    }
                    report.errors.push(PassError {
                        volume_id: l.publication.volume_id.clone(),
                        target_path: l.publication.target_path.clone(),
                        reason: format!("lifting the caps: {e}"),
                    });
                }
            }
        }
    }

    /// Whether a tracked publication enforces `dev` in `cgroup`.
    pub fn enforces(&self, cgroup: &Path, dev: DeviceNumber) -> bool {
        self.enforced_elsewhere(cgroup, dev)
    }

    /// How many lines are waiting to be reset.
    pub fn pending_lifts(&self) -> usize {
        self.lifts.len()
    }
}
