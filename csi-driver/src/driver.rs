//! The driver's behaviour, in domain terms: what each CSI call does once its request has
//! been validated and converted. The gRPC adapters in `grpc/` call only this.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, Created};
use crate::enforce::pod_uid_from_target;
use crate::error::{Error, Result};
use crate::inflight::InFlight;
use crate::os::{self, FsStats, FsType, MountEntry, Os, Signature};
use crate::tiering::Tiering;
use crate::validate;
use crate::volume::{
    AccessType, Capability, CapacityRange, CreateSpec, Parameters, TOPOLOGY_KEY, Volume,
    volume_id_for,
};
use iops_controller::reconcile::{Outcome as ReconcileOutcome, PassReport, Publication};
use iops_controller::{DeviceNumber, PodUid, keys};

/// Prefix of the ListVolumes tokens this driver issues; anything else is refused.
const TOKEN_PREFIX: &str = "after:";

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
}

/// Figures returned by NodeGetVolumeStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    Filesystem(FsStats),
    Block { total_bytes: u64 },
}

/// NodeGetVolumeStats result: usage plus the volume's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    pub usage: Usage,
    /// `None` when healthy, otherwise what is wrong.
    pub abnormal: Option<String>,
}

/// Static settings of a driver instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: String,
    /// When set, staging and target paths must lie below it (the kubelet root).
    pub path_root: Option<PathBuf>,
    /// Reported in NodeGetInfo; 0 means no limit.
    pub max_volumes_per_node: i64,
}

/// The driver: one backend, the OS, the tiers, and the in-flight guard.
#[derive(Debug, Clone)]
pub struct Driver {
    backend: Arc<dyn Backend>,
    os: Os,
    settings: Arc<Settings>,
    inflight: InFlight,
    tiering: Arc<Tiering>,
}

impl Driver {
    pub fn new(backend: Arc<dyn Backend>, os: Os, settings: Settings, tiering: Tiering) -> Self {
        Driver {
            backend,
            os,
            settings: Arc::new(settings),
            inflight: InFlight::default(),
            tiering: Arc::new(tiering),
        }
    }

    /// The tiers, PVC look-up and io.max enforcement of this driver.
    pub fn tiering(&self) -> &Tiering {
        &self.tiering
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
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
        let mut context = volume.tier.clone();
        context.insert(keys::BACKEND.to_owned(), self.backend.kind().to_owned());
        context
    }

    fn path(&self, field: &str, path: &str) -> Result<PathBuf> {
        validate::abs_path(field, path, self.settings.path_root.as_deref())
    }

    async fn volume(&self, id: &str) -> Result<Volume> {
        self.backend
            .get(id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))
    }

    // ---- controller ---------------------------------------------------------------

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
        let fs_type = single_fs_type(&req.capabilities)?;
        let mounts = req
            .capabilities
            .iter()
            .any(|c| matches!(c.access, AccessType::Mount { .. }));
        let min = if mounts {
            fs_type.unwrap_or(FsType::Ext4).min_size()
        } else {
            self.backend.granularity()
        };
        let size = req.range.pick(self.backend.granularity(), min)?;
        let tier = self
            .tiering
            .resolve(
                &parameters,
                &req.parameters,
                req.mutable_parameters.as_ref(),
            )
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
            tier: tier.to_map(),
        };
        // The backend looks the ID up itself (before admission), so a repeat costs one
        // lookup, not two.
        match self.backend.create(&spec).await? {
            Created::New(volume) => {
                tracing::info!(volume.id = %volume.id, size = volume.capacity_bytes, tier = %tier.name, "created volume");
                Ok(volume)
            }
            Created::Existing(existing) => {
                check_repeat(&spec, &existing)?;
                Ok(existing)
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
            let mounts = self.os.mounts()?;
            if let Some(m) = self.users(&mounts, &devices)?.first() {
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
    pub async fn list_volumes(
        &self,
        max_entries: i32,
        starting_token: &str,
    ) -> Result<(Vec<Volume>, Option<String>)> {
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
        Ok((page, next))
    }

    /// Provisionable bytes; zero for a topology that does not include this node.
    pub async fn capacity(
        &self,
        parameters: &BTreeMap<String, String>,
        topology: Option<&BTreeMap<String, String>>,
    ) -> Result<crate::volume::Capacity> {
        let parameters = Parameters::parse_storage_class(parameters)?;
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

    // ---- node ---------------------------------------------------------------------

    #[tracing::instrument(skip(self))]
    pub async fn node_stage(&self, id: &str, staging: &str, cap: &Capability) -> Result<()> {
        let staging = self.path("staging_target_path", staging)?;
        let _guard = self.inflight.claim(id)?;
        let volume = self.volume(id).await?;
        ensure_dir(&staging)?;
        let dev = self.backend.attach(id).await?;
        let n = self.os.device_number(&dev)?;
        let block_file = staging.join(id);
        let fs_mount = self.os.mount_at(&staging)?;
        let block_mount = self.os.mount_at(&block_file)?;
        if let Some(m) = &fs_mount
            && (m.major, m.minor) != (n.major, n.minor)
        {
            return Err(Error::AlreadyExists(format!(
                "staging_target_path {} already has {} mounted",
                staging.display(),
                m.source
            )));
        }
        match (&cap.access, fs_mount, block_mount) {
            (AccessType::Block, Some(_), _) => Err(Error::AlreadyExists(format!(
                "volume {id} is staged at {} as a filesystem, not as a block device",
                staging.display()
            ))),
            (AccessType::Block, None, Some(_)) => {
                if self.mounted_device(&block_file)? == n {
                    Ok(())
                } else {
                    Err(Error::AlreadyExists(format!(
                        "{} already holds another device",
                        block_file.display()
                    )))
                }
            }
            (AccessType::Block, None, None) => {
                let created = ensure_file(&block_file)?;
                if let Err(e) = self.os.bind_mount(&dev, &block_file, false).await {
                    if created {
                        let _ = std::fs::remove_file(&block_file);
                    }
                    return Err(e.into());
                }
                tracing::info!(volume.id = %id, path = %block_file.display(), "staged block volume");
                Ok(())
            }
            (AccessType::Mount { .. }, None, Some(_)) => Err(Error::AlreadyExists(format!(
                "volume {id} is staged at {} as a block device, not as a filesystem",
                staging.display()
            ))),
            (AccessType::Mount { fs, .. }, Some(m), _) => {
                if let Some(f) = fs
                    && m.fs_type != f.as_str()
                {
                    return Err(Error::AlreadyExists(format!(
                        "volume {id} is staged with {}, the capability asks for {}",
                        m.fs_type,
                        f.as_str()
                    )));
                }
                if m.read_only() != cap.mode.read_only() {
                    return Err(Error::AlreadyExists(format!(
                        "volume {id} is already staged {}",
                        if m.read_only() {
                            "read-only"
                        } else {
                            "read-write"
                        }
                    )));
                }
                Ok(())
            }
            (AccessType::Mount { fs, flags }, None, None) => {
                let fs = self.ensure_filesystem(id, &volume, &dev, *fs).await?;
                let mut options = flags.clone();
                if cap.mode.read_only() {
                    options.push("ro".to_owned());
                }
                self.os.mount_fs(&dev, &staging, fs, &options).await?;
                tracing::info!(volume.id = %id, path = %staging.display(), fs = fs.as_str(), "staged volume");
                Ok(())
            }
        }
    }

    /// The filesystem on `dev`, creating `want` (or the volume's, or ext4) if it is blank.
    async fn ensure_filesystem(
        &self,
        id: &str,
        volume: &Volume,
        dev: &Path,
        want: Option<FsType>,
    ) -> Result<FsType> {
        match self.os.probe(dev).await? {
            Signature::Blank => {
                let fs = want.or(volume.fs_type).unwrap_or(FsType::Ext4);
                self.os.mkfs(dev, fs).await?;
                tracing::info!(volume.id = %id, fs = fs.as_str(), "created filesystem");
                Ok(fs)
            }
            Signature::Filesystem(found) => match FsType::parse(&found) {
                Some(f) if want.is_none_or(|w| w == f) => Ok(f),
                _ => Err(Error::FailedPrecondition(format!(
                    "volume {id} holds a {found} filesystem, the capability asks for {}",
                    want.map_or("ext4 or xfs", FsType::as_str)
                ))),
            },
            Signature::PartitionTable(pt) => Err(Error::FailedPrecondition(format!(
                "volume {id} holds a {pt} partition table; iolane will not format it"
            ))),
        }
    }

    #[tracing::instrument(skip(self))]
    pub async fn node_unstage(&self, id: &str, staging: &str) -> Result<()> {
        let staging = self.path("staging_target_path", staging)?;
        let _guard = self.inflight.claim(id)?;
        let devices = match self.backend.get(id).await? {
            Some(_) => self.backend.devices(id).await?,
            None => Vec::new(),
        };
        let numbers = self.numbers(&devices)?;
        let block_file = staging.join(id);
        let mounts = self.os.mounts()?;
        let mut ours: Vec<PathBuf> = Vec::new();
        for p in [&staging, &block_file] {
            if let Some(m) = mounts.iter().rev().find(|m| &m.mount_point == p) {
                if !numbers.contains(&self.mounted_device(p)?) {
                    return Err(Error::FailedPrecondition(format!(
                        "{} holds {}, not volume {id}",
                        p.display(),
                        m.source
                    )));
                }
                ours.push(p.clone());
            }
        }
        if let Some(user) = self
            .users(&mounts, &devices)?
            .into_iter()
            .find(|u| !ours.contains(&u.mount_point))
        {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is still published at {}",
                user.mount_point.display()
            )));
        }
        for p in &ours {
            self.unmount_all(p).await?;
        }
        if std::fs::symlink_metadata(&block_file).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&block_file)
                .map_err(|e| os::Error::io("remove", &block_file, e))?;
        }
        if !devices.is_empty() {
            self.backend.detach(id).await?;
        }
        tracing::info!(volume.id = %id, "unstaged volume");
        Ok(())
    }

    /// Publishes the staged volume at `target`; with a pod UID (from `volume_context`, or
    /// a kubelet target path), its tier's caps go into that pod's `io.max`.
    #[tracing::instrument(skip(self, cap))]
    pub async fn node_publish(
        &self,
        id: &str,
        staging: &str,
        target: &str,
        cap: &Capability,
        read_only: bool,
        pod: Option<PodUid>,
    ) -> Result<()> {
        let staging = self.path("staging_target_path", staging)?;
        let target = self.path("target_path", target)?;
        let read_only = read_only || cap.mode.read_only();
        let _guard = self.inflight.claim(id)?;
        let volume = self.volume(id).await?;
        let not_staged = || {
            Error::FailedPrecondition(format!(
                "volume {id} is not staged at {}",
                staging.display()
            ))
        };
        refuse_symlink("target_path", &target)?;
        let dev = self.backend.attached(id).await?.ok_or_else(not_staged)?;
        let n = self.os.device_number(&dev)?;
        let (source, staged_at) = match cap.access {
            AccessType::Mount { .. } => (staging.clone(), staging.clone()),
            AccessType::Block => (dev.clone(), staging.join(id)),
        };
        if self.os.mount_at(&staged_at)?.is_none() || self.mounted_device(&staged_at)? != n {
            return Err(not_staged());
        }
        if let Some(m) = self.os.mount_at(&target)? {
            let here = self.mounted_device(&target)?;
            let devices = self.backend.devices(id).await?;
            if !self.numbers(&devices)?.contains(&here) {
                return Err(Error::AlreadyExists(format!(
                    "target_path {} already has {} mounted",
                    target.display(),
                    m.source
                )));
            }
            if m.read_only() != read_only {
                return Err(Error::AlreadyExists(format!(
                    "target_path {} is already published {}",
                    target.display(),
                    if m.read_only() {
                        "read-only"
                    } else {
                        "read-write"
                    }
                )));
            }
            self.enforce(&volume, &target, n, pod);
            return Ok(());
        }
        let created = match cap.access {
            AccessType::Mount { .. } => ensure_dir(&target)?,
            AccessType::Block => ensure_file(&target)?,
        };
        let result = match cap.access {
            // A read-only bind does not stop writes through a device node, so a read-only
            // raw publication gets a device of its own that the kernel itself keeps read-only.
            AccessType::Block if read_only => {
                let ro = self.backend.attach_read_only(id).await?;
                let r = self.os.bind_mount(&ro, &target, true).await;
                if r.is_err() {
                    let _ = self.backend.release_read_only(id, &ro).await;
                }
                r
            }
            _ => self.os.bind_mount(&source, &target, read_only).await,
        };
        if let Err(e) = result {
            if created {
                let _ = remove_path(&target);
            }
            return Err(e.into());
        }
        tracing::info!(volume.id = %id, path = %target.display(), read_only, "published volume");
        self.enforce(&volume, &target, n, pod);
        Ok(())
    }

    /// Records the publication and writes its caps if its pod's cgroup is there; never
    /// fails the publish (see [`crate::enforce`]).
    fn enforce(&self, volume: &Volume, target: &Path, device: DeviceNumber, pod: Option<PodUid>) {
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
        let (outcome, reason) = self.tiering.enforcer().publish(publication.clone());
        log_outcome(&publication, outcome, reason.as_deref());
    }

    #[tracing::instrument(skip(self))]
    pub async fn node_unpublish(&self, id: &str, target: &str) -> Result<()> {
        let target = self.path("target_path", target)?;
        let _guard = self.inflight.claim(id)?;
        let mut device = None;
        let enforcer = self.tiering.enforcer();
        match enforcer.unpublish(&target) {
            Ok(Some(true)) => {
                tracing::info!(volume.id = %id, target = %target.display(), "lifted the io.max caps");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(volume.id = %id, target = %target.display(), error = %e, "could not lift the io.max caps");
            }
        }
        if self.os.mount_at(&target)?.is_some() {
            let md = std::fs::metadata(&target).map_err(|e| os::Error::io("stat", &target, e))?;
            if md.file_type().is_block_device() {
                device = Some(iops_controller::DeviceNumber::from_rdev(md.rdev()));
            }
            self.unmount_all(&target).await?;
        }
        remove_path(&target)?;
        if let Some(num) = device {
            for dev in self.backend.devices(id).await? {
                if self.os.device_number(&dev)? == num {
                    self.backend.release_read_only(id, &dev).await?;
                }
            }
        }
        tracing::info!(volume.id = %id, path = %target.display(), "unpublished volume");
        Ok(())
    }

    /// One pass of the io.max reconciler: forgets publications whose mounts are gone,
    /// adopts kubelet publications it does not know yet (after a restart), and makes every
    /// known publication's line right (`iops_controller::reconcile`). Returns the pass's
    /// report and how many publications it adopted.
    pub async fn reconcile(&self) -> Result<(PassReport, usize)> {
        let mounts = self.os.mounts()?;
        let mounted: std::collections::HashSet<&Path> =
            mounts.iter().map(|m| m.mount_point.as_path()).collect();
        let enforcer = self.tiering.enforcer();
        for p in enforcer.retain(|t| mounted.contains(t)) {
            tracing::info!(volume.id = %p.volume_id, pod = %p.pod_uid, target = %p.target_path.display(), "publication unmounted behind iolane's back: forgotten");
        }
        let unknown: Vec<(PathBuf, PodUid)> = mounts
            .iter()
            .filter(|m| !enforcer.knows(&m.mount_point))
            .filter_map(|m| pod_uid_from_target(&m.mount_point).map(|u| (m.mount_point.clone(), u)))
            .collect();
        let adopted = if unknown.is_empty() {
            0
        } else {
            self.adopt(unknown).await?
        };
        Ok((enforcer.pass(), adopted))
    }

    /// Usage of every pool (metrics, `iolane status`).
    pub async fn pools(&self) -> Result<Vec<crate::status::PoolStatus>> {
        self.backend.pools().await
    }

    /// The snapshot `iolane status` prints: volumes with tier and caps, pools, and each
    /// publication's cgroup, caps in place and IO counters (read now).
    pub async fn status(&self) -> Result<crate::status::NodeStatus> {
        use crate::status::{Counters, PublicationStatus, VolumeStatus};
        let mut volumes = self.backend.list().await?;
        volumes.sort_by(|a, b| a.id.cmp(&b.id));
        let enforcer = self.tiering.enforcer();
        let fs = enforcer.cgroup_fs();
        let mut publications: BTreeMap<String, Vec<PublicationStatus>> = BTreeMap::new();
        enforcer.with_reconciler(|r| {
            for p in r.publications() {
                let io_max = p.cgroup.and_then(|c| {
                    iops_controller::apply::current(fs, c, p.publication.device)
                        .ok()
                        .map(|l| l.to_string())
                });
                let stats = p.cgroup.and_then(|c| {
                    iops_controller::apply::stats(fs, c, p.publication.device)
                        .ok()
                        .flatten()
                        .map(|s| Counters {
                            rios: s.rios,
                            wios: s.wios,
                            rbytes: s.rbytes,
                            wbytes: s.wbytes,
                        })
                });
                publications
                    .entry(p.publication.volume_id.clone())
                    .or_default()
                    .push(PublicationStatus {
                        target: p.publication.target_path.display().to_string(),
                        pod_uid: p.publication.pod_uid.to_string(),
                        device: p.publication.device.to_string(),
                        cgroup: p.cgroup.map(|c| c.display().to_string()),
                        io_max,
                        outcome: format!("{:?}", p.outcome),
                        stats,
                    });
            }
        });
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
                publications: publications.remove(&v.id).unwrap_or_default(),
                id: v.id,
                name: v.name,
                capacity_bytes: v.capacity_bytes,
                device_class: v
                    .parameters
                    .device_class
                    .clone()
                    .or_else(|| default_class.clone()),
                tier,
                caps: limits.to_string(),
                condition,
            });
        }
        Ok(crate::status::NodeStatus {
            node_id: self.settings.node_id.clone(),
            backend: self.backend.kind().to_owned(),
            pools,
            volumes: out,
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
                self.tiering.enforcer().mark_foreign(&target);
                continue;
            };
            let Ok(_guard) = self.inflight.claim(&volume.id) else {
                continue;
            };
            // The volume's own device carries the caps, also for a read-only raw publication
            // that exposes a loop device of its own.
            let device = match self.backend.attached(&volume.id).await? {
                Some(dev) => self.os.device_number(&dev)?,
                None => n,
            };
            tracing::info!(volume.id = %volume.id, pod = %pod, target = %target.display(), "adopted a publication from the mount table");
            self.enforce(volume, &target, device, Some(pod));
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Unmounts every layer mounted at `path`.
    async fn unmount_all(&self, path: &Path) -> Result<()> {
        for _ in 0..8 {
            if self.os.mount_at(path)?.is_none() {
                return Ok(());
            }
            self.os.unmount(path).await?;
        }
        if self.os.mount_at(path)?.is_none() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "{} is still mounted after 8 unmounts",
            path.display()
        )))
    }

    /// The device a mounted path exposes: the node's own number for a bind-mounted device
    /// node, the filesystem's device otherwise.
    fn mounted_device(&self, path: &Path) -> Result<DeviceNumber> {
        let md = std::fs::metadata(path).map_err(|e| os::Error::io("stat", path, e))?;
        Ok(DeviceNumber::from_rdev(
            if md.file_type().is_block_device() {
                md.rdev()
            } else {
                md.dev()
            },
        ))
    }

    fn numbers(&self, devices: &[PathBuf]) -> Result<Vec<DeviceNumber>> {
        devices
            .iter()
            .map(|d| self.os.device_number(d).map_err(Error::from))
            .collect()
    }

    /// Usage of the volume at `path`, which must be where it is staged or published.
    pub async fn node_stats(&self, id: &str, path: &str) -> Result<VolumeStats> {
        self.volume(id).await?;
        let path = self.published_path(id, path)?;
        let devices = self.backend.devices(id).await?;
        let here = self.mounted_device(&path)?;
        let Some(dev) = devices
            .iter()
            .zip(self.numbers(&devices)?)
            .find_map(|(d, n)| (n == here).then_some(d))
        else {
            return Err(self.not_here(id, &path));
        };
        let md = std::fs::metadata(&path).map_err(|e| os::Error::io("stat", &path, e))?;
        // What the backend knows (e.g. a full thin pool) comes first.
        let storage = self.backend.condition(id).await?;
        if md.file_type().is_block_device() {
            return Ok(VolumeStats {
                usage: Usage::Block {
                    total_bytes: self.os.device_size(dev)?,
                },
                abnormal: storage,
            });
        }
        let m = self
            .os
            .mount_at(&path)?
            .ok_or_else(|| self.not_here(id, &path))?;
        let stats = self.os.fs_stats(&path)?;
        let abnormal = storage.or_else(|| {
            (m.super_options.split(',').any(|o| o == "ro") && !m.read_only())
                .then(|| "the filesystem was remounted read-only after errors".to_owned())
        });
        Ok(VolumeStats {
            usage: Usage::Filesystem(stats),
            abnormal,
        })
    }

    /// Grows the block device and, for a mounted volume, its filesystem.
    #[tracing::instrument(skip(self))]
    pub async fn node_expand(
        &self,
        id: &str,
        path: &str,
        range: Option<CapacityRange>,
    ) -> Result<u64> {
        let _guard = self.inflight.claim(id)?;
        let volume = self.volume(id).await?;
        let path = self.published_path(id, path)?;
        let want = range.map_or(volume.capacity_bytes, |r| {
            r.required.max(volume.capacity_bytes)
        });
        let size = self.backend.expand(id, want).await?;
        let dev = self
            .backend
            .attached(id)
            .await?
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {id} is not staged")))?;
        let md = std::fs::metadata(&path).map_err(|e| os::Error::io("stat", &path, e))?;
        if !md.file_type().is_block_device() {
            let m = self
                .os
                .mount_at(&path)?
                .ok_or_else(|| self.not_here(id, &path))?;
            let fs = FsType::parse(&m.fs_type).ok_or_else(|| {
                Error::FailedPrecondition(format!("cannot grow a {} filesystem", m.fs_type))
            })?;
            self.os.grow_fs(&dev, &path, fs).await?;
        }
        tracing::info!(volume.id = %id, size, "expanded volume on node");
        Ok(size)
    }

    /// Checks a stats/expand `volume_path`: malformed is INVALID_ARGUMENT, anything
    /// that is not an existing absolute path is NOT_FOUND.
    fn published_path(&self, id: &str, path: &str) -> Result<PathBuf> {
        if path.is_empty() {
            return Err(Error::invalid("volume_path", "must not be empty"));
        }
        if !path.starts_with('/') {
            return Err(self.not_here(id, Path::new(path)));
        }
        let p = self.path("volume_path", path)?;
        if !p.exists() {
            return Err(Error::PathNotFound {
                field: "volume_path",
                path: p.display().to_string(),
            });
        }
        Ok(p)
    }

    fn not_here(&self, id: &str, path: &Path) -> Error {
        Error::PathNotFound {
            field: "volume_path",
            path: format!(
                "{} (volume {id} is not staged or published there)",
                path.display()
            ),
        }
    }

    /// Mounts that use any of `devices`: filesystems on them and binds of their nodes.
    fn users<'m>(
        &self,
        mounts: &'m [MountEntry],
        devices: &[PathBuf],
    ) -> Result<Vec<&'m MountEntry>> {
        let numbers = self.numbers(devices)?;
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

fn log_outcome(p: &Publication, outcome: ReconcileOutcome, reason: Option<&str>) {
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

fn refuse_symlink(field: &str, path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => Err(Error::invalid(
            field,
            format!("{} is a symbolic link", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Creates a directory unless it exists; returns whether it created it.
fn ensure_dir(path: &Path) -> Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(os::Error::io("create directory", path, e).into()),
    }
}

/// Creates an empty file unless one exists; returns whether it created it.
fn ensure_file(path: &Path) -> Result<bool> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_file() => Ok(false),
        Err(e) => Err(os::Error::io("create file", path, e).into()),
    }
}

/// Removes what NodePublish created at `path` (an empty directory or a file), if anything.
fn remove_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            std::fs::remove_dir(path).map_err(|e| os::Error::io("remove directory", path, e).into())
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| os::Error::io("remove", path, e).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(os::Error::io("stat", path, e).into()),
    }
}
