//! The loop backend: one sparse file per volume, attached to a loop device when staged.
//!
//! Layout under `<state-dir>/loop/`: `<id>.img` (the sparse file) and `<id>.json` (its
//! metadata, written atomically). The metadata file is the volume: an image without one
//! is a creation that crashed before it returned and is removed at start-up.
//!
//! File work that can wait on the disk (reading the metadata files, `set_len` and the
//! fsyncs of a create or an expansion, removing files) runs on the blocking pool
//! ([`LoopBackend::blocking`]), never on an async worker. A create or an expansion holds
//! the admission lock until its blocking part is done, also when its caller gives up.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Backend, Created};
use crate::error::{Error, Result};
use crate::os::{self, Os};
use crate::volume::{Capacity, CreateSpec, Parameters, Volume};

/// Sizes are whole MiB.
pub const GRANULARITY: u64 = 1 << 20;
const META_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    version: u32,
    #[serde(flatten)]
    volume: Volume,
}

/// Loop-device backed volumes in a directory.
#[derive(Debug)]
pub struct LoopBackend {
    store: Store,
    /// Serialises admission so two creates cannot both take the last free bytes.
    admission: Arc<Mutex<()>>,
}

/// The directory and what reads and writes it: the synchronous part of the backend,
/// cloned into the blocking tasks.
#[derive(Debug, Clone)]
struct Store {
    os: Os,
    dir: PathBuf,
    overprovision_ratio: f64,
}

impl LoopBackend {
    /// Opens (creating if needed) the backend in `dir`, removing what crashed creations
    /// and deletions left behind.
    pub fn open(os: Os, dir: PathBuf, overprovision_ratio: f64) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| os::Error::io("create directory", &dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| os::Error::io("chmod", &dir, e))?;
        let backend = LoopBackend {
            store: Store {
                os,
                dir,
                overprovision_ratio,
            },
            admission: Arc::new(Mutex::new(())),
        };
        backend.store.sweep()?;
        Ok(backend)
    }

    /// Runs `f` on the store on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| os::Error::io("run", &self.store.dir, std::io::Error::other(e)))?
    }

    /// The admission lock, owned, to be moved into the blocking task it guards.
    async fn admit(&self) -> OwnedMutexGuard<()> {
        Arc::clone(&self.admission).lock_owned().await
    }
}

impl Store {
    fn image(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Removes temporary files and images that have no metadata (and no loop device).
    fn sweep(&self) -> Result<()> {
        for entry in read_dir(&self.dir)? {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                remove_file(&path)?;
                tracing::info!(path = %path.display(), "removed an interrupted metadata write");
            } else if let Some(id) = name.strip_suffix(".img")
                && !self.meta_path(id).exists()
                && self.os.loops_for_file(&path)?.is_empty()
            {
                remove_file(&path)?;
                tracing::info!(path = %path.display(), "removed the image of an interrupted create or delete");
            }
        }
        Ok(())
    }

    fn read_meta(&self, id: &str) -> Result<Option<Volume>> {
        let path = self.meta_path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(os::Error::io("read", &path, e).into()),
        };
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| Error::Metadata {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if meta.version != META_VERSION || meta.volume.id != id {
            return Err(Error::Metadata {
                path: path.display().to_string(),
                reason: format!(
                    "version {} for id {} is not what this driver writes",
                    meta.version, meta.volume.id
                ),
            });
        }
        Ok(Some(meta.volume))
    }

    /// Writes metadata with write-to-temp, fsync, rename, fsync-directory.
    fn write_meta(&self, volume: &Volume) -> Result<()> {
        let path = self.meta_path(&volume.id);
        let tmp = self.dir.join(format!("{}.json.tmp", volume.id));
        let body = serde_json::to_vec_pretty(&Meta {
            version: META_VERSION,
            volume: volume.clone(),
        })
        .map_err(|e| Error::Metadata {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| os::Error::io("create", &tmp, e))?;
        f.write_all(&body)
            .map_err(|e| os::Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| os::Error::io("fsync", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| os::Error::io("rename", &tmp, e))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| os::Error::io("fsync", &self.dir, e).into())
    }

    fn all(&self) -> Result<Vec<Volume>> {
        let mut out = Vec::new();
        for entry in read_dir(&self.dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(v) = self.read_meta(id)?
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn compute_capacity(&self, volumes: &[Volume]) -> Result<Capacity> {
        let stats = self.os.fs_stats(&self.dir)?;
        let mut allocated = 0u64;
        let mut virtual_total = 0u64;
        for v in volumes {
            virtual_total += v.capacity_bytes;
            if let Ok(m) = fs::metadata(self.image(&v.id)) {
                allocated += m.blocks() * 512;
            }
        }
        // What the volumes could hold if every byte were written: the space they already
        // use plus what is free, times the ratio.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let provisionable =
            ((stats.available_bytes + allocated) as f64 * self.overprovision_ratio) as u64;
        let available = provisionable.saturating_sub(virtual_total) / GRANULARITY * GRANULARITY;
        Ok(Capacity {
            available,
            max_volume_size: available,
        })
    }

    /// The loop backend has no device classes: naming one is a mistake, not a default.
    fn refuse_device_class(parameters: &Parameters) -> Result<()> {
        match &parameters.device_class {
            Some(c) => Err(Parameters::unknown_class(c, &[])),
            None => Ok(()),
        }
    }

    fn exhausted(&self, want: u64, cap: Capacity) -> Error {
        Error::ResourceExhausted(format!(
            "loop backend in {}: {want} bytes requested but only {} bytes can be provisioned under overprovision ratio {}",
            self.dir.display(),
            cap.available,
            self.overprovision_ratio
        ))
    }

    /// CreateVolume's file work, under the admission lock: an existing volume, or a new
    /// sparse image and its metadata when the ratio admits it.
    fn create(&self, spec: &CreateSpec) -> Result<Created> {
        // An existing volume is returned before anything else is checked: the driver
        // compares it with the request (a device class in the request makes it differ).
        if let Some(existing) = self.read_meta(&spec.id)? {
            return Ok(Created::Existing(existing));
        }
        Self::refuse_device_class(&spec.parameters)?;
        if spec.source.is_some() {
            return Err(Error::invalid(
                "volume_content_source",
                "the loop backend makes no volumes from snapshots or volumes (use a device class of the lvm backend)",
            ));
        }
        let volumes = self.all()?;
        let cap = self.compute_capacity(&volumes)?;
        if spec.size > cap.available {
            return Err(self.exhausted(spec.size, cap));
        }
        let image = self.image(&spec.id);
        // An image without metadata can only be a crashed create of this same volume:
        // nothing was returned for it, so start it over.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&image)
            .map_err(|e| os::Error::io("create", &image, e))?;
        f.set_len(spec.size)
            .map_err(|e| os::Error::io("truncate", &image, e))?;
        f.sync_all()
            .map_err(|e| os::Error::io("fsync", &image, e))?;
        let volume = Volume {
            id: spec.id.clone(),
            name: spec.name.clone(),
            capacity_bytes: spec.size,
            fs_type: spec.fs_type,
            parameters: spec.parameters.clone(),
            tier: spec.tier.clone(),
            source: None,
        };
        if let Err(e) = self.write_meta(&volume) {
            if let Err(undo) = fs::remove_file(&image) {
                // Start-up removes an image without metadata: say so, do not fail twice.
                tracing::warn!(path = %image.display(), error = %undo, "could not remove the image of a failed create; start-up removes it");
            }
            return Err(e);
        }
        tracing::debug!(volume.id = %spec.id, path = %image.display(), size = spec.size, "created sparse image");
        Ok(Created::New(volume))
    }

    /// DeleteVolume's file work, once no loop device holds the image. Returns whether
    /// there was anything to remove.
    fn remove(&self, id: &str) -> Result<bool> {
        let image = self.image(id);
        // Metadata first: once it is gone the volume is gone, and start-up removes an
        // image left without metadata.
        let had_meta = remove_file_if_exists(&self.meta_path(id))?;
        self.sync_dir()?;
        let had_image = remove_file_if_exists(&image)?;
        tracing::debug!(volume.id = %id, "deleted image and metadata");
        Ok(had_meta || had_image)
    }

    /// The one pool: the state directory's filesystem.
    fn pools(&self) -> Result<Vec<crate::status::PoolStatus>> {
        let stats = self.os.fs_stats(&self.dir)?;
        let provisioned = self.all()?.iter().map(|v| v.capacity_bytes).sum();
        #[allow(clippy::cast_precision_loss)]
        let data_percent = if stats.total_bytes == 0 {
            0.0
        } else {
            stats.used_bytes as f64 * 100.0 / stats.total_bytes as f64
        };
        Ok(vec![crate::status::PoolStatus {
            name: "loop".to_owned(),
            location: self.dir.display().to_string(),
            size_bytes: stats.total_bytes,
            data_percent,
            metadata_percent: None,
            provisioned_bytes: provisioned,
            problem: None,
        }])
    }

    /// Grows the image and its metadata to `size` when it is smaller, under the
    /// admission lock; returns the volume as it is now.
    fn grow(&self, id: &str, size: u64) -> Result<Volume> {
        let mut volume = self
            .read_meta(id)?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?;
        if size > volume.capacity_bytes {
            let grow = size - volume.capacity_bytes;
            let cap = self.compute_capacity(&self.all()?)?;
            if grow > cap.available {
                return Err(self.exhausted(grow, cap));
            }
            let image = self.image(id);
            let f = OpenOptions::new()
                .write(true)
                .open(&image)
                .map_err(|e| os::Error::io("open", &image, e))?;
            f.set_len(size)
                .map_err(|e| os::Error::io("truncate", &image, e))?;
            f.sync_all()
                .map_err(|e| os::Error::io("fsync", &image, e))?;
            volume.capacity_bytes = size;
            self.write_meta(&volume)?;
        }
        Ok(volume)
    }
}

#[async_trait::async_trait]
impl Backend for LoopBackend {
    fn kind(&self) -> &'static str {
        "loop"
    }

    fn granularity(&self) -> u64 {
        GRANULARITY
    }

    async fn ready(&self) -> Result<(), String> {
        let control = self.store.os.roots().dev.join("loop-control");
        if !control.exists() {
            return Err(format!(
                "{} is missing: the loop driver is not loaded",
                control.display()
            ));
        }
        let md = fs::metadata(&self.store.dir)
            .map_err(|e| format!("state directory {}: {e}", self.store.dir.display()))?;
        if !md.is_dir() {
            return Err(format!(
                "state directory {} is not a directory",
                self.store.dir.display()
            ));
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Volume>> {
        let id = id.to_owned();
        self.blocking(move |s| s.read_meta(&id)).await
    }

    async fn list(&self) -> Result<Vec<Volume>> {
        self.blocking(Store::all).await
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        let admit = self.admit().await;
        let spec = spec.clone();
        self.blocking(move |s| {
            let created = s.create(&spec);
            drop(admit);
            created
        })
        .await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        let image = self.store.image(id);
        for dev in self.store.os.loops_for_file(&image)? {
            self.store.os.loop_detach(&dev.path, &image).await?;
        }
        let id = id.to_owned();
        self.blocking(move |s| s.remove(&id)).await
    }

    async fn capacity(&self, parameters: &Parameters) -> Result<Capacity> {
        Store::refuse_device_class(parameters)?;
        self.blocking(|s| s.compute_capacity(&s.all()?)).await
    }

    async fn pools(&self) -> Result<Vec<crate::status::PoolStatus>> {
        self.blocking(Store::pools).await
    }

    async fn expand(&self, id: &str, size: u64) -> Result<u64> {
        let admit = self.admit().await;
        let owned = id.to_owned();
        // The lock comes back from the blocking part: held until the devices know the size.
        let (volume, _admit) = self
            .blocking(move |s| Ok((s.grow(&owned, size)?, admit)))
            .await?;
        let image = self.store.image(id);
        // Attached devices learn the size now, whichever call grew the file.
        for dev in self.store.os.loops_for_file(&image)? {
            if dev.detaching {
                continue;
            }
            if self.store.os.device_size(&dev.path)? < volume.capacity_bytes {
                self.store.os.loop_refresh_size(&dev.path).await?;
            }
        }
        Ok(volume.capacity_bytes)
    }

    async fn set_tier(&self, id: &str, tier: &iops_controller::ResolvedTier) -> Result<Volume> {
        let (id, tier) = (id.to_owned(), tier.clone());
        self.blocking(move |s| {
            let mut volume = s
                .read_meta(&id)?
                .ok_or_else(|| Error::VolumeNotFound(id.clone()))?;
            if volume.tier.as_ref() != Some(&tier) {
                volume.tier = Some(tier);
                s.write_meta(&volume)?;
            }
            Ok(volume)
        })
        .await
    }
    async fn condition(&self, _id: &str) -> Result<Option<String>> {
        // A full backing filesystem shows up as write errors in the volume's own
        // filesystem, which the node service already reports.
        Ok(None)
    }

    async fn attach(&self, id: &str) -> Result<PathBuf> {
        let image = self.store.image(id);
        if let Some(dev) = self.store.os.loop_for_file(&image)? {
            return Ok(dev);
        }
        if !image.exists() {
            return Err(Error::VolumeNotFound(id.to_owned()));
        }
        let dev = self.store.os.loop_attach(&image, false).await?;
        tracing::debug!(volume.id = %id, device = %dev.display(), "attached loop device");
        Ok(dev)
    }

    async fn attached(&self, id: &str) -> Result<Option<PathBuf>> {
        Ok(self.store.os.loop_for_file(&self.store.image(id))?)
    }

    async fn devices(&self, id: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .store
            .os
            .loops_for_file(&self.store.image(id))?
            .into_iter()
            .map(|l| l.path)
            .collect())
    }

    async fn attach_read_only(&self, id: &str) -> Result<PathBuf> {
        let image = self.store.image(id);
        if !image.exists() {
            return Err(Error::VolumeNotFound(id.to_owned()));
        }
        let dev = self.store.os.loop_attach(&image, true).await?;
        tracing::debug!(volume.id = %id, device = %dev.display(), "attached read-only loop device");
        Ok(dev)
    }

    async fn release_read_only(&self, id: &str, device: &Path) -> Result<()> {
        let image = self.store.image(id);
        let loops = self.store.os.loops_for_file(&image)?;
        if loops.iter().any(|l| l.read_only && l.path == device)
            && self.store.os.loop_detach(device, &image).await?
        {
            tracing::debug!(volume.id = %id, device = %device.display(), "detached read-only loop device");
        }
        Ok(())
    }

    async fn detach(&self, id: &str) -> Result<()> {
        let image = self.store.image(id);
        for dev in self.store.os.loops_for_file(&image)? {
            if self.store.os.loop_detach(&dev.path, &image).await? {
                tracing::debug!(volume.id = %id, device = %dev.path.display(), "detached loop device");
            }
        }
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    Ok(fs::read_dir(dir)
        .map_err(|e| os::Error::io("read directory", dir, e))?
        .filter_map(std::result::Result::ok)
        .collect())
}

fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| os::Error::io("remove", path, e).into())
}

/// Removes a file; returns whether there was one.
fn remove_file_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(os::Error::io("remove", path, e).into()),
    }
}

#[cfg(test)]
mod tests;
