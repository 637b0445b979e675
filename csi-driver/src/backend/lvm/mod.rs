//! The lvm backend: one thin LV per volume, in the thin pool of a device class.
//!
//! A device class (config `[[device_class]]`, or `--lvm-devices`) is a VG with one thin
//! pool. At start-up each class's pool is adopted if it exists, or built on the listed
//! devices if they are blank (see [`LvmBackend::open`]). A class that cannot be set up is
//! reported by [`Backend::ready`] (so Probe says not ready) while the process keeps serving.
//!
//! **LVM metadata is the only state store.** A volume is a thin LV named by its volume ID
//! (`iol-` + 32 hex digits) carrying the tags of [`tags`], all written by one `lvcreate`, so
//! a crash leaves either a complete volume or nothing. Every read of LVM is one `lvs` JSON
//! report ([`report`]).
//!
//! **The volume index.** `lvs` costs a process and the VG's lock (0.3-0.6 s in the test VM,
//! more than `mount`), so the backend keeps what it knows of its own volumes in memory: an
//! index `volume ID -> (class, VG, volume)` built from the report that start-up reads
//! anyway (after the sweep of untagged LVs), and updated by the backend's own create,
//! expand and delete. That is sound because of one invariant, which a deployment must keep:
//! **one iolane node process per node owns these VGs** (the DaemonSet runs one pod per
//! node, and nothing else creates, tags or removes `iol-*` LVs in them); the tags are
//! written by that process only, in the same `lvcreate` that makes the LV. The index is a
//! cache of LVM, never a second store: a restart rebuilds it, and where it could be wrong it
//! is checked against the kernel without a spawn: an indexed, active volume must have its
//! device node `/dev/<vg>/<lv>`, and an unindexed ID must not. When the node and the index
//! disagree (an LV removed behind iolane's back, or an `lvcreate` of a killed iolane that
//! finished after this one started), one `lvs` decides and fixes the entry. `get`,
//! `attach`, `attached`, `devices`, `delete` and `expand` answer from the index; `list`
//! (ListVolumes) stays authoritative and rebuilds the index from its report, and
//! `condition` and `capacity` still read LVM.
//!
//! Admission in create and expand reads the pool's data and metadata usage in-process with
//! the device-mapper status ioctl ([`crate::os::dm`]) and sums virtual sizes from the index
//! plus the thin LVs of the pool that are not iolane's (as of the last report), so a create
//! is one `lvcreate` and nothing else. When the ioctl fails, or no report of the pool has
//! been seen yet, admission falls back to one `lvs` of the class's VG as before. The
//! watermarks are advisory either way; the pool's `--errorwhenfull y` is the hard stop.
//!
//! Block devices: thin LVs stay active from creation to removal, so [`Backend::detach`] is a
//! no-op: an active thin LV costs a device-mapper table and nothing else, and keeping it
//! keeps its device number stable for the volume's life (IO limits are keyed on it). The
//! device the node service uses is the kernel's node for the LV (`/dev/dm-N`). A read-only
//! raw-block publication gets a read-only loop device on top of the LV, which the kernel
//! itself keeps read-only, exactly as the loop backend does.

pub mod report;
pub mod tags;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{Backend, Created};
use crate::config::{DeviceClass, WipePolicy};
use crate::error::{Error, Result};
use crate::os::dm::ThinPoolStatus;
use crate::os::lvm::{Report, ThinPoolSpec};
use crate::os::{self, Os, Signature};
use crate::volume::{Capacity, CreateSpec, Parameters, Volume, volume_id_for};
use report::{LV_FIELDS, Lv, PV_FIELDS, parse_lvs, parse_pvs};

/// The extent size `vgcreate` gives a new VG: the granularity before any pool is known.
const DEFAULT_EXTENT: u64 = 4 << 20;
/// Prefix of the LV names iolane gives volumes (see `volume_id_for`).
const LV_PREFIX: &str = "iol-";

/// One device class and what start-up made of it.
#[derive(Debug)]
struct Class {
    cfg: DeviceClass,
    /// `Err` says why the pool could not be created or adopted at start-up.
    state: std::result::Result<(), String>,
    /// Serialises admission decisions, so two calls cannot both take the last
    /// provisionable bytes of this pool: a create holds it until its reservation is in the
    /// index (not across `lvcreate`), an expand across its `lvextend`.
    admission: Mutex<()>,
}

/// Thin volumes in the thin pools of device classes.
#[derive(Debug)]
pub struct LvmBackend {
    os: Os,
    classes: Vec<Class>,
    /// Least common multiple of the ready classes' extent sizes.
    granularity: u64,
    /// What the backend knows of its volumes without asking LVM (see the module docs).
    index: std::sync::Mutex<Index>,
    /// Where admission reads pool usage in-process.
    pool_status: Arc<dyn PoolStatus>,
}

/// Reads a thin pool's status without a spawn: the kernel's device-mapper status on a
/// node ([`Os::thin_pool_status`]), a script in tests.
pub trait PoolStatus: Send + Sync + std::fmt::Debug {
    fn thin_pool_status(&self, vg: &str, pool: &str) -> os::Result<ThinPoolStatus>;
}

impl PoolStatus for Os {
    fn thin_pool_status(&self, vg: &str, pool: &str) -> os::Result<ThinPoolStatus> {
        Os::thin_pool_status(self, vg, pool)
    }
}

/// One volume of the index.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// Position of its class in `LvmBackend::classes`.
    class: usize,
    vg: String,
    volume: Volume,
    /// Whether the LV was active when last seen; an inactive LV has no device node.
    active: bool,
}

/// Figures of a class's pool from the last report of its VG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolFacts {
    /// Size of the pool's data LV.
    data_bytes: u64,
    extent: u64,
    /// Virtual bytes of the pool's thin LVs that are not indexed volumes.
    foreign: u64,
}

/// The in-memory volume index (see the module docs).
#[derive(Debug, Default)]
struct Index {
    volumes: HashMap<String, Entry>,
    /// Admitted creates whose `lvcreate` is running: volume ID -> (class, virtual bytes).
    /// Admission counts them, so the admission lock need not be held across the command.
    reserved: HashMap<String, (usize, u64)>,
    /// Per class, in `LvmBackend::classes` order; `None` until a report of its VG is seen.
    pools: Vec<Option<PoolFacts>>,
}

impl Index {
    /// Whether an LV name is an indexed volume or a create in flight (not foreign).
    fn known(&self, name: &str) -> bool {
        self.volumes.contains_key(name) || self.reserved.contains_key(name)
    }

    /// Virtual bytes of `class`'s in-flight creates whose LV is not in `rows` yet.
    fn reserved_in(&self, class: usize, rows: Option<&[Lv]>) -> u64 {
        self.reserved
            .iter()
            .filter(|(id, (c, _))| {
                *c == class && rows.is_none_or(|r| !r.iter().any(|l| &l.name == *id))
            })
            .map(|(_, (_, bytes))| bytes)
            .sum()
    }
}

/// One thin pool's figures, from one report.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PoolUsage {
    /// Size of the pool's data LV.
    data_bytes: u64,
    /// Sum of the virtual sizes of every thin LV in the pool (iolane's or not).
    provisioned: u64,
    data_percent: f64,
    metadata_percent: f64,
    extent: u64,
}

/// What start-up did with a device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Adopted,
    Created,
}

impl LvmBackend {
    /// Sets up every class (adopting existing pools, building new ones on blank devices)
    /// and removes untagged volume LVs. Never fails: a class that cannot be set up is
    /// logged once and reported by [`Backend::ready`].
    pub async fn open(os: Os, classes: Vec<DeviceClass>) -> Self {
        let mut out = Vec::with_capacity(classes.len());
        let mut granularity = 1;
        for cfg in classes {
            let state = match init_class(&os, &cfg).await {
                Ok((setup, extent)) => {
                    tracing::info!(
                        device_class = %cfg.name,
                        vg = %cfg.vg,
                        thin_pool = %cfg.thin_pool,
                        extent_size = extent,
                        "{} thin pool",
                        match setup {
                            Setup::Adopted => "adopted the existing",
                            Setup::Created => "created the",
                        }
                    );
                    granularity = lcm(granularity, extent);
                    Ok(())
                }
                Err(reason) => {
                    tracing::error!(
                        device_class = %cfg.name,
                        vg = %cfg.vg,
                        %reason,
                        "device class is not ready: Probe reports not ready until this is fixed and iolane restarts"
                    );
                    Err(reason)
                }
            };
            out.push(Class {
                cfg,
                state,
                admission: Mutex::new(()),
            });
        }
        let pools = vec![None; out.len()];
        let backend = LvmBackend {
            pool_status: Arc::new(os.clone()),
            os,
            classes: out,
            granularity: if granularity == 1 {
                DEFAULT_EXTENT
            } else {
                granularity
            },
            index: std::sync::Mutex::new(Index {
                volumes: HashMap::new(),
                reserved: HashMap::new(),
                pools,
            }),
        };
        match backend.sweep().await {
            Ok(rows) => {
                backend.absorb_all(&rows);
                tracing::info!(
                    volumes = backend.index().volumes.len(),
                    "indexed the volumes of every ready device class"
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not look for untagged volume LVs; the volume index starts empty and fills from LVM on demand"
            ),
        }
        backend
    }

    fn ready_classes(&self) -> impl Iterator<Item = &Class> {
        self.classes.iter().filter(|c| c.state.is_ok())
    }

    /// Removes thin LVs that carry a volume name but no iolane tag. The single tagged
    /// `lvcreate` never leaves one, so such an LV was not made by a complete create.
    /// Returns the report's rows without the removed LVs.
    async fn sweep(&self) -> Result<Vec<Lv>> {
        let mut rows = self.report_all().await?;
        let mut removed = Vec::new();
        for c in self.ready_classes() {
            for lv in rows.iter().filter(|l| {
                l.is_thin_in(&c.cfg.vg, &c.cfg.thin_pool)
                    && l.name.starts_with(LV_PREFIX)
                    && !tags::is_ours(&l.tags)
            }) {
                tracing::warn!(
                    lv.name = %lv.name,
                    vg = %lv.vg,
                    "removing a volume LV without iolane tags (left by an interrupted or foreign create)"
                );
                self.remove(lv).await?;
                removed.push((lv.vg.clone(), lv.name.clone()));
            }
        }
        rows.retain(|l| !removed.contains(&(l.vg.clone(), l.name.clone())));
        Ok(rows)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Position of a ready class in `classes` whose pool holds `lv` as a thin volume.
    fn class_index_of(&self, lv: &Lv) -> Option<usize> {
        self.classes
            .iter()
            .position(|c| c.state.is_ok() && lv.is_thin_in(&c.cfg.vg, &c.cfg.thin_pool))
    }

    /// The index entry an LV of a report stands for: `None` if it is not an iolane volume
    /// of a ready class, an error if its tags cannot be read.
    fn entry_of(&self, lv: &Lv) -> Option<Result<Entry>> {
        if !tags::is_ours(&lv.tags) {
            return None;
        }
        let class = self.class_index_of(lv)?;
        Some(Self::volume_of(lv).map(|volume| Entry {
            class,
            vg: lv.vg.clone(),
            volume,
            active: lv.active(),
        }))
    }

    /// Brings the index in line with a report of every ready class's VG: every iolane
    /// volume in it is (re)indexed, and an indexed volume missing from it is dropped unless
    /// its device node is there (then a create finished after the report was taken). No
    /// lock is held across the report: an LV removed after it was taken may be indexed
    /// again, and the next lookup, finding no device node, asks LVM and drops it.
    fn absorb_all(&self, rows: &[Lv]) {
        let mut fresh = HashMap::new();
        for lv in rows {
            match self.entry_of(lv) {
                Some(Ok(e)) => {
                    fresh.insert(lv.name.clone(), e);
                }
                Some(Err(e)) => {
                    tracing::warn!(lv.name = %lv.name, vg = %lv.vg, error = %e, "not indexing an LV whose iolane tags cannot be read");
                }
                None => {}
            }
        }
        let mut index = self.index();
        let stale: Vec<String> = index
            .volumes
            .iter()
            .filter(|(id, e)| !fresh.contains_key(*id) && self.os.lv_device(&e.vg, id).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            index.volumes.remove(&id);
        }
        index.volumes.extend(fresh);
        let pools = self
            .classes
            .iter()
            .map(|c| {
                if c.state.is_err() {
                    return None;
                }
                pool_facts(&c.cfg, rows, |name| index.known(name))
            })
            .collect();
        index.pools = pools;
    }

    /// Updates one class's pool figures from a report of its VG.
    fn absorb_pool(&self, class: usize, rows: &[Lv]) {
        let mut index = self.index();
        let facts = pool_facts(&self.classes[class].cfg, rows, |name| index.known(name));
        if let Some(slot) = index.pools.get_mut(class) {
            *slot = facts;
        }
    }

    /// Sets the index entry of `id` to what a fresh report says. Calls on one volume are
    /// serialised by the driver's in-flight guard, so fixing one entry races with nothing.
    fn fix_entry(&self, id: &str, rows: &[Lv]) -> Result<Option<Entry>> {
        let found = rows
            .iter()
            .filter(|l| l.name == id)
            .find_map(|l| self.entry_of(l));
        let mut index = self.index();
        match found {
            Some(Ok(e)) => {
                index.volumes.insert(id.to_owned(), e.clone());
                Ok(Some(e))
            }
            Some(Err(err)) => {
                index.volumes.remove(id);
                Err(err)
            }
            None => {
                index.volumes.remove(id);
                Ok(None)
            }
        }
    }

    /// The volume `id` as the index knows it, checked against the device nodes; one `lvs`
    /// only when the two disagree (see the module docs).
    async fn lookup(&self, id: &str) -> Result<Option<Entry>> {
        let hit = self.index().volumes.get(id).cloned();
        match hit {
            Some(e) if self.os.lv_device(&e.vg, id).is_some() => {
                if !e.active
                    && let Some(x) = self.index().volumes.get_mut(id)
                {
                    x.active = true;
                }
                return Ok(Some(Entry { active: true, ..e }));
            }
            // Inactive when last seen (e.g. not auto-activated at boot): no node expected.
            Some(e) if !e.active => return Ok(Some(e)),
            Some(_) => {}
            None if self.active_device(id).is_none() => return Ok(None),
            None => {}
        }
        tracing::debug!(volume.id = %id, indexed = hit.is_some(), "the volume index and /dev disagree; asking LVM");
        let rows = self.report_all().await?;
        self.fix_entry(id, &rows)
    }

    /// Pool usage for admission without a spawn: the thin-pool status from the kernel and
    /// the provisioned bytes from the index; `Err` says why it is not available.
    fn fast_usage(&self, class: usize) -> std::result::Result<PoolUsage, String> {
        let c = &self.classes[class].cfg;
        let (facts, indexed) = {
            let index = self.index();
            let facts = index
                .pools
                .get(class)
                .copied()
                .flatten()
                .ok_or_else(|| "no report of the pool seen yet".to_owned())?;
            let indexed: u64 = index
                .volumes
                .values()
                .filter(|e| e.class == class)
                .map(|e| e.volume.capacity_bytes)
                .sum();
            (facts, indexed + index.reserved_in(class, None))
        };
        let status = self
            .pool_status
            .thin_pool_status(&c.vg, &c.thin_pool)
            .map_err(|e| e.to_string())?;
        Ok(PoolUsage {
            data_bytes: facts.data_bytes,
            provisioned: facts.foreign + indexed,
            data_percent: status.data_percent(),
            metadata_percent: status.metadata_percent(),
            extent: facts.extent,
        })
    }

    /// Admission figures for `class`: from [`Self::fast_usage`], else from one `lvs` of
    /// its VG (whose rows are returned too). Callers hold the class's admission lock.
    async fn admission_usage(&self, class: usize) -> Result<(PoolUsage, Option<Vec<Lv>>)> {
        match self.fast_usage(class) {
            Ok(u) => Ok((u, None)),
            Err(why) => {
                let c = &self.classes[class].cfg;
                tracing::debug!(device_class = %c.name, reason = %why, "pool status not available in-process; reading it with lvs");
                let rows = self.lvs(&[&c.vg]).await?;
                self.absorb_pool(class, &rows);
                let mut u = usage(c, &rows)?;
                u.provisioned += self.index().reserved_in(class, Some(&rows));
                Ok((u, Some(rows)))
            }
        }
    }

    /// What an LV named `id` found in `class`'s VG means for a create: our volume
    /// (already existing), or a foreign LV in the way.
    fn existing_in(&self, class: &DeviceClass, id: &str, rows: &[Lv]) -> Result<Option<Volume>> {
        let Some(lv) = rows.iter().find(|l| l.name == id) else {
            return Ok(None);
        };
        if !tags::is_ours(&lv.tags) {
            return Err(Error::FailedPrecondition(format!(
                "LV {}/{} exists without iolane tags; remove it (iolane removes such LVs when it starts)",
                class.vg, id
            )));
        }
        Ok(self.fix_entry(id, rows)?.map(|e| e.volume))
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
        if let Err(reason) = &class.state {
            return Err(Error::NotReady(format!(
                "device class {} is not ready: {reason}",
                class.cfg.name
            )));
        }
        Ok((i, class))
    }

    /// The volume an iolane LV stands for, rebuilt from its name, size and tags.
    fn volume_of(lv: &Lv) -> Result<Volume> {
        let bad = |reason: String| Error::Metadata {
            path: format!("lv {}/{}", lv.vg, lv.name),
            reason,
        };
        let t = tags::decode(&lv.tags).map_err(bad)?;
        if volume_id_for(&t.name) != lv.name {
            return Err(bad(format!(
                "the name tag {:?} does not hash to the LV name",
                t.name
            )));
        }
        Ok(Volume {
            id: lv.name.clone(),
            name: t.name,
            capacity_bytes: lv.size,
            fs_type: t.fs_type,
            parameters: t.parameters,
            tier: t.tier,
        })
    }

    /// Discards an LV's blocks (activating it first if needed), then removes it.
    async fn remove(&self, lv: &Lv) -> Result<()> {
        if !lv.active() {
            self.os.activate_lv(&lv.vg, &lv.name).await?;
        }
        let dev = self.device(&lv.vg, &lv.name)?;
        // Freed blocks go back to the pool; without the discard a pool that does not zero
        // new chunks could hand this volume's bytes to the next one.
        self.os.discard(&dev).await?;
        self.os.remove_lv(&lv.vg, &lv.name).await?;
        tracing::debug!(lv.name = %lv.name, vg = %lv.vg, "discarded and removed LV");
        Ok(())
    }

    /// Discards an indexed volume's blocks (activating it first if needed), then removes
    /// it and drops it from the index. An LV that is already gone when `lvremove` runs
    /// counts as removed.
    async fn remove_volume(&self, id: &str, e: &Entry) -> Result<()> {
        let dev = match self.os.lv_device(&e.vg, id) {
            Some(dev) => dev,
            None => {
                self.os.activate_lv(&e.vg, id).await?;
                self.device(&e.vg, id)?
            }
        };
        // Freed blocks go back to the pool; without the discard a pool that does not zero
        // new chunks could hand this volume's bytes to the next one.
        self.os.discard(&dev).await?;
        if let Err(err) = self.os.remove_lv(&e.vg, id).await {
            let rows = self.lvs(&[&e.vg]).await?;
            if rows.iter().any(|l| l.name == id) {
                return Err(err.into());
            }
            tracing::debug!(volume.id = %id, vg = %e.vg, error = %err, "lvremove failed but the LV is gone");
        }
        self.index().volumes.remove(id);
        tracing::debug!(lv.name = %id, vg = %e.vg, "discarded and removed LV");
        Ok(())
    }

    /// The device node of an LV that must be active.
    fn device(&self, vg: &str, lv: &str) -> Result<PathBuf> {
        self.os.lv_device(vg, lv).ok_or_else(|| {
            let path = self.os.roots().dev.join(vg).join(lv);
            os::Error::io(
                "open",
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the LV is active but its device node is missing",
                ),
            )
            .into()
        })
    }

    /// The device node of the volume's LV if it is active now.
    fn active_device(&self, id: &str) -> Option<PathBuf> {
        self.ready_classes()
            .find_map(|c| self.os.lv_device(&c.cfg.vg, id))
    }
}

/// What the index keeps of `c`'s pool from a report of its VG; `indexed` says which LV
/// names are indexed volumes (the rest of the pool's thin LVs count as foreign).
fn pool_facts(c: &DeviceClass, rows: &[Lv], indexed: impl Fn(&str) -> bool) -> Option<PoolFacts> {
    let pool = rows
        .iter()
        .find(|l| l.vg == c.vg && l.name == c.thin_pool && l.is_thin_pool())?;
    Some(PoolFacts {
        data_bytes: pool.size,
        extent: extent_of(pool).ok()?,
        foreign: rows
            .iter()
            .filter(|l| l.is_thin_in(&c.vg, &c.thin_pool) && !indexed(&l.name))
            .map(|l| l.size)
            .sum(),
    })
}

/// Figures of `c`'s pool from a report of its VG.
fn usage(c: &DeviceClass, rows: &[Lv]) -> Result<PoolUsage> {
    let pool = rows
        .iter()
        .find(|l| l.vg == c.vg && l.name == c.thin_pool && l.is_thin_pool())
        .ok_or_else(|| {
            Error::NotReady(format!(
                "thin pool {}/{} of device class {} is missing",
                c.vg, c.thin_pool, c.name
            ))
        })?;
    Ok(PoolUsage {
        data_bytes: pool.size,
        provisioned: rows
            .iter()
            .filter(|l| l.is_thin_in(&c.vg, &c.thin_pool))
            .map(|l| l.size)
            .sum(),
        data_percent: pool.data_percent.unwrap_or(0.0),
        metadata_percent: pool.metadata_percent.unwrap_or(0.0),
        extent: extent_of(pool)?,
    })
}

/// Why the pool takes no more volumes now, if a usage watermark says so.
fn past_watermark(c: &DeviceClass, u: &PoolUsage) -> Option<String> {
    if u.data_percent >= c.data_high_watermark {
        return Some(format!(
            "thin pool {}/{} data usage is {:.2}%, at or above the high watermark of {}%: no new space is promised until usage falls",
            c.vg, c.thin_pool, u.data_percent, c.data_high_watermark
        ));
    }
    if u.metadata_percent >= c.metadata_high_watermark {
        return Some(format!(
            "thin pool {}/{} metadata usage is {:.2}%, at or above the high watermark of {}%: no new space is promised until usage falls",
            c.vg, c.thin_pool, u.metadata_percent, c.metadata_high_watermark
        ));
    }
    None
}

/// Most virtual bytes the ratio still allows, `ratio x pool data - provisioned`, in whole
/// extents.
fn provisionable(c: &DeviceClass, u: &PoolUsage) -> (u64, u64) {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let limit = (u.data_bytes as f64 * c.overprovision_ratio) as u64;
    let left = limit.saturating_sub(u.provisioned) / u.extent * u.extent;
    (left, limit)
}

fn capacity_of(c: &DeviceClass, u: &PoolUsage) -> Capacity {
    let available = if past_watermark(c, u).is_some() {
        0
    } else {
        provisionable(c, u).0
    };
    Capacity {
        available,
        max_volume_size: available,
    }
}

/// Admits `grow` more virtual bytes into `c`'s pool, or says which limit refuses them.
fn admit(c: &DeviceClass, u: &PoolUsage, grow: u64) -> Result<()> {
    if let Some(reason) = past_watermark(c, u) {
        return Err(Error::ResourceExhausted(reason));
    }
    let (left, limit) = provisionable(c, u);
    if grow > left {
        return Err(Error::ResourceExhausted(format!(
            "thin pool {}/{}: {grow} bytes requested but only {left} can be provisioned: {} bytes are provisioned of {limit} allowed (overprovision ratio {} x {} bytes of pool data)",
            c.vg, c.thin_pool, u.provisioned, c.overprovision_ratio, u.data_bytes
        )));
    }
    Ok(())
}

/// Why a volume of `c` cannot take writes that need new blocks, if it cannot.
fn pool_condition(c: &DeviceClass, lv: &Lv, pool: Option<&Lv>) -> Option<String> {
    let name = format!("thin pool {}/{}", c.vg, c.thin_pool);
    let Some(pool) = pool else {
        return Some(format!("{name} is missing"));
    };
    let data = pool.data_percent.unwrap_or(0.0);
    let meta = pool.metadata_percent.unwrap_or(0.0);
    match (pool.health(), lv.health()) {
        (b'F', _) | (_, b'F') => Some(format!("{name} has failed")),
        (b'p', _) | (_, b'p') => Some(format!("{name} is missing a physical volume")),
        (b'M', _) => Some(format!(
            "{name} metadata is read-only ({meta:.2}% used): writes that need new blocks fail"
        )),
        (b'D', _) => Some(format!(
            "{name} is out of data space ({data:.2}% used): writes that need new blocks fail"
        )),
        _ if data >= 100.0 => Some(format!(
            "{name} is out of data space ({data:.2}% used): writes that need new blocks fail"
        )),
        _ if meta >= 100.0 => Some(format!(
            "{name} is out of metadata space ({meta:.2}% used): writes that need new blocks fail"
        )),
        _ => None,
    }
}

/// Adopts or creates the class's VG and thin pool; returns what it did and the extent
/// size. The error is the reason the class is not ready.
async fn init_class(os: &Os, c: &DeviceClass) -> std::result::Result<(Setup, u64), String> {
    init_class_inner(os, c).await.map_err(|e| e.to_string())
}

async fn init_class_inner(os: &Os, c: &DeviceClass) -> Result<(Setup, u64)> {
    let pvs = parse_pvs(&os.lvm_report(Report::Pv, PV_FIELDS, &[]).await?)?;
    if pvs.iter().any(|p| p.vg == c.vg) {
        for d in &c.devices {
            let member = pvs
                .iter()
                .any(|p| p.vg == c.vg && os.same_device(Path::new(&p.name), d));
            if !member {
                tracing::warn!(
                    device_class = %c.name,
                    device = %d.display(),
                    vg = %c.vg,
                    "listed device is not part of the existing VG; iolane does not extend existing VGs"
                );
            }
        }
        let lvs = parse_lvs(&os.lvm_report(Report::Lv, LV_FIELDS, &[&c.vg]).await?)?;
        match lvs.iter().find(|l| l.name == c.thin_pool) {
            Some(p) if p.is_thin_pool() => {
                if p.when_full.as_deref() != Some("error") {
                    tracing::warn!(
                        device_class = %c.name,
                        vg = %c.vg,
                        thin_pool = %c.thin_pool,
                        when_full = ?p.when_full,
                        "the adopted thin pool queues IO when full instead of failing it; \
                         iolane leaves it as it is (lvchange --errorwhenfull y fixes it)"
                    );
                }
                return Ok((Setup::Adopted, extent_of(p)?));
            }
            Some(p) => {
                return Err(Error::FailedPrecondition(format!(
                    "LV {}/{} exists but is not a thin pool (lv_attr {})",
                    c.vg, c.thin_pool, p.attr
                )));
            }
            None => tracing::info!(
                device_class = %c.name,
                vg = %c.vg,
                "VG exists without its thin pool (an interrupted start-up?): creating the pool"
            ),
        }
    } else {
        prepare_devices(os, c, &pvs).await?;
        os.vgcreate(&c.vg, &c.devices).await?;
        tracing::info!(device_class = %c.name, vg = %c.vg, devices = ?c.devices, "created VG");
    }
    os.create_thin_pool(&ThinPoolSpec {
        vg: &c.vg,
        pool: &c.thin_pool,
        percent_of_vg: c.pool_size_percent,
        chunk_size: c.chunk_size,
        zero: c.zero,
    })
    .await?;
    let lvs = parse_lvs(&os.lvm_report(Report::Lv, LV_FIELDS, &[&c.vg]).await?)?;
    let pool = lvs
        .iter()
        .find(|l| l.name == c.thin_pool && l.is_thin_pool())
        .ok_or_else(|| {
            Error::NotReady(format!(
                "lvcreate succeeded but thin pool {}/{} is not in the report",
                c.vg, c.thin_pool
            ))
        })?;
    Ok((Setup::Created, extent_of(pool)?))
}

fn extent_of(lv: &Lv) -> Result<u64> {
    lv.extent_size.filter(|e| *e > 0).ok_or_else(|| {
        os::Error::Parse {
            what: "lvs report",
            output: format!("no vg_extent_size for {}/{}", lv.vg, lv.name),
        }
        .into()
    })
}

/// What to do with one listed device before `vgcreate`.
#[derive(Debug)]
enum Step {
    /// A PV in no VG (from an interrupted start-up): it holds no data, use it as it is.
    Reuse,
    Create,
    WipeAndCreate(String),
}

/// Checks every listed device first and changes nothing unless all of them are usable:
/// blank devices become PVs, devices with any signature are refused unless the class's
/// wipe policy allows erasing it.
async fn prepare_devices(os: &Os, c: &DeviceClass, pvs: &[report::Pv]) -> Result<()> {
    let mut steps = Vec::new();
    let mut refused = Vec::new();
    let mut signatures = false;
    for (i, d) in c.devices.iter().enumerate() {
        if !os.device_exists(d) {
            refused.push(format!("{} does not exist", d.display()));
            continue;
        }
        if let Some(e) = c.devices[..i].iter().find(|e| os.same_device(e, d)) {
            refused.push(format!(
                "{} is the same device as {}",
                d.display(),
                e.display()
            ));
            continue;
        }
        let found = match pvs.iter().find(|p| os.same_device(Path::new(&p.name), d)) {
            Some(pv) if pv.vg.is_empty() => {
                steps.push((d, Step::Reuse));
                continue;
            }
            Some(pv) => format!("an LVM physical volume of VG {:?}", pv.vg),
            None => match os.probe(d).await? {
                Signature::Blank => {
                    steps.push((d, Step::Create));
                    continue;
                }
                Signature::Filesystem(t) => format!("a signature ({t})"),
                Signature::PartitionTable(t) => format!("a partition table ({t})"),
            },
        };
        match c.wipe {
            WipePolicy::Never => {
                signatures = true;
                refused.push(format!("{} carries {found}", d.display()));
            }
            WipePolicy::Signatures => steps.push((d, Step::WipeAndCreate(found))),
        }
    }
    if !refused.is_empty() {
        let hint = if signatures {
            "; iolane only uses blank devices unless the class sets wipe = \"signatures\""
        } else {
            ""
        };
        return Err(Error::FailedPrecondition(format!(
            "refusing to build VG {} for device class {}: {}{hint}",
            c.vg,
            c.name,
            refused.join(", ")
        )));
    }
    for (d, step) in steps {
        match step {
            Step::Reuse => {
                tracing::info!(device = %d.display(), "reusing a physical volume that belongs to no VG");
            }
            Step::Create => os.pvcreate(d).await?,
            Step::WipeAndCreate(found) => {
                tracing::warn!(device = %d.display(), found = %found, "erasing every signature (wipe = \"signatures\")");
                os.wipe_signatures(d).await?;
                os.pvcreate(d).await?;
            }
        }
    }
    Ok(())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        a.max(b)
    } else {
        a / gcd(a, b) * b
    }
}

#[async_trait::async_trait]
impl Backend for LvmBackend {
    fn kind(&self) -> &'static str {
        "lvm"
    }

    fn granularity(&self) -> u64 {
        self.granularity
    }

    async fn ready(&self) -> Result<(), String> {
        let reasons: Vec<String> = self
            .classes
            .iter()
            .filter_map(|c| {
                c.state
                    .as_ref()
                    .err()
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
        Ok(self.lookup(id).await?.map(|e| e.volume))
    }

    async fn list(&self) -> Result<Vec<Volume>> {
        // ListVolumes is authoritative: it reads LVM, and the index follows what it read.
        let rows = self.report_all().await?;
        self.absorb_all(&rows);
        let mut out = Vec::new();
        for lv in rows
            .iter()
            .filter(|l| tags::is_ours(&l.tags) && self.class_of(l).is_some())
        {
            match Self::volume_of(lv) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(lv.name = %lv.name, vg = %lv.vg, error = %e, "skipping an LV whose iolane tags cannot be read");
                }
            }
        }
        Ok(out)
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        let (ci, class) = self.class_for(&spec.parameters)?;
        let c = &class.cfg;
        let tags = tags::encode(spec)?;
        // The volume may exist in any class; the driver compares it with the request.
        if let Some(e) = self.lookup(&spec.id).await? {
            return Ok(Created::Existing(e.volume));
        }
        // Admission and the reservation it makes are one step under the class's lock; the
        // lvcreate runs outside it, so creates of different volumes overlap as far as
        // LVM's own VG lock lets them.
        let u = {
            let _admit = class.admission.lock().await;
            let (u, rows) = self.admission_usage(ci).await?;
            if let Some(rows) = &rows
                && let Some(v) = self.existing_in(c, &spec.id, rows)?
            {
                return Ok(Created::Existing(v));
            }
            admit(c, &u, spec.size)?;
            self.index()
                .reserved
                .insert(spec.id.clone(), (ci, spec.size.next_multiple_of(u.extent)));
            u
        };
        let created = self
            .os
            .create_thin_lv(&c.vg, &c.thin_pool, &spec.id, spec.size, &tags)
            .await;
        if created.is_err() {
            self.index().reserved.remove(&spec.id);
        }
        if let Err(err) = created {
            // An LV of this name that the index did not know (a foreign one, or the
            // `lvcreate` of a killed iolane that finished meanwhile) makes lvcreate fail:
            // one report says which.
            let Ok(rows) = self.lvs(&[&c.vg]).await else {
                return Err(err.into());
            };
            return match self.existing_in(c, &spec.id, &rows)? {
                Some(v) => Ok(Created::Existing(v)),
                None => Err(err.into()),
            };
        }
        let volume = Volume {
            id: spec.id.clone(),
            name: spec.name.clone(),
            capacity_bytes: spec.size.next_multiple_of(u.extent),
            fs_type: spec.fs_type,
            parameters: spec.parameters.clone(),
            tier: spec.tier.clone(),
        };
        {
            let mut index = self.index();
            index.reserved.remove(&spec.id);
            index.volumes.insert(
                spec.id.clone(),
                Entry {
                    class: ci,
                    vg: c.vg.clone(),
                    volume: volume.clone(),
                    active: true,
                },
            );
        }
        tracing::debug!(volume.id = %spec.id, vg = %c.vg, size = spec.size, "created thin LV");
        Ok(Created::New(volume))
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        let Some(e) = self.lookup(id).await? else {
            return Ok(false);
        };
        self.remove_volume(id, &e).await?;
        Ok(true)
    }

    async fn capacity(&self, parameters: &Parameters) -> Result<Capacity> {
        let (ci, class) = self.class_for(parameters)?;
        let rows = self.lvs(&[&class.cfg.vg]).await?;
        self.absorb_pool(ci, &rows);
        let mut u = usage(&class.cfg, &rows)?;
        u.provisioned += self.index().reserved_in(ci, Some(&rows));
        Ok(capacity_of(&class.cfg, &u))
    }

    async fn expand(&self, id: &str, size: u64) -> Result<u64> {
        let e = self
            .lookup(id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?;
        let current = e.volume.capacity_bytes;
        if size <= current {
            return Ok(current);
        }
        let class = &self.classes[e.class];
        let c = &class.cfg;
        let _admit = class.admission.lock().await;
        let (u, rows) = self.admission_usage(e.class).await?;
        let current = match &rows {
            // The report is fresher than the index: trust it, and fix the entry.
            Some(rows) => {
                let lv = rows
                    .iter()
                    .find(|l| l.name == id && l.is_thin_in(&c.vg, &c.thin_pool))
                    .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?;
                self.fix_entry(id, rows)?;
                lv.size
            }
            None => current,
        };
        if size <= current {
            return Ok(current);
        }
        admit(c, &u, size - current)?;
        self.os.extend_lv(&c.vg, id, size).await?;
        let new = size.next_multiple_of(u.extent);
        if let Some(x) = self.index().volumes.get_mut(id) {
            x.volume.capacity_bytes = new;
        }
        tracing::debug!(volume.id = %id, vg = %c.vg, size, "extended thin LV");
        Ok(new)
    }

    async fn pools(&self) -> Result<Vec<crate::status::PoolStatus>> {
        let rows = self.report_all().await?;
        let mut out = Vec::new();
        for class in &self.classes {
            let c = &class.cfg;
            let location = format!("{}/{}", c.vg, c.thin_pool);
            let status = match (&class.state, usage(c, &rows)) {
                (Err(reason), _) => crate::status::PoolStatus {
                    name: c.name.clone(),
                    location,
                    problem: Some(format!("not ready: {reason}")),
                    ..Default::default()
                },
                (Ok(()), Err(e)) => crate::status::PoolStatus {
                    name: c.name.clone(),
                    location,
                    problem: Some(e.to_string()),
                    ..Default::default()
                },
                (Ok(()), Ok(u)) => crate::status::PoolStatus {
                    name: c.name.clone(),
                    location,
                    size_bytes: u.data_bytes,
                    data_percent: u.data_percent,
                    metadata_percent: Some(u.metadata_percent),
                    provisioned_bytes: u.provisioned,
                    problem: past_watermark(c, &u),
                },
            };
            out.push(status);
        }
        Ok(out)
    }

    async fn conditions(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let rows = self.report_all().await?;
        let mut out = std::collections::BTreeMap::new();
        for lv in rows.iter().filter(|l| tags::is_ours(&l.tags)) {
            let Some(class) = self.class_of(lv) else {
                continue;
            };
            let c = &class.cfg;
            let pool = rows
                .iter()
                .find(|l| l.vg == c.vg && l.name == c.thin_pool && l.is_thin_pool());
            if let Some(why) = pool_condition(c, lv, pool) {
                out.insert(lv.name.clone(), why);
            }
        }
        Ok(out)
    }

    async fn condition(&self, id: &str) -> Result<Option<String>> {
        let rows = self.report_all().await?;
        let Some((class, lv)) = rows.iter().find_map(|l| {
            (l.name == id && tags::is_ours(&l.tags))
                .then(|| self.class_of(l).map(|c| (c, l)))
                .flatten()
        }) else {
            return Ok(None);
        };
        let c = &class.cfg;
        let pool = rows
            .iter()
            .find(|l| l.vg == c.vg && l.name == c.thin_pool && l.is_thin_pool());
        Ok(pool_condition(c, lv, pool))
    }

    async fn attach(&self, id: &str) -> Result<PathBuf> {
        if let Some(dev) = self.active_device(id) {
            return Ok(dev);
        }
        let e = self
            .lookup(id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?;
        self.os.activate_lv(&e.vg, id).await?;
        tracing::debug!(volume.id = %id, vg = %e.vg, "activated thin LV");
        let dev = self.device(&e.vg, id)?;
        if let Some(x) = self.index().volumes.get_mut(id) {
            x.active = true;
        }
        Ok(dev)
    }

    async fn attached(&self, id: &str) -> Result<Option<PathBuf>> {
        Ok(self.active_device(id))
    }

    async fn devices(&self, id: &str) -> Result<Vec<PathBuf>> {
        let Some(dev) = self.active_device(id) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<PathBuf> = self
            .os
            .loops_for_file(&dev)?
            .into_iter()
            .filter(|l| l.read_only)
            .map(|l| l.path)
            .collect();
        out.insert(0, dev);
        Ok(out)
    }

    async fn attach_read_only(&self, id: &str) -> Result<PathBuf> {
        let dev = self.attach(id).await?;
        let ro = self.os.loop_attach(&dev, true).await?;
        tracing::debug!(volume.id = %id, device = %ro.display(), "attached read-only loop device over the LV");
        Ok(ro)
    }

    async fn release_read_only(&self, id: &str, device: &Path) -> Result<()> {
        let Some(dev) = self.active_device(id) else {
            return Ok(());
        };
        let ours = self
            .os
            .loops_for_file(&dev)?
            .iter()
            .any(|l| l.read_only && l.path == device);
        if ours {
            self.os.loop_detach(device).await?;
            tracing::debug!(volume.id = %id, device = %device.display(), "detached read-only loop device");
        }
        Ok(())
    }

    async fn detach(&self, _id: &str) -> Result<()> {
        // Thin LVs stay active for their whole life (see the module docs).
        Ok(())
    }
}

#[cfg(test)]
mod tests;
