//! Spares: formatted thin LVs a device class keeps for its next volumes of the same size
//! and filesystem (config `spares`, 0 = off).
//!
//! A pipeline's volumes come and go in waves of one size (a Spark executor's scratch claim,
//! a Flink task manager's): each one a `lvcreate`, a `mkfs` at NodeStage and a `lvremove`,
//! the two LVM commands taking most of a cycle and serialising on the VG's lock. With
//! spares, DeleteVolume of a filesystem volume keeps its LV: it swaps the volume's tags for
//! a spare tag (one `lvchange`, one metadata commit, so the LV is either the volume or a
//! spare); a background task then discards every block and runs `mkfs`. CreateVolume of a filesystem volume with no content source takes a prepared
//! spare of its size and filesystem and swaps the spare tag for the volume's tags (one
//! `lvchange`); NodeStage then finds the filesystem and only mounts it. A create that finds
//! none prepared, but one of its size and filesystem on the way (a delete or a preparation
//! in flight), waits for it up to [`SPARE_WAIT`]: preparing takes a fraction of what
//! `lvcreate` and `mkfs` do. Otherwise it makes its LV as before.
//!
//! What holds:
//! - **The volume ID does not move with the LV.** A volume's ID is the hash of its CSI name
//!   (`volume_id_for`), the LV name of a volume made without a spare. A volume made from a
//!   spare keeps the LV's old name; the index maps ID to LV, and a report finds the volume
//!   by its name tag ([`Lv::volume_id`](super::report::Lv::volume_id)). So a late retry of
//!   DeleteVolume for the old volume finds nothing, never the new one.
//! - **No data crosses.** A spare's blocks are discarded before `mkfs`, and a thin LV reads
//!   unprovisioned blocks as zeros. Only a spare prepared by this process is handed out:
//!   after a restart every spare is prepared anew. Until then (a fraction of a second
//!   while the node runs) the deleted volume's blocks are still in the spare, which
//!   nothing mounts or hands out.
//! - **Crashes.** Each tag swap is one commit. A spare found at start-up is prepared again
//!   (or removed, beyond the class's count or with an unreadable tag).
//! - **Admission.** A spare's virtual bytes count as provisioned; a create that does not
//!   fit removes spares until it does, and GetCapacity reports their bytes as free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::index::{Entry, Index};
use super::report::Lv;
use super::{LV_PREFIX, LvmBackend, tags};
use crate::error::Result;
use crate::os::{FsType, Os};
use crate::volume::{CreateSpec, Volume};

/// How long a create waits for a spare of its size and filesystem that is being prepared.
const SPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a create found among the spares.
enum Pick {
    /// This spare, now claimed.
    Taken(String),
    /// None prepared, but one is on the way.
    Coming,
    /// None.
    Nothing,
}

/// Where a spare is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Its volume's tags are being swapped for the spare tag (not counted in admission:
    /// the volume still is).
    Recycling,
    /// Found in a report, not prepared by this process.
    Dirty,
    /// Being discarded and formatted.
    Preparing,
    /// Formatted; a create may take it.
    Clean,
    /// A create is swapping its tags.
    Claimed,
    /// Being removed.
    Removing,
    /// Preparing or removing it failed; the next start-up tries again.
    Broken,
}

/// One spare of the index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Spare {
    /// Position of its class in `LvmBackend::classes`.
    pub(super) class: usize,
    pub(super) vg: String,
    /// Its virtual size.
    pub(super) bytes: u64,
    /// The filesystem it is formatted with; `None` if its tag names none known.
    pub(super) fs: Option<FsType>,
    pub(super) state: State,
}

/// Virtual bytes of `class`'s spares (what admission counts for them).
pub(super) fn bytes_in(index: &Index, class: usize) -> u64 {
    index
        .spares
        .values()
        .filter(|s| s.class == class && s.state != State::Recycling)
        .map(|s| s.bytes)
        .sum()
}

/// Brings the spares of the index in line with those of a report: a known spare keeps its
/// state, a new one is dirty, and one missing from the report is dropped unless a call of
/// this process is working on it.
pub(super) fn absorb(known: &mut HashMap<String, Spare>, found: HashMap<String, Spare>) {
    known.retain(|name, s| {
        found.contains_key(name)
            || matches!(
                s.state,
                State::Recycling | State::Claimed | State::Preparing | State::Removing
            )
    });
    for (name, s) in found {
        known.entry(name).or_insert(s);
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Discards a spare's blocks and formats it (activating it first if needed); marks it
/// clean, or removes it when that fails.
async fn prepare(os: Os, index: Arc<Mutex<Index>>, vg: String, lv: String, fs: FsType) {
    let done = async {
        if os.lv_device(&vg, &lv).is_none() {
            os.activate_lv(&vg, &lv).await?;
        }
        let dev = os
            .lv_device(&vg, &lv)
            .ok_or_else(|| missing_node(&os, &vg, &lv))?;
        os.discard(&dev).await?;
        os.mkfs(&dev, fs).await
    }
    .await;
    match done {
        Ok(()) => {
            let woken = {
                let mut index = lock(&index);
                if let Some(s) = index.spares.get_mut(&lv)
                    && s.state == State::Preparing
                {
                    s.state = State::Clean;
                }
                index.spare_done.clone()
            };
            woken.notify_waiters();
            tracing::debug!(lv.name = %lv, vg = %vg, fs = fs.as_str(), "prepared a spare");
        }
        Err(e) => {
            tracing::warn!(lv.name = %lv, vg = %vg, error = %e, "could not prepare a spare; removing it");
            remove(os, index, vg, lv).await;
        }
    }
}

/// Discards a spare's blocks (if it is active) and removes it.
async fn remove(os: Os, index: Arc<Mutex<Index>>, vg: String, lv: String) {
    let done = async {
        if let Some(dev) = os.lv_device(&vg, &lv) {
            os.discard(&dev).await?;
        }
        os.remove_lv(&vg, &lv).await
    }
    .await;
    let mut index = lock(&index);
    match done {
        Ok(()) => {
            index.spares.remove(&lv);
            tracing::debug!(lv.name = %lv, vg = %vg, "removed a spare");
        }
        Err(e) => {
            if let Some(s) = index.spares.get_mut(&lv) {
                s.state = State::Broken;
            }
            tracing::warn!(lv.name = %lv, vg = %vg, error = %e, "could not remove a spare; the next start-up tries again");
        }
    }
    index.spare_done.notify_waiters();
}

fn missing_node(os: &Os, vg: &str, lv: &str) -> crate::os::Error {
    crate::os::Error::io(
        "open",
        &os.roots().dev.join(vg).join(lv),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the LV is active but its device node is missing",
        ),
    )
}

impl LvmBackend {
    /// The spares of a report, as the index keeps them (all dirty).
    pub(super) fn spares_in(&self, rows: &[Lv]) -> HashMap<String, Spare> {
        rows.iter()
            .filter(|l| l.name.starts_with(LV_PREFIX) && tags::is_spare(&l.tags))
            .filter_map(|l| {
                let class = self.class_index_of(l)?;
                Some((
                    l.name.clone(),
                    Spare {
                        class,
                        vg: l.vg.clone(),
                        bytes: l.size,
                        fs: tags::spare_fs(&l.tags),
                        state: State::Dirty,
                    },
                ))
            })
            .collect()
    }

    /// Starts preparing every dirty spare its class has room for, and removing the rest.
    pub(super) fn tend_spares(&self) {
        let mut prepare_jobs = Vec::new();
        let mut remove_jobs = Vec::new();
        {
            let mut index = self.index();
            let mut kept = vec![0usize; self.classes.len()];
            for s in index.spares.values() {
                if !matches!(s.state, State::Dirty | State::Removing) {
                    kept[s.class] += 1;
                }
            }
            let mut dirty: Vec<String> = index
                .spares
                .iter()
                .filter(|(_, s)| s.state == State::Dirty)
                .map(|(name, _)| name.clone())
                .collect();
            dirty.sort();
            for name in dirty {
                let Some(s) = index.spares.get_mut(&name) else {
                    continue;
                };
                let cap = self.classes[s.class].cfg.spares as usize;
                match s.fs {
                    Some(fs) if kept[s.class] < cap => {
                        kept[s.class] += 1;
                        s.state = State::Preparing;
                        prepare_jobs.push((s.vg.clone(), name, fs));
                    }
                    _ => {
                        s.state = State::Removing;
                        remove_jobs.push((s.vg.clone(), name));
                    }
                }
            }
        }
        for (vg, lv, fs) in prepare_jobs {
            tokio::spawn(prepare(self.os.clone(), self.index.clone(), vg, lv, fs));
        }
        for (vg, lv) in remove_jobs {
            tokio::spawn(remove(self.os.clone(), self.index.clone(), vg, lv));
        }
    }

    /// DeleteVolume through a spare: if the volume's class keeps spares and has room for
    /// one more, and the volume holds a filesystem, swaps its tags for the spare tag (then
    /// discards and formats it in the background). `false`: not kept, remove it as usual.
    pub(super) async fn recycle(&self, id: &str, e: &Entry) -> Result<bool> {
        let cap = self.classes[e.class].cfg.spares as usize;
        let Some(fs) = e.volume.fs_type else {
            return Ok(false);
        };
        {
            let mut index = self.index();
            let held = index.spares.values().filter(|s| s.class == e.class).count();
            if held >= cap || index.spares.contains_key(&e.lv) {
                return Ok(false);
            }
            index.spares.insert(
                e.lv.clone(),
                Spare {
                    class: e.class,
                    vg: e.vg.clone(),
                    bytes: e.volume.capacity_bytes,
                    fs: Some(fs),
                    state: State::Recycling,
                },
            );
        }
        let swapped = self.swap_to_spare(id, e, fs).await;
        let mut index = self.index();
        match swapped {
            Ok(()) => {
                index.volumes.remove(id);
                if let Some(s) = index.spares.get_mut(&e.lv) {
                    s.state = State::Preparing;
                }
                drop(index);
                tracing::debug!(volume.id = %id, lv.name = %e.lv, vg = %e.vg, "kept the volume's LV as a spare");
                tokio::spawn(prepare(
                    self.os.clone(),
                    self.index.clone(),
                    e.vg.clone(),
                    e.lv.clone(),
                    fs,
                ));
                Ok(true)
            }
            Err(err) => {
                index.spares.remove(&e.lv);
                index.spare_done.notify_waiters();
                Err(err)
            }
        }
    }

    /// Swaps the volume's tags for the spare tag. When the swap fails, one report says
    /// whether it happened.
    async fn swap_to_spare(&self, id: &str, e: &Entry, fs: FsType) -> Result<()> {
        let swapped = self
            .os
            .retag_lv(
                &e.vg,
                &e.lv,
                &tags::volume_only(&e.tags),
                &[tags::spare_tag(fs)],
            )
            .await;
        let Err(err) = swapped else {
            return Ok(());
        };
        let rows = self.lvs(&[&e.vg]).await?;
        match rows.iter().find(|l| l.name == e.lv) {
            Some(l) if tags::is_spare(&l.tags) && !l.holds(id) => Ok(()),
            _ => Err(err.into()),
        }
    }

    /// CreateVolume through a spare: a prepared spare of the class with the volume's size
    /// and filesystem becomes the volume (one `lvchange`). `None`: no spare fits (or its
    /// tags could not be swapped), make the LV as usual.
    pub(super) async fn claim_spare(
        &self,
        ci: usize,
        spec: &CreateSpec,
        volume_tags: &[String],
    ) -> Result<Option<Volume>> {
        let class = &self.classes[ci];
        let (Some(fs), None, Some(extent)) = (spec.fs_type, &spec.source, class.extent()) else {
            return Ok(None);
        };
        if class.cfg.spares == 0 {
            return Ok(None);
        }
        let bytes = spec.size.next_multiple_of(extent);
        let deadline = tokio::time::Instant::now() + SPARE_WAIT;
        let lv = loop {
            let done = self.index().spare_done.clone();
            let woken = done.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.pick_spare(ci, fs, bytes) {
                Pick::Taken(lv) => break lv,
                Pick::Nothing => return Ok(None),
                Pick::Coming => {
                    if tokio::time::timeout_at(deadline, woken).await.is_err() {
                        return Ok(None);
                    }
                }
            }
        };
        let vg = class.cfg.vg.clone();
        let version = format!("{}v={}", tags::PREFIX, tags::VERSION);
        let add: Vec<String> = volume_tags
            .iter()
            .filter(|t| **t != version)
            .cloned()
            .collect();
        if let Err(err) = self
            .os
            .retag_lv(&vg, &lv, &[tags::spare_tag(fs)], &add)
            .await
        {
            // Whether the swap happened: one report says.
            let now = self
                .lvs(&[&vg])
                .await
                .ok()
                .and_then(|rows| rows.into_iter().find(|l| l.name == lv));
            match now {
                Some(l) if l.holds(&spec.id) => {}
                Some(l) if tags::is_spare(&l.tags) => {
                    let mut index = self.index();
                    if let Some(s) = index.spares.get_mut(&lv) {
                        s.state = State::Clean;
                    }
                    index.spare_done.notify_waiters();
                    drop(index);
                    tracing::warn!(lv.name = %lv, vg = %vg, error = %err, "could not take a spare; making a new LV");
                    return Ok(None);
                }
                _ => {
                    self.index().spares.remove(&lv);
                    return Err(err.into());
                }
            }
        }
        let volume = spec.volume(bytes);
        self.index_made(ci, lv.clone(), volume_tags.to_vec(), &volume);
        tracing::debug!(volume.id = %spec.id, lv.name = %lv, vg = %vg, size = bytes, "made the volume from a spare");
        Ok(Some(volume))
    }

    /// Claims a prepared spare of class `ci`, filesystem `fs` and `bytes`, if there is one.
    fn pick_spare(&self, ci: usize, fs: FsType, bytes: u64) -> Pick {
        let mut index = self.index();
        let mut fits: Vec<(&String, &mut Spare)> = index
            .spares
            .iter_mut()
            .filter(|(_, s)| s.class == ci && s.fs == Some(fs) && s.bytes == bytes)
            .collect();
        fits.sort_by(|a, b| a.0.cmp(b.0));
        let coming = fits
            .iter()
            .any(|(_, s)| matches!(s.state, State::Recycling | State::Preparing));
        match fits.into_iter().find(|(_, s)| s.state == State::Clean) {
            Some((name, s)) => {
                s.state = State::Claimed;
                Pick::Taken(name.clone())
            }
            None if coming => Pick::Coming,
            None => Pick::Nothing,
        }
    }

    /// Removes `ci`'s spares, one at a time, until a create of `size` bytes is admitted;
    /// returns the usage that admits it, or `None` when no spare is left to remove. The
    /// caller holds the class's admission lock.
    pub(super) async fn drop_spares_for(
        &self,
        ci: usize,
        size: u64,
    ) -> Result<Option<super::admission::PoolUsage>> {
        loop {
            let next = {
                let mut index = self.index();
                let mut idle: Vec<(&String, &mut Spare)> = index
                    .spares
                    .iter_mut()
                    .filter(|(_, s)| {
                        s.class == ci
                            && matches!(s.state, State::Clean | State::Dirty | State::Broken)
                    })
                    .collect();
                idle.sort_by(|a, b| a.0.cmp(b.0));
                idle.into_iter().next().map(|(name, s)| {
                    s.state = State::Removing;
                    (name.clone(), s.vg.clone())
                })
            };
            let Some((lv, vg)) = next else {
                return Ok(None);
            };
            tracing::info!(lv.name = %lv, vg = %vg, "removing a spare to make room for a volume");
            remove(self.os.clone(), self.index.clone(), vg, lv.clone()).await;
            if self.index().spares.contains_key(&lv) {
                // Not removed (it is marked broken): nothing more to gain from spares.
                return Ok(None);
            }
            let (u, _) = self.admission_usage(ci).await?;
            if super::admission::admit(&self.classes[ci].cfg, &u, size).is_ok() {
                return Ok(Some(u));
            }
        }
    }
}
