//! Storage backends: where a volume's blocks live and how its block device appears.
//!
//! The node and controller services see only [`Backend`]; the loop backend is the embedded
//! default, the lvm backend serves thin LVs from LVM thin pools (device classes).

pub mod loopback;
pub mod lvm;

use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;
use crate::volume::{Capacity, CreateSpec, Parameters, Snapshot, SnapshotSpec, Volume};

/// What [`Backend::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// It created this volume.
    New(Volume),
    /// A volume with the requested ID existed already.
    Existing(Volume),
}

/// What [`Backend::create_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedSnapshot {
    /// It took this snapshot.
    New(Snapshot),
    /// A snapshot with the requested ID existed already.
    Existing(Snapshot),
}

/// The answer of a backend without snapshots to a snapshot call.
fn no_snapshots(kind: &str) -> Error {
    Error::Unsupported(format!(
        "the {kind} backend has no snapshots (use a device class of the lvm backend)"
    ))
}

/// A place that stores thin volumes and exposes each as a block device.
///
/// Calls on one volume are serialised by the caller (the in-flight guard); a backend
/// only has to make calls on different volumes safe together.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Short name for logs and `volume_context` (`loop`, `lvm`).
    fn kind(&self) -> &'static str;
    /// Sizes are multiples of this many bytes.
    fn granularity(&self) -> u64;
    /// `Ok` when the backend can serve requests; otherwise why not.
    async fn ready(&self) -> Result<(), String>;

    /// The volume with this ID, if it exists.
    async fn get(&self, id: &str) -> Result<Option<Volume>>;
    /// Every volume, in no particular order.
    async fn list(&self) -> Result<Vec<Volume>>;
    /// Creates the volume after admission against capacity, unless a volume with this ID
    /// exists already: then that one is returned untouched (no admission) and the caller
    /// decides whether it matches the request.
    async fn create(&self, spec: &CreateSpec) -> Result<Created>;
    /// Removes a volume and everything it owns; returns whether there was anything to
    /// remove (a missing volume is not an error).
    async fn delete(&self, id: &str) -> Result<bool>;
    /// What can still be provisioned for volumes with these parameters (they pick the
    /// device class); an unknown class is INVALID_ARGUMENT.
    async fn capacity(&self, parameters: &Parameters) -> Result<Capacity>;
    /// Grows a volume to at least `size` bytes and returns its new size.
    async fn expand(&self, id: &str, size: u64) -> Result<u64>;
    /// Replaces the volume's stored tier (live re-tiering) atomically: one `lvchange`
    /// swapping its tier tags, or the loop metadata rewritten through its atomic write.
    /// Returns the volume as now stored.
    async fn set_tier(&self, id: &str, tier: &iops_controller::ResolvedTier) -> Result<Volume>;
    /// Usage of every pool volumes are carved from (`iolane status`).
    async fn pools(&self) -> Result<Vec<crate::status::PoolStatus>>;
    /// What is wrong with the volume's storage now, if anything (NodeGetVolumeStats
    /// reports it as an abnormal volume condition), e.g. its thin pool being full.
    async fn condition(&self, id: &str) -> Result<Option<String>>;
    /// [`Backend::condition`] of every volume that has one, by volume ID, read at once
    /// (`iolane status`): none by default.
    async fn conditions(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(std::collections::BTreeMap::new())
    }

    /// The volume's block device, making it appear if needed.
    async fn attach(&self, id: &str) -> Result<PathBuf>;
    /// The volume's writable block device if it is present now.
    async fn attached(&self, id: &str) -> Result<Option<PathBuf>>;
    /// Every block device exposing the volume now, writable and read-only.
    async fn devices(&self, id: &str) -> Result<Vec<PathBuf>>;
    /// A new read-only block device for one read-only raw-block publication.
    async fn attach_read_only(&self, id: &str) -> Result<PathBuf>;
    /// Releases `device` if it is one of the volume's read-only devices; otherwise nothing.
    async fn release_read_only(&self, id: &str, device: &std::path::Path) -> Result<()>;
    /// Makes all of the volume's block devices go away (a no-op where they are permanent).
    async fn detach(&self, id: &str) -> Result<()>;

    /// Whether this backend takes snapshots and makes volumes from snapshots and volumes
    /// (CreateVolume with a `volume_content_source`); the controller reports the
    /// snapshot and clone capabilities only then.
    fn snapshots(&self) -> bool {
        false
    }
    /// The snapshot with this ID, if it exists.
    async fn get_snapshot(&self, _id: &str) -> Result<Option<Snapshot>> {
        Err(no_snapshots(self.kind()))
    }
    /// Every snapshot, in no particular order.
    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        Err(no_snapshots(self.kind()))
    }
    /// Takes the snapshot, unless one with this ID exists already: then that one is
    /// returned untouched and the caller decides whether it matches the request. A
    /// missing source volume is NOT_FOUND.
    async fn create_snapshot(&self, _spec: &SnapshotSpec) -> Result<CreatedSnapshot> {
        Err(no_snapshots(self.kind()))
    }
    /// Removes a snapshot (its blocks discarded); returns whether there was one.
    async fn delete_snapshot(&self, _id: &str) -> Result<bool> {
        Err(no_snapshots(self.kind()))
    }
}
