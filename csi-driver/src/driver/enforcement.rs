//! The driver's io.max glue: recording a publication with the enforcement controller
//! (`iops_controller::enforcement`) and lifting it, feeding the controller what the mount
//! table says before each pass (forgetting unmounted and adopting unknown publications),
//! pool usage and the backend's part of the `iolane status` snapshot.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::Driver;
use crate::enforce::pod_uid_from_target;
use crate::error::{Error, Result};
use crate::volume::Volume;
use iops_controller::reconcile::{Outcome as ReconcileOutcome, Publication};
use iops_controller::{DeviceNumber, PodUid};

impl Driver {
    /// Records the publication and writes its caps if its pod's cgroup is there; never
    /// fails the publish (see [`crate::enforce`]).
    pub(super) async fn enforce(
        &self,
        volume: &Volume,
        target: &Path,
        device: DeviceNumber,
        pod: Option<PodUid>,
    ) {
        let Some(pod) = pod.or_else(|| pod_uid_from_target(target)) else {
            tracing::debug!(volume.id = %volume.id, "no pod UID in volume_context or target path: published without IO caps");
            return;
        };
        let (tier, limits) = self.tiering.limits_of(volume);
        let publication = Publication {
            volume_id: volume.id.clone(),
            target_path: target.to_owned(),
            pod_uid: pod,
            device,
            tier,
            limits,
        };
        let (outcome, reason) = self.enforcement.publish(publication.clone()).await;
        log_outcome(&publication, outcome, reason.as_deref());
    }

    /// Lifts the caps of the publication at `target`. A known publication's reset never
    /// fails the unpublish: one that fails stays queued in the controller and every pass
    /// retries it. A publication this process does not know (it restarted since the
    /// publish, or since an earlier attempt unmounted) is lifted through the pod named by
    /// the kubelet target path, on the volume's own device; that failing fails the call,
    /// so the CO's retry comes back to it.
    pub(super) async fn lift_caps(&self, id: &str, target: &Path) -> Result<()> {
        match self.enforcement.unpublish(target).await {
            Ok(Some(true)) => {
                tracing::info!(volume.id = %id, target = %target.display(), "lifted the io.max caps");
            }
            Ok(Some(false)) => {}
            Ok(None) => self.lift_unknown(id, target).await?,
            Err(e) => {
                tracing::warn!(volume.id = %id, target = %target.display(), error = %e, "could not lift the io.max caps; the reconciler retries");
            }
        }
        Ok(())
    }

    /// See [`Self::lift_caps`]: the caps an earlier process wrote for `target`.
    async fn lift_unknown(&self, id: &str, target: &Path) -> Result<()> {
        let Some(pod) = pod_uid_from_target(target) else {
            return Ok(());
        };
        let Some(dev) = self.backend.attached(id).await? else {
            return Ok(());
        };
        let device = self.mounter.device_number(&dev)?;
        match self.enforcement.lift_unknown(&pod, device).await {
            Ok(true) => {
                tracing::info!(volume.id = %id, pod = %pod, device = %device, target = %target.display(), "lifted io.max caps an earlier process left");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(Error::NotReady(format!(
                "volume {id} is unpublished from {} but the caps of pod {pod} on {device} could not be lifted: {e}",
                target.display()
            ))),
        }
    }

    /// Brings the enforcement controller's publications up to date with the mount table,
    /// before each of its passes: forgets publications whose mounts are gone and adopts
    /// kubelet publications it does not know yet (after a restart). Returns how many it
    /// adopted.
    pub async fn adopt_mounts(&self) -> Result<usize> {
        // Taken before the table is read: a publication recorded while it is read is not
        // in it, and is not forgotten for that.
        let epoch = self.enforcement.epoch().await;
        // The table (thousands of lines on a busy node) is read and sorted out on the
        // blocking pool: the mount points, and the kubelet-shaped ones with their pods.
        let os = self.os.clone();
        let (mounted, kubelet) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mounts = os.mounts()?;
            let kubelet: Vec<(PathBuf, PodUid)> = mounts
                .iter()
                .filter_map(|m| {
                    pod_uid_from_target(&m.mount_point).map(|u| (m.mount_point.clone(), u))
                })
                .collect();
            let mounted: HashSet<PathBuf> = mounts.into_iter().map(|m| m.mount_point).collect();
            Ok((mounted, kubelet))
        })
        .await
        .map_err(|e| {
            crate::os::Error::io(
                "read",
                Path::new("the mount table"),
                std::io::Error::other(e),
            )
        })??;
        let enforcer = &self.enforcement;
        for p in enforcer.retain(epoch, |t| mounted.contains(t)).await {
            tracing::info!(volume.id = %p.volume_id, pod = %p.pod_uid, target = %p.target_path.display(), "publication unmounted behind iolane's back: forgotten, its caps lifted by the next pass");
        }
        let unknown = enforcer.unknown(kubelet).await;
        if unknown.is_empty() {
            return Ok(0);
        }
        self.adopt(unknown).await
    }

    /// Usage of every pool (metrics, `iolane status`).
    pub async fn pools(&self) -> Result<Vec<crate::status::PoolStatus>> {
        self.backend.pools().await
    }

    /// The backend's part of the snapshot `iolane status` prints: volumes with tier, caps
    /// and condition, and pools; read once per period by the refresh loop, the
    /// publications are filled in per request (see [`crate::status::StatusSource`]).
    pub async fn backend_status(&self) -> Result<crate::status::NodeStatus> {
        use crate::status::VolumeStatus;
        let mut volumes = self.backend.list().await?;
        volumes.sort_by(|a, b| a.id.cmp(&b.id));
        let pools = self.backend.pools().await?;
        // A volume created without `iolane.dev/device-class` lives in the first class.
        let default_class = (self.backend.kind() == "lvm")
            .then(|| pools.first().map(|p| p.name.clone()))
            .flatten();
        // One read of the backend for every volume's condition, not one per volume.
        let conditions = self.backend.conditions().await;
        let mut out = Vec::with_capacity(volumes.len());
        for v in volumes {
            let (tier, limits) = self.tiering.limits_of(&v);
            let condition = match &conditions {
                Ok(all) => all.get(&v.id).cloned(),
                Err(e) => Some(format!("condition unknown: {e}")),
            };
            out.push(VolumeStatus {
                publications: Vec::new(),
                id: v.id,
                name: v.name,
                capacity_bytes: v.capacity_bytes,
                device_class: v
                    .parameters
                    .device_class
                    .clone()
                    .or_else(|| default_class.clone()),
                tier,
                caps: limits,
                condition,
            });
        }
        Ok(crate::status::NodeStatus {
            node_id: self.settings.node_id.clone(),
            backend: self.backend.kind().to_owned(),
            pools,
            volumes: out,
            devices: Vec::new(), // filled from the enforcement controller when served
        })
    }

    /// Records the kubelet publications (`target`, pod) that are mounts of this driver's
    /// volumes; returns how many. Mounts of other drivers are ignored.
    async fn adopt(&self, unknown: Vec<(PathBuf, PodUid)>) -> Result<usize> {
        let mut by_device: BTreeMap<DeviceNumber, Volume> = BTreeMap::new();
        for v in self.backend.list().await? {
            for dev in self.backend.devices(&v.id).await? {
                by_device.insert(self.os.device_number(&dev)?, v.clone());
            }
        }
        let mut adopted = 0;
        for (target, pod) in unknown {
            let Ok(n) = self.mounted_device(&target) else {
                continue;
            };
            let Some(volume) = by_device.get(&n) else {
                self.enforcement.mark_foreign(&target).await;
                continue;
            };
            // The list is as old as the mount table: a publish may have recorded it since
            // (and a claim now could refuse that volume's next call), or be at it now.
            if self.enforcement.knows(&target).await {
                continue;
            }
            let Ok(_guard) = self.inflight.claim(&volume.id) else {
                continue;
            };
            if self.enforcement.knows(&target).await {
                continue;
            }
            // The volume's own device carries the caps, also for a read-only raw publication
            // that exposes a loop device of its own.
            let device = match self.backend.attached(&volume.id).await? {
                Some(dev) => self.os.device_number(&dev)?,
                None => n,
            };
            tracing::info!(volume.id = %volume.id, pod = %pod, target = %target.display(), "adopted a publication from the mount table");
            self.enforce(volume, &target, device, Some(pod)).await;
            adopted += 1;
        }
        Ok(adopted)
    }
}

pub(super) fn log_outcome(p: &Publication, outcome: ReconcileOutcome, reason: Option<&str>) {
    match outcome {
        ReconcileOutcome::Applied | ReconcileOutcome::InSync => tracing::info!(
            volume.id = %p.volume_id, pod = %p.pod_uid, tier = %p.tier, device = %p.device,
            "the tier's io.max caps are in place"
        ),
        ReconcileOutcome::Pending(why) => tracing::info!(
            volume.id = %p.volume_id, pod = %p.pod_uid, tier = %p.tier, reason = ?why,
            "io.max caps pending: the reconciler applies them when it can"
        ),
        ReconcileOutcome::Repaired | ReconcileOutcome::Gone | ReconcileOutcome::Failed => {
            tracing::warn!(
                volume.id = %p.volume_id, pod = %p.pod_uid, tier = %p.tier, ?outcome,
                reason = reason.unwrap_or(""),
                "io.max caps not in place; the reconciler retries"
            );
        }
    }
}
