//! The controller side of the driver: CreateVolume, DeleteVolume, ValidateVolumeCapabilities,
//! ListVolumes, GetCapacity and ControllerExpandVolume (snapshots: `snapshots.rs`).

use std::collections::BTreeMap;

use super::Driver;
use crate::backend::Created;
use crate::error::{Error, Result};
use crate::os::FsType;
use crate::validate;
use crate::volume::{
    AccessType, Capability, CapacityRange, ContentSource, CreateSpec, Parameters, Volume,
    volume_id_for,
};

/// Prefix of the ListVolumes tokens this driver issues; anything else is refused.
const TOKEN_PREFIX: &str = "after:";

/// One ListVolumes page.
#[derive(Debug, Clone)]
pub struct VolumePage {
    /// The volumes, in ID order.
    pub volumes: Vec<Volume>,
    /// The token that continues after the last of them; `None` on the last page.
    pub next_token: Option<String>,
}

/// A validated CreateVolume request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub range: CapacityRange,
    pub capabilities: Vec<Capability>,
    pub parameters: BTreeMap<String, String>,
    /// CSI `mutable_parameters` (a VolumeAttributesClass's parameters), when given.
    pub mutable_parameters: Option<BTreeMap<String, String>>,
    /// Topology segments the volume must be reachable from (empty = anywhere).
    pub requisite: Vec<BTreeMap<String, String>>,
    /// CSI `volume_content_source`: make the volume from a snapshot or another volume.
    pub source: Option<ContentSource>,
}

impl Driver {
    #[tracing::instrument(skip_all, fields(volume.name = %req.name))]
    pub async fn create_volume(&self, req: CreateRequest) -> Result<Volume> {
        validate::volume_name(&req.name)?;
        let parameters = Parameters::parse(&req.parameters)?;
        if !req.requisite.is_empty() {
            let here = self.topology();
            let reachable = req
                .requisite
                .iter()
                .any(|seg| seg.iter().all(|(k, v)| here.get(k) == Some(v)));
            if !reachable {
                return Err(Error::ResourceExhausted(format!(
                    "accessibility_requirements.requisite does not include node {}: iolane volumes live on the node that creates them",
                    self.settings.node_id
                )));
            }
        }
        let mut fs_type = single_fs_type(&req.capabilities)?;
        let mounts = req
            .capabilities
            .iter()
            .any(|c| matches!(c.access, AccessType::Mount { .. }));
        let mut min = if mounts {
            fs_type.unwrap_or(FsType::Ext4).min_size()
        } else {
            self.backend.granularity()
        };
        if let Some(src) = &req.source {
            let (size, fs) = self.content_source(src).await?;
            if let (Some(want), Some(have)) = (fs_type, fs)
                && want != have
            {
                return Err(Error::invalid(
                    "volume_capabilities",
                    format!(
                        "ask for {}, but {} {} holds {}",
                        want.as_str(),
                        src.field(),
                        src.id(),
                        have.as_str()
                    ),
                ));
            }
            fs_type = fs_type.or(fs);
            // A clone holds all of its source, and may be larger (it grows at NodeStage).
            min = min.max(size);
        }
        let size = req.range.pick(self.backend.granularity(), min)?;
        let tier = self
            .tiering
            .resolve(&parameters, req.mutable_parameters.as_ref())
            .await?;
        let id = volume_id_for(&req.name);
        let _guard = self.inflight.claim(&id)?;
        let spec = CreateSpec {
            id,
            name: req.name,
            range: req.range,
            size,
            fs_type,
            parameters,
            tier: Some(tier),
            source: req.source,
        };
        // The backend looks the ID up itself (before admission), so a repeat costs one
        // lookup, not two.
        match self.backend.create(&spec).await? {
            Created::New(volume) => {
                tracing::info!(volume.id = %volume.id, size = volume.capacity_bytes, tier = volume.tier.as_ref().map_or("", |t| t.name.as_str()), "created volume");
                Ok(volume)
            }
            Created::Existing(existing) => {
                check_repeat(&spec, &existing)?;
                Ok(existing)
            }
        }
    }

    /// The size and filesystem of what a clone is made from; NOT_FOUND when it is missing.
    async fn content_source(&self, src: &ContentSource) -> Result<(u64, Option<FsType>)> {
        if !self.backend.snapshots() {
            return Err(Error::invalid(
                "volume_content_source",
                format!(
                    "the {} backend makes no volumes from snapshots or volumes (use a device class of the lvm backend)",
                    self.backend.kind()
                ),
            ));
        }
        validate::volume_id(src.field(), src.id())?;
        match src {
            ContentSource::Snapshot(id) => {
                let s = self
                    .backend
                    .get_snapshot(id)
                    .await?
                    .ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
                Ok((s.size_bytes, s.fs_type))
            }
            ContentSource::Volume(id) => {
                let v = self.volume(id).await?;
                Ok((v.capacity_bytes, v.fs_type))
            }
        }
    }

    #[tracing::instrument(skip(self))]
    pub async fn delete_volume(&self, id: &str) -> Result<()> {
        validate::volume_id("volume_id", id)?;
        let _guard = self.inflight.claim(id)?;
        // No lookup first: a missing volume has no devices, and the backend's delete finds
        // the volume itself and says whether there was one.
        let devices = self.backend.devices(id).await?;
        if !devices.is_empty() {
            let mounts = self.mounter.mounts()?;
            if let Some(m) = self.mounts_using(&mounts, &devices)?.first() {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is still staged or published at {}",
                    m.mount_point.display()
                )));
            }
        }
        if self.backend.delete(id).await? {
            tracing::info!(volume.id = %id, "deleted volume");
        } else {
            tracing::debug!(volume.id = %id, "no such volume: nothing to delete");
        }
        Ok(())
    }

    /// Whether the volume exists and every capability is one this driver can honour.
    pub async fn validate_capabilities(&self, id: &str) -> Result<Volume> {
        validate::volume_id("volume_id", id)?;
        self.volume(id).await
    }

    /// One page of volumes in ID order, and the token for the next page.
    pub async fn list_volumes(&self, max_entries: i32, starting_token: &str) -> Result<VolumePage> {
        let max = usize::try_from(max_entries)
            .map_err(|_| Error::invalid("max_entries", "must not be negative"))?;
        let after = if starting_token.is_empty() {
            None
        } else {
            let id = starting_token
                .strip_prefix(TOKEN_PREFIX)
                .filter(|id| validate::volume_id("starting_token", id).is_ok())
                .ok_or_else(|| Error::BadToken(starting_token.to_owned()))?;
            Some(id.to_owned())
        };
        let mut all = self.backend.list().await?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        // Keyed on the last ID returned, so deleting volumes between pages skips nothing
        // and never repeats an entry.
        let mut page: Vec<Volume> = all
            .into_iter()
            .filter(|v| after.as_ref().is_none_or(|a| v.id.as_str() > a.as_str()))
            .collect();
        let mut next = None;
        if max > 0 && page.len() > max {
            page.truncate(max);
            next = page.last().map(|v| format!("{TOKEN_PREFIX}{}", v.id));
        }
        Ok(VolumePage {
            volumes: page,
            next_token: next,
        })
    }

    /// Provisionable bytes; zero for a topology that does not include this node.
    pub async fn capacity(
        &self,
        parameters: &BTreeMap<String, String>,
        topology: Option<&BTreeMap<String, String>>,
    ) -> Result<crate::volume::Capacity> {
        let parameters = Parameters::parse_storage_class(parameters)?;
        // A class whose CreateVolume is refused (an unknown tier, a malformed cap) has no
        // capacity to report: refused the same way, naming the key.
        self.tiering.check_class(&parameters.tier)?;
        if let Some(seg) = topology {
            let here = self.topology();
            if !seg.iter().all(|(k, v)| here.get(k) == Some(v)) {
                return Ok(crate::volume::Capacity {
                    available: 0,
                    max_volume_size: 0,
                });
            }
        }
        self.backend.capacity(&parameters).await
    }

    /// Grows the volume's storage; the filesystem grows in [`Driver::node_expand`].
    #[tracing::instrument(skip(self))]
    pub async fn controller_expand(&self, id: &str, range: CapacityRange) -> Result<u64> {
        validate::volume_id("volume_id", id)?;
        if range.required == 0 && range.limit == 0 {
            return Err(Error::invalid("capacity_range", "must be given"));
        }
        let _guard = self.inflight.claim(id)?;
        let volume = self.volume(id).await?;
        if range.admits(volume.capacity_bytes) && volume.capacity_bytes >= range.required {
            return Ok(volume.capacity_bytes);
        }
        if range.limit != 0 && range.limit < volume.capacity_bytes {
            return Err(Error::OutOfRange(format!(
                "capacity_range.limit_bytes {} is below the volume's size {}: volumes never shrink",
                range.limit, volume.capacity_bytes
            )));
        }
        let size = range.pick(self.backend.granularity(), volume.capacity_bytes)?;
        let size = self.backend.expand(id, size).await?;
        tracing::info!(volume.id = %id, size, "expanded volume");
        Ok(size)
    }
}

/// Whether an existing volume satisfies a repeated CreateVolume; ALREADY_EXISTS naming
/// what differs otherwise.
fn check_repeat(spec: &CreateSpec, existing: &Volume) -> Result<()> {
    if existing.name != spec.name {
        return Err(Error::AlreadyExists(format!(
            "volume id {} is taken by another name (hash collision)",
            spec.id
        )));
    }
    if !spec.range.admits(existing.capacity_bytes) {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with {} bytes, outside the requested capacity_range",
            spec.name, existing.capacity_bytes
        )));
    }
    if existing.parameters != spec.parameters {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with other parameters",
            spec.name
        )));
    }
    if existing.source != spec.source {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with another volume_content_source",
            spec.name
        )));
    }
    if spec.fs_type.is_some() && existing.fs_type.is_some() && existing.fs_type != spec.fs_type {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with another filesystem",
            spec.name
        )));
    }
    Ok(())
}

/// The one filesystem the mount capabilities agree on, if they name one.
fn single_fs_type(caps: &[Capability]) -> Result<Option<FsType>> {
    let mut chosen: Option<FsType> = None;
    for c in caps {
        if let AccessType::Mount { fs: Some(f), .. } = c.access {
            if chosen.is_some_and(|x| x != f) {
                return Err(Error::invalid(
                    "volume_capabilities",
                    "mount capabilities name different filesystems",
                ));
            }
            chosen = Some(f);
        }
    }
    Ok(chosen)
}
