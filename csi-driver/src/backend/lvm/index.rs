//! The in-memory volume index of the lvm backend: what it knows of its own volumes
//! without asking LVM, and how a report or a device node corrects it.
//!
//! **The volume index.** `lvs` costs a process and the VG's lock (0.3-0.6 s in the test VM,
//! more than `mount`), so the backend keeps what it knows of its own volumes in memory: an
//! index `volume ID -> (class, VG, LV, volume)` built from the report that start-up reads
//! anyway (after the sweep of untagged LVs), and updated by the backend's own create,
//! expand and delete; spares (`spares.rs`) are indexed beside them by LV name. A volume's
//! ID is the hash of its name tag; its LV is named by that ID unless it was a spare. That is sound because of one invariant, which a deployment must keep:
//! **one iolane node process per node owns these VGs** (the DaemonSet runs one pod per
//! node, and nothing else creates, tags or removes `iol-*` LVs in them); the tags are
//! written by that process only, in the same `lvcreate` that makes the LV (or the
//! `lvchange` that makes a spare a volume, or a volume a spare). The index is a
//! cache of LVM, never a second store: a restart rebuilds it, and where it could be wrong it
//! is checked against the kernel without a spawn: an indexed, active volume must have its
//! device node `/dev/<vg>/<lv>`, and an unindexed ID must not. When the node and the index
//! disagree (an LV removed behind iolane's back, or an `lvcreate` of a killed iolane that
//! finished after this one started), one `lvs` decides and fixes the entry. `get`,
//! `attach`, `attached`, `devices`, `delete` and `expand` answer from the index; `list`
//! (ListVolumes) stays authoritative and rebuilds the index from its report, and
//! `condition` and `capacity` still read LVM.
//!
//! Snapshots (`iolsnap-*` LVs) are indexed beside the volumes, so that admission counts
//! their virtual bytes without a report; every snapshot call still reads LVM (they are
//! rare), and each of its reports corrects the snapshot index.

use std::collections::HashMap;

use super::report::{Lv, extent_of};
use super::spares::Spare;
use super::{DeviceClass, LV_PREFIX, LvmBackend, tags};
use crate::error::{Error, Result};
use crate::volume::{SNAPSHOT_PREFIX, Snapshot, Volume, snapshot_id_for, volume_id_for};

/// One volume of the index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    /// Position of its class in `LvmBackend::classes`.
    pub(super) class: usize,
    pub(super) vg: String,
    /// The LV holding it: named by the volume ID, unless the LV was a spare (`spares.rs`).
    pub(super) lv: String,
    /// The LV's tags (what a volume turned spare loses).
    pub(super) tags: Vec<String>,
    pub(super) volume: Volume,
    /// Whether the LV was active when last seen; an inactive LV has no device node.
    pub(super) active: bool,
}

/// One snapshot of the index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SnapEntry {
    /// Position of its class in `LvmBackend::classes`.
    pub(super) class: usize,
    pub(super) vg: String,
    pub(super) snapshot: Snapshot,
    /// Its virtual size (what admission counts).
    pub(super) bytes: u64,
}

/// Figures of a class's pool from the last report of its VG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PoolFacts {
    /// Size of the pool's data LV.
    pub(super) data_bytes: u64,
    pub(super) extent: u64,
    /// Virtual bytes of the pool's thin LVs that are not indexed volumes.
    pub(super) foreign: u64,
}

/// The in-memory volume index (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) volumes: HashMap<String, Entry>,
    /// Snapshot ID -> snapshot, as of the last report or the backend's own calls.
    pub(super) snapshots: HashMap<String, SnapEntry>,
    /// Admitted creates whose `lvcreate` is running: volume ID -> (class, virtual bytes).
    /// Admission counts them, so the admission lock need not be held across the command.
    pub(super) reserved: HashMap<String, (usize, u64)>,
    /// Per class, in `LvmBackend::classes` order; `None` until a report of its VG is seen.
    pub(super) pools: Vec<Option<PoolFacts>>,
    /// LV name -> spare (see `spares.rs`).
    pub(super) spares: HashMap<String, Spare>,
    /// Woken whenever a spare stops being prepared (clean, or given up).
    pub(super) spare_done: std::sync::Arc<tokio::sync::Notify>,
}

impl Index {
    /// Whether an LV name is an indexed volume or snapshot or a create in flight (not
    /// foreign).
    pub(super) fn known(&self, name: &str) -> bool {
        self.volumes.contains_key(name)
            || self.snapshots.contains_key(name)
            || self.reserved.contains_key(name)
            || self.spares.contains_key(name)
            || self.volumes.values().any(|e| e.lv == name)
    }

    /// Virtual bytes of `class`'s in-flight creates whose LV is not in `rows` yet.
    pub(super) fn reserved_in(&self, class: usize, rows: Option<&[Lv]>) -> u64 {
        self.reserved
            .iter()
            .filter(|(id, (c, _))| {
                *c == class && rows.is_none_or(|r| !r.iter().any(|l| &l.name == *id))
            })
            .map(|(_, (_, bytes))| bytes)
            .sum()
    }
}

impl LvmBackend {
    pub(super) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The index entry an LV of a report stands for: `None` if it is not an iolane volume
    /// of a ready class, an error if its tags cannot be read.
    pub(super) fn entry_of(&self, lv: &Lv) -> Option<Result<Entry>> {
        if !tags::is_ours(&lv.tags) || !lv.name.starts_with(LV_PREFIX) {
            return None;
        }
        let class = self.class_index_of(lv)?;
        if tags::is_spare(&lv.tags) {
            return None;
        }
        Some(Self::volume_of(lv).map(|volume| Entry {
            class,
            vg: lv.vg.clone(),
            lv: lv.name.clone(),
            tags: lv.tags.clone(),
            volume,
            active: lv.active(),
        }))
    }

    /// The snapshot index entry an LV of a report stands for: `None` if it is not an
    /// iolane snapshot of a ready class, an error if its tags cannot be read.
    pub(super) fn snap_entry_of(&self, lv: &Lv) -> Option<Result<SnapEntry>> {
        if !tags::is_ours(&lv.tags) || !lv.name.starts_with(SNAPSHOT_PREFIX) {
            return None;
        }
        let class = self.class_index_of(lv)?;
        Some(Self::snapshot_of(lv).map(|snapshot| SnapEntry {
            class,
            vg: lv.vg.clone(),
            snapshot,
            bytes: lv.size,
        }))
    }

    /// Replaces the snapshot index with the snapshots of a report of every ready class's
    /// VG, and returns them.
    pub(super) fn absorb_snapshots(&self, rows: &[Lv]) -> Vec<SnapEntry> {
        let mut fresh = HashMap::new();
        for lv in rows {
            match self.snap_entry_of(lv) {
                Some(Ok(e)) => {
                    fresh.insert(lv.name.clone(), e);
                }
                Some(Err(e)) => {
                    tracing::warn!(lv.name = %lv.name, vg = %lv.vg, error = %e, "not indexing a snapshot LV whose iolane tags cannot be read");
                }
                None => {}
            }
        }
        let out = fresh.values().cloned().collect();
        self.index().snapshots = fresh;
        out
    }

    /// The snapshot an iolane snapshot LV stands for, rebuilt from its name and tags.
    pub(super) fn snapshot_of(lv: &Lv) -> Result<Snapshot> {
        let bad = |reason: String| Error::Metadata {
            path: format!("lv {}/{}", lv.vg, lv.name),
            reason,
        };
        let s = tags::decode_snapshot(&lv.name, &lv.tags).map_err(bad)?;
        if snapshot_id_for(&s.name) != lv.name {
            return Err(bad(format!(
                "the snapshot name tag {:?} does not hash to the LV name",
                s.name
            )));
        }
        Ok(s)
    }

    /// Brings the index in line with a report of every ready class's VG: every iolane
    /// volume in it is (re)indexed, and an indexed volume missing from it is dropped unless
    /// its device node is there (then a create finished after the report was taken). No
    /// lock is held across the report: an LV removed after it was taken may be indexed
    /// again, and the next lookup, finding no device node, asks LVM and drops it.
    pub(super) fn absorb_all(&self, rows: &[Lv]) {
        let mut fresh = HashMap::new();
        for lv in rows {
            match self.entry_of(lv) {
                Some(Ok(e)) => {
                    fresh.insert(e.volume.id.clone(), e);
                }
                Some(Err(e)) => {
                    tracing::warn!(lv.name = %lv.name, vg = %lv.vg, error = %e, "not indexing an LV whose iolane tags cannot be read");
                }
                None => {}
            }
        }
        self.absorb_snapshots(rows);
        let spares = self.spares_in(rows);
        let mut index = self.index();
        let stale: Vec<String> = index
            .volumes
            .iter()
            .filter(|(id, e)| !fresh.contains_key(*id) && self.os.lv_device(&e.vg, &e.lv).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            index.volumes.remove(&id);
        }
        index.volumes.extend(fresh);
        super::spares::absorb(&mut index.spares, spares);
        let pools = self
            .classes
            .iter()
            .map(|c| {
                if !c.is_ready() {
                    return None;
                }
                pool_facts(&c.cfg, rows, |name| index.known(name))
            })
            .collect();
        index.pools = pools;
    }

    /// Updates one class's pool figures from a report of its VG.
    pub(super) fn absorb_pool(&self, class: usize, rows: &[Lv]) {
        let mut index = self.index();
        let facts = pool_facts(&self.classes[class].cfg, rows, |name| index.known(name));
        if let Some(slot) = index.pools.get_mut(class) {
            *slot = facts;
        }
    }

    /// Sets the index entry of `id` to what a fresh report says. Calls on one volume are
    /// serialised by the driver's in-flight guard, so fixing one entry races with nothing.
    pub(super) fn fix_entry(&self, id: &str, rows: &[Lv]) -> Result<Option<Entry>> {
        let found = rows
            .iter()
            .filter(|l| l.answers_for(id))
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

    /// Indexes a volume this process just made in `lv` (a new LV or a spare), in place of
    /// the reservation or the spare that stood for it.
    pub(super) fn index_made(&self, class: usize, lv: String, tags: Vec<String>, volume: &Volume) {
        let mut index = self.index();
        index.reserved.remove(&lv);
        index.spares.remove(&lv);
        index.volumes.insert(
            volume.id.clone(),
            Entry {
                class,
                vg: self.classes[class].cfg.vg.clone(),
                lv,
                tags,
                volume: volume.clone(),
                active: true,
            },
        );
    }

    /// The volume `id` as the index knows it, checked against the device nodes; one `lvs`
    /// only when the two disagree (see the module docs).
    pub(super) async fn lookup(&self, id: &str) -> Result<Option<Entry>> {
        let (hit, taken) = {
            let index = self.index();
            let hit = index.volumes.get(id).cloned();
            // An LV named `id` that holds a spare or another volume says nothing of `id`.
            let taken = hit.is_none() && index.known(id);
            (hit, taken)
        };
        match hit {
            Some(e) if self.os.lv_device(&e.vg, &e.lv).is_some() => {
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
            None if taken || self.active_device(id).is_none() => return Ok(None),
            None => {}
        }
        tracing::debug!(volume.id = %id, indexed = hit.is_some(), "the volume index and /dev disagree; asking LVM");
        let rows = self.report_all().await?;
        self.fix_entry(id, &rows)
    }

    /// The volume an iolane LV stands for, rebuilt from its size and tags; its ID is the
    /// hash of its name tag (the LV's name unless the LV was a spare).
    pub(super) fn volume_of(lv: &Lv) -> Result<Volume> {
        let bad = |reason: String| Error::Metadata {
            path: format!("lv {}/{}", lv.vg, lv.name),
            reason,
        };
        let t = tags::decode(&lv.tags).map_err(bad)?;
        Ok(Volume {
            id: volume_id_for(&t.name),
            name: t.name,
            capacity_bytes: lv.size,
            fs_type: t.fs_type,
            parameters: t.parameters,
            tier: t.tier,
            source: t.source,
        })
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
