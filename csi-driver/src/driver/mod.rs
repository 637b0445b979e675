//! The driver's behaviour, in domain terms: what each CSI call does once its request has
//! been validated and converted. The gRPC adapters in `grpc/` call only this.
//!
//! This module holds the [`Driver`] itself, its settings and the helpers both sides share;
//! the calls live in `controller` (CreateVolume .. ControllerExpandVolume), `snapshots`
//! (CreateSnapshot, DeleteSnapshot, ListSnapshots), `node`
//! (NodeStage .. NodeExpandVolume) and `enforcement` (io.max glue: reconcile, status).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::inflight::InFlight;
use crate::os::{self, MountEntry, Mounter, Os};
use crate::tiering::Tiering;
use crate::validate;
use crate::volume::{TOPOLOGY_KEY, Volume};
use iops_controller::{DeviceNumber, Enforcement, ResolvedTier, keys};

mod controller;
mod enforcement;
mod node;
#[cfg(test)]
mod node_tests;
mod retier;
#[cfg(test)]
mod snapshot_tests;
mod snapshots;

pub use controller::{CreateRequest, VolumePage};
pub use node::{Usage, VolumeStats};
pub use retier::Retiered;
pub use snapshots::{SnapshotFilter, SnapshotPage};

/// Static settings of a driver instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    /// When set, staging and target paths must lie below it (the kubelet root).
    pub path_root: Option<PathBuf>,
    /// Reported in NodeGetInfo; 0 means no limit.
    pub max_volumes_per_node: i64,
}

/// The driver: one backend, the OS, the tiers, io.max enforcement, and the in-flight guard.
#[derive(Debug, Clone)]
pub struct Driver {
    backend: Arc<dyn Backend>,
    os: Os,
    /// Mounts and device numbers of the node calls (`os` itself, or a fake in tests).
    mounter: Arc<dyn Mounter>,
    settings: Arc<Settings>,
    inflight: InFlight,
    tiering: Arc<Tiering>,
    enforcement: Arc<Enforcement>,
}

impl Driver {
    pub fn new(
        backend: Arc<dyn Backend>,
        os: Os,
        settings: Settings,
        tiering: Tiering,
        enforcement: Arc<Enforcement>,
    ) -> Self {
        Driver {
            backend,
            mounter: Arc::new(os.clone()),
            os,
            settings: Arc::new(settings),
            inflight: InFlight::default(),
            tiering: Arc::new(tiering),
            enforcement,
        }
    }

    /// The same driver mounting through `mounter` (the node side's unit tests).
    pub fn with_mounter(mut self, mounter: Arc<dyn Mounter>) -> Self {
        self.mounter = mounter;
        self
    }

    /// The tiers and PVC look-up of this driver.
    pub fn tiering(&self) -> &Tiering {
        &self.tiering
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The backend's short name (`loop`, `lvm`).
    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The topology segment of this node.
    pub fn topology(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(TOPOLOGY_KEY.to_owned(), self.settings.node_id.clone())])
    }

    /// Whether the backend can serve requests.
    pub async fn probe(&self) -> Result<(), String> {
        self.backend.ready().await
    }

    /// What CreateVolume returns in `volume_context`: the backend and the resolved tier.
    pub fn volume_context(&self, volume: &Volume) -> BTreeMap<String, String> {
        let mut context = volume
            .tier
            .as_ref()
            .map(ResolvedTier::to_map)
            .unwrap_or_default();
        context.insert(keys::BACKEND.to_owned(), self.backend.kind().to_owned());
        context
    }

    pub(super) fn path(&self, field: &str, path: &str) -> Result<PathBuf> {
        validate::abs_path(field, path, self.settings.path_root.as_deref())
    }

    pub(super) async fn volume(&self, id: &str) -> Result<Volume> {
        self.backend
            .get(id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))
    }

    /// Unmounts every layer mounted at `path`.
    pub(super) async fn unmount_all(&self, path: &Path) -> Result<()> {
        for _ in 0..8 {
            if self.mounter.mount_at(path)?.is_none() {
                return Ok(());
            }
            self.mounter.unmount(path).await?;
        }
        if self.mounter.mount_at(path)?.is_none() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "{} is still mounted after 8 unmounts",
            path.display()
        )))
    }

    /// The device a mounted path exposes: the node's own number for a bind-mounted device
    /// node, the filesystem's device otherwise.
    pub(super) fn mounted_device(&self, path: &Path) -> Result<DeviceNumber> {
        Ok(self.mounter.exposed_device(path)?)
    }

    /// The device number of each of `devices` (block device nodes).
    pub(super) fn device_numbers(&self, devices: &[PathBuf]) -> Result<Vec<DeviceNumber>> {
        devices
            .iter()
            .map(|d| self.mounter.device_number(d).map_err(Error::from))
            .collect()
    }

    /// Mounts that use any of `devices`: filesystems on them and binds of their nodes.
    pub(super) fn mounts_using<'m>(
        &self,
        mounts: &'m [MountEntry],
        devices: &[PathBuf],
    ) -> Result<Vec<&'m MountEntry>> {
        let numbers = self.device_numbers(devices)?;
        let node_roots: Vec<PathBuf> = devices
            .iter()
            .map(|d| Path::new("/").join(d.file_name().unwrap_or_default()))
            .collect();
        Ok(mounts
            .iter()
            .filter(|m| {
                numbers.contains(&DeviceNumber {
                    major: m.major,
                    minor: m.minor,
                }) || (m.fs_type == "devtmpfs" && node_roots.contains(&m.root))
            })
            .collect())
    }
}

/// INVALID_ARGUMENT if `path` is a symbolic link (a kubelet path never is).
pub(super) fn refuse_symlink(field: &str, path: &Path) -> Result<()> {
    if os::files::is_symlink(path) {
        return Err(Error::invalid(
            field,
            format!("{} is a symbolic link", path.display()),
        ));
    }
    Ok(())
}
