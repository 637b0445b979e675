//! The node side of the driver: NodeStageVolume, NodeUnstageVolume, NodePublishVolume,
//! NodeUnpublishVolume, NodeGetVolumeStats and NodeExpandVolume.

use std::path::{Path, PathBuf};

use super::{Driver, refuse_symlink};
use crate::error::{Error, Result};
use crate::os::files::{ensure_dir, ensure_file, remove_path};
use crate::os::{self, FsStats, FsType, Signature};
use crate::volume::{AccessType, Capability, CapacityRange, Volume};
use iops_controller::{DeviceNumber, PodUid};

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

impl Driver {
    #[tracing::instrument(skip(self))]
    pub async fn node_stage(&self, id: &str, staging: &str, cap: &Capability) -> Result<()> {
        let staging = self.path("staging_target_path", staging)?;
        let _guard = self.inflight.claim(id)?;
        let volume = self.volume(id).await?;
        ensure_dir(&staging)?;
        let dev = self.backend.attach(id).await?;
        let n = self.mounter.device_number(&dev)?;
        let _held = self.hold_device(id, &dev, n).await?;
        let block_file = staging.join(id);
        let fs_mount = self.mounter.mount_at(&staging)?;
        let block_mount = self.mounter.mount_at(&block_file)?;
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
                if let Err(e) = self.mounter.bind_mount(&dev, &block_file, false).await {
                    if created {
                        let _ = remove_path(&block_file);
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
                // A clone's xfs carries its source's UUID, which xfs refuses to mount
                // twice on one node.
                if volume.source.is_some() && fs == FsType::Xfs {
                    options.push("nouuid".to_owned());
                }
                self.mounter.mount_fs(&dev, &staging, fs, &options).await?;
                // A clone may be larger than its source: its filesystem grows to the
                // device (a no-op once it has).
                if volume.source.is_some() && !cap.mode.read_only() {
                    self.os.grow_fs(&dev, &staging, fs).await?;
                }
                tracing::info!(volume.id = %id, path = %staging.display(), fs = fs.as_str(), "staged volume");
                Ok(())
            }
        }
    }

    /// Opens the volume's device `dev` (number `n`), then checks that it is still the
    /// volume's; the file is held to the end of the stage.
    ///
    /// A loop device is unbound only at its last close, so once it is held and checked,
    /// the device probed, formatted and mounted is this volume's. Between `attach` and
    /// here a loop device of the volume whose deferred detach was finishing could be
    /// unbound: probed unbound it reads as blank, and mkfs then failed on its size of zero
    /// (CI's cancellation campaign, seed 1796477841351680865). The call then answers
    /// ABORTED and its retry attaches again.
    async fn hold_device(&self, id: &str, dev: &Path, n: DeviceNumber) -> Result<std::fs::File> {
        let path = dev.to_owned();
        let held = os::blocking(move || {
            std::fs::File::open(&path).map_err(|e| os::Error::io("open", &path, e))
        })
        .await?;
        let now = match self.backend.attached(id).await? {
            Some(d) => Some(self.mounter.device_number(&d)?),
            None => None,
        };
        if now != Some(n) {
            return Err(Error::Raced(format!(
                "device {} of volume {id} was released during the call",
                dev.display()
            )));
        }
        Ok(held)
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
        let numbers = self.device_numbers(&devices)?;
        let block_file = staging.join(id);
        let mounts = self.mounter.mounts()?;
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
            .mounts_using(&mounts, &devices)?
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
        os::files::remove_regular_file(&block_file)?;
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
        let n = self.mounter.device_number(&dev)?;
        let (source, staged_at) = match cap.access {
            AccessType::Mount { .. } => (staging.clone(), staging.clone()),
            AccessType::Block => (dev.clone(), staging.join(id)),
        };
        // One read of the mount table for both paths.
        let mut found = self.mounter.mounts_at(&[&staged_at, &target])?.into_iter();
        let (staged, published) = (found.next().flatten(), found.next().flatten());
        if staged.is_none() || self.mounted_device(&staged_at)? != n {
            return Err(not_staged());
        }
        if let Some(m) = published {
            let here = self.mounted_device(&target)?;
            let devices = self.backend.devices(id).await?;
            if !self.device_numbers(&devices)?.contains(&here) {
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
            self.enforce(&volume, &target, n, pod).await;
            return Ok(());
        }
        // mkdir and creat wait on the filesystem's journal: off the async workers.
        let (at, access) = (target.clone(), cap.access.clone());
        let created = os::blocking(move || match access {
            AccessType::Mount { .. } => ensure_dir(&at),
            AccessType::Block => ensure_file(&at),
        })
        .await?;
        let result = match cap.access {
            // A read-only bind does not stop writes through a device node, so a read-only
            // raw publication gets a device of its own that the kernel itself keeps read-only.
            AccessType::Block if read_only => {
                let ro = self.backend.attach_read_only(id).await?;
                let r = self.mounter.bind_mount(&ro, &target, true).await;
                if let Err(bind) = &r
                    && let Err(release) = self.backend.release_read_only(id, &ro).await
                {
                    // The device would be left attached with nothing to find it by: say
                    // so, so the CO's retry (which unpublishes first) is not silent.
                    tracing::warn!(volume.id = %id, device = %ro.display(), error = %release, "could not release the read-only device after a failed bind");
                    return Err(Error::FailedPrecondition(format!(
                        "binding read-only device {} for volume {id} failed ({bind}) and it could not be released: {release}",
                        ro.display()
                    )));
                }
                r
            }
            _ => self.mounter.bind_mount(&source, &target, read_only).await,
        };
        if let Err(e) = result {
            if created {
                let _ = remove_path(&target);
            }
            return Err(e.into());
        }
        tracing::info!(volume.id = %id, path = %target.display(), read_only, "published volume");
        self.enforce(&volume, &target, n, pod).await;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    pub async fn node_unpublish(&self, id: &str, target: &str) -> Result<()> {
        let target = self.path("target_path", target)?;
        let _guard = self.inflight.claim(id)?;
        let mut device = None;
        if self.mounter.mount_at(&target)?.is_some() {
            device = os::files::block_device_at(&target)?;
            self.unmount_all(&target).await?;
        }
        // Only now that the pod no longer reaches the volume through `target`: lifted
        // before and a failed unmount would leave it published without caps.
        self.lift_caps(id, &target).await?;
        let at = target.clone();
        os::blocking(move || remove_path(&at)).await?;
        if let Some(num) = device {
            for dev in self.backend.devices(id).await? {
                if self.mounter.device_number(&dev)? == num {
                    self.backend.release_read_only(id, &dev).await?;
                }
            }
        }
        tracing::info!(volume.id = %id, path = %target.display(), "unpublished volume");
        Ok(())
    }

    /// Usage of the volume at `path`, which must be where it is staged or published.
    pub async fn node_stats(&self, id: &str, path: &str) -> Result<VolumeStats> {
        // A malformed path is INVALID_ARGUMENT whether or not the volume exists.
        let path = self.published_path(id, path)?;
        self.volume(id).await?;
        let devices = self.backend.devices(id).await?;
        let here = self.mounted_device(&path)?;
        let Some(dev) = devices
            .iter()
            .zip(self.device_numbers(&devices)?)
            .find_map(|(d, n)| (n == here).then_some(d))
        else {
            return Err(self.not_staged_or_published(id, &path));
        };
        let is_block = os::files::block_device_at(&path)?.is_some();
        // What the backend knows (e.g. a full thin pool) comes first.
        let storage = self.backend.condition(id).await?;
        if is_block {
            return Ok(VolumeStats {
                usage: Usage::Block {
                    total_bytes: self.os.device_size(dev)?,
                },
                abnormal: storage,
            });
        }
        let m = self
            .mounter
            .mount_at(&path)?
            .ok_or_else(|| self.not_staged_or_published(id, &path))?;
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
        // A malformed path is INVALID_ARGUMENT whether or not the volume exists.
        let path = self.published_path(id, path)?;
        let volume = self.volume(id).await?;
        let want = range.map_or(volume.capacity_bytes, |r| {
            r.required.max(volume.capacity_bytes)
        });
        let size = self.backend.expand(id, want).await?;
        let dev = self
            .backend
            .attached(id)
            .await?
            .ok_or_else(|| Error::FailedPrecondition(format!("volume {id} is not staged")))?;
        if os::files::block_device_at(&path)?.is_none() {
            let m = self
                .mounter
                .mount_at(&path)?
                .ok_or_else(|| self.not_staged_or_published(id, &path))?;
            let fs = FsType::parse(&m.fs_type).ok_or_else(|| {
                Error::FailedPrecondition(format!("cannot grow a {} filesystem", m.fs_type))
            })?;
            self.os.grow_fs(&dev, &path, fs).await?;
        }
        // Per-GiB caps scale with the size: every publication gets the caps it has now.
        if let Some(grown) = self.backend.get(id).await? {
            let publications = self.refresh_caps(&grown).await;
            if publications > 0 {
                tracing::info!(volume.id = %id, publications, "caps re-computed for the new size");
            }
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
            return Err(self.not_staged_or_published(id, Path::new(path)));
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

    /// NOT_FOUND for a `volume_path` where the volume is neither staged nor published.
    fn not_staged_or_published(&self, id: &str, path: &Path) -> Error {
        Error::PathNotFound {
            field: "volume_path",
            path: format!(
                "{} (volume {id} is not staged or published there)",
                path.display()
            ),
        }
    }
}
