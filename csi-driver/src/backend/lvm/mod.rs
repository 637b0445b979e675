//! The lvm backend: one thin LV per volume, in the thin pool of a device class.
//!
//! A device class (config `[[device_class]]`, or `--lvm-devices`) is a VG with one thin
//! pool. At start-up each class's pool is adopted if it exists, or built on the listed
//! devices if they are blank (see [`LvmBackend::open`]). A class that cannot be set up is
//! reported by [`Backend::ready`] (so `/healthz` says not ready) while the process keeps
//! serving, and is set up again (5 s after a failed try, then at most every 30 s) until
//! it works.
//!
//! **LVM metadata is the only state store.** A volume is a thin LV named by its volume ID
//! (`iol-` + 32 hex digits) carrying the tags of [`tags`], all written by one `lvcreate`, so
//! a crash leaves either a complete volume or nothing. A class with `spares` also keeps
//! deleted filesystem volumes' LVs, formatted, for the next volumes of their size
//! (`spares.rs`): a volume made from one keeps the spare's LV name, and its ID is the hash
//! of its name tag, as for every volume. Every read of LVM is one `lvs` JSON report
//! ([`report`]).
//!
//! The backend keeps an index of its volumes in memory (`index.rs`), so that most calls
//! need no `lvs`; admission in create and expand (`admission.rs`) reads pool usage
//! in-process where it can.
//!
//! Code map: this file holds [`LvmBackend`] and its [`Backend`] impl, which delegates to
//! `setup.rs` (start-up: pool adoption or creation, the sweep), `index.rs` (the volume
//! index), `spares.rs` (spares), `admission.rs` (pool usage and the limits on it), `volumes.rs` (get, list,
//! create, delete, expand, capacity), `snapshots.rs` (snapshots and clones), `health.rs` (pool usage for `iolane status`, volume
//! conditions) and `devices.rs` (block devices of volumes); [`report`] parses LVM's
//! reports, [`tags`] converts volumes to and from LV tags, and `class.rs` holds
//! [`DeviceClass`], the settings of a class in the node config, and their checks.

mod admission;
mod class;
mod devices;
mod health;
mod index;
pub mod report;
mod setup;
mod snapshots;
mod spares;
pub mod tags;
mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{Backend, Created};
use crate::backend::CreatedSnapshot;
use crate::error::{Error, Result};
use crate::os::dm::ThinPoolStatus;
use crate::os::lvm::Report;
use crate::os::{self, Os};
use crate::volume::{Capacity, CreateSpec, Parameters, Snapshot, SnapshotSpec, Volume};
pub use class::{DEFAULT_CLASS, DeviceClass, WipePolicy};
pub(crate) use class::{validate_classes, validate_devices};
use index::Index;
use report::{LV_FIELDS, Lv, parse_lvs};

/// The extent size `vgcreate` gives a new VG: the granularity before any pool is known.
const DEFAULT_EXTENT: u64 = 4 << 20;
/// Prefix of the LV names iolane gives volumes (see `volume_id_for`).
const LV_PREFIX: &str = crate::volume::VOLUME_PREFIX;

/// One device class and what its set-up made of it.
#[derive(Debug)]
struct Class {
    cfg: DeviceClass,
    /// `Ok(extent size)` once the pool is created or adopted; `Err` says why it could not
    /// be (set-up is tried again, see [`LvmBackend::retry_setup`]).
    state: std::sync::RwLock<std::result::Result<u64, String>>,
    /// Serialises admission decisions, so two calls cannot both take the last
    /// provisionable bytes of this pool: a create holds it until its reservation is in the
    /// index (not across `lvcreate`), an expand across its `lvextend`.
    admission: Mutex<()>,
}

impl Class {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, std::result::Result<u64, String>> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_state(&self, state: std::result::Result<u64, String>) {
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    fn is_ready(&self) -> bool {
        self.state().is_ok()
    }

    /// Why the class is not ready, if it is not.
    fn not_ready(&self) -> Option<String> {
        self.state().as_ref().err().cloned()
    }

    /// The extent size of a ready class's VG.
    fn extent(&self) -> Option<u64> {
        self.state().as_ref().ok().copied()
    }
}

/// How soon a device class that is not ready is set up again after a failed try (its
/// device may have been cleared, or an LVM command left hanging by a killed predecessor may
/// have finished); each failure doubles the wait, up to [`SETUP_RETRY_MAX`].
const SETUP_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest wait between two tries of a class that is not ready.
const SETUP_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// When the not-ready classes were last set up, and how long to wait from then.
#[derive(Debug, Clone, Copy)]
struct SetupRetry {
    at: std::time::Instant,
    wait: std::time::Duration,
}

/// Thin volumes in the thin pools of device classes.
#[derive(Debug)]
pub struct LvmBackend {
    os: Os,
    classes: Vec<Class>,
    /// When the not-ready classes were last set up; held while a retry runs.
    last_setup: Mutex<SetupRetry>,
    /// What the backend knows of its volumes without asking LVM (see `index.rs`); shared
    /// with the tasks that prepare spares (`spares.rs`).
    index: Arc<std::sync::Mutex<Index>>,
    /// Where admission reads pool usage in-process.
    pool_status: Arc<dyn ThinPoolReader>,
}

/// Reads a thin pool's status without a spawn: the kernel's device-mapper status on a
/// node ([`Os::thin_pool_status`]), a script in tests.
pub trait ThinPoolReader: Send + Sync + std::fmt::Debug {
    fn thin_pool_status(&self, vg: &str, pool: &str) -> os::Result<ThinPoolStatus>;
}

impl ThinPoolReader for Os {
    fn thin_pool_status(&self, vg: &str, pool: &str) -> os::Result<ThinPoolStatus> {
        Os::thin_pool_status(self, vg, pool)
    }
}

impl LvmBackend {
    fn ready_classes(&self) -> impl Iterator<Item = &Class> {
        self.classes.iter().filter(|c| c.is_ready())
    }

    /// Position of a ready class in `classes` whose pool holds `lv` as a thin volume.
    fn class_index_of(&self, lv: &Lv) -> Option<usize> {
        self.classes
            .iter()
            .position(|c| c.is_ready() && lv.is_thin_in(&c.cfg.vg, &c.cfg.thin_pool))
    }

    /// The ready class whose pool holds `lv` as a thin volume.
    fn class_of(&self, lv: &Lv) -> Option<&Class> {
        self.ready_classes()
            .find(|c| lv.is_thin_in(&c.cfg.vg, &c.cfg.thin_pool))
    }

    /// The class volumes with these parameters live in (the one named, else the first)
    /// and its position in `classes`.
    fn class_for(&self, parameters: &Parameters) -> Result<(usize, &Class)> {
        let i = match &parameters.device_class {
            Some(name) => self
                .classes
                .iter()
                .position(|c| &c.cfg.name == name)
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        self.classes.iter().map(|c| c.cfg.name.as_str()).collect();
                    Parameters::unknown_class(name, &known)
                })?,
            None if self.classes.is_empty() => {
                return Err(Error::NotReady("no device class is configured".to_owned()));
            }
            None => 0,
        };
        let class = &self.classes[i];
        if let Some(reason) = class.not_ready() {
            return Err(Error::NotReady(format!(
                "device class {} is not ready: {reason}",
                class.cfg.name
            )));
        }
        Ok((i, class))
    }

    /// One `lvs` report over `vgs` (nothing to report for no VG).
    async fn lvs(&self, vgs: &[&str]) -> Result<Vec<Lv>> {
        if vgs.is_empty() {
            return Ok(Vec::new());
        }
        let json = self.os.lvm_report(Report::Lv, LV_FIELDS, vgs).await?;
        Ok(parse_lvs(&json)?)
    }

    /// One `lvs` report over the VGs of every ready class.
    async fn report_all(&self) -> Result<Vec<Lv>> {
        let vgs: Vec<&str> = self.ready_classes().map(|c| c.cfg.vg.as_str()).collect();
        self.lvs(&vgs).await
    }
}

#[async_trait::async_trait]
impl Backend for LvmBackend {
    fn kind(&self) -> &'static str {
        "lvm"
    }

    /// Least common multiple of the ready classes' extent sizes (the size of a new VG's
    /// extent while none is ready).
    fn granularity(&self) -> u64 {
        match self
            .ready_classes()
            .filter_map(Class::extent)
            .fold(1, setup::lcm)
        {
            1 => DEFAULT_EXTENT,
            g => g,
        }
    }

    /// Sets up again the classes that are not ready (see [`SETUP_RETRY_FIRST`]), then
    /// says which are not.
    async fn ready(&self) -> Result<(), String> {
        self.retry_setup().await;
        let reasons: Vec<String> = self
            .classes
            .iter()
            .filter_map(|c| {
                c.not_ready()
                    .map(|r| format!("device class {}: {r}", c.cfg.name))
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Volume>> {
        self.get_volume(id).await
    }

    async fn list(&self) -> Result<Vec<Volume>> {
        self.list_volumes().await
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        match &spec.source {
            Some(src) => self.create_clone(spec, src).await,
            None => self.create_volume(spec).await,
        }
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        self.delete_volume(id).await
    }

    async fn capacity(&self, parameters: &Parameters) -> Result<Capacity> {
        self.capacity_left(parameters).await
    }

    async fn expand(&self, id: &str, size: u64) -> Result<u64> {
        self.expand_volume(id, size).await
    }

    async fn set_tier(&self, id: &str, tier: &iops_controller::ResolvedTier) -> Result<Volume> {
        self.set_volume_tier(id, tier).await
    }

    async fn pools(&self) -> Result<Vec<crate::status::PoolStatus>> {
        self.pool_statuses().await
    }

    async fn conditions(&self) -> Result<std::collections::BTreeMap<String, String>> {
        self.volume_conditions().await
    }

    async fn condition(&self, id: &str) -> Result<Option<String>> {
        self.volume_condition(id).await
    }

    async fn attach(&self, id: &str) -> Result<PathBuf> {
        self.attach_volume(id).await
    }

    async fn attached(&self, id: &str) -> Result<Option<PathBuf>> {
        self.attached_device(id).await
    }

    async fn devices(&self, id: &str) -> Result<Vec<PathBuf>> {
        self.volume_devices(id).await
    }

    async fn attach_read_only(&self, id: &str) -> Result<PathBuf> {
        self.attach_volume_read_only(id).await
    }

    async fn release_read_only(&self, id: &str, device: &Path) -> Result<()> {
        self.release_volume_read_only(id, device).await
    }

    async fn detach(&self, _id: &str) -> Result<()> {
        // Thin LVs stay active for their whole life (see `devices.rs`).
        Ok(())
    }

    fn snapshots(&self) -> bool {
        true
    }

    async fn get_snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        self.get_snapshot_lv(id).await
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.list_snapshot_lvs().await
    }

    async fn create_snapshot(&self, spec: &SnapshotSpec) -> Result<CreatedSnapshot> {
        self.create_snapshot_lv(spec).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        self.delete_snapshot_lv(id).await
    }
}

#[cfg(test)]
mod tests;
