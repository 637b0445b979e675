//! The volume operations of the lvm backend: get, list, create, delete, expand, the tier
//! swap of live re-tiering and the capacity left, each against the index and admission.

use super::admission::{admit, capacity_of, usage};
use super::index::Entry;
use super::report::Lv;
use super::{Created, DeviceClass, LV_PREFIX, LvmBackend, tags};
use crate::error::{Error, Result};
use crate::volume::{Capacity, CreateSpec, Parameters, Volume};

impl LvmBackend {
    /// What an LV named `id` found in `class`'s VG means for a create: our volume
    /// (already existing), or a foreign LV in the way.
    pub(super) fn existing_in(
        &self,
        class: &DeviceClass,
        id: &str,
        rows: &[Lv],
    ) -> Result<Option<Volume>> {
        let Some(lv) = rows.iter().find(|l| l.answers_for(id)) else {
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

    /// Discards an LV's blocks (activating it first if needed), then removes it.
    pub(super) async fn remove(&self, lv: &Lv) -> Result<()> {
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
    pub(super) async fn remove_volume(&self, id: &str, e: &Entry) -> Result<()> {
        let dev = self.volume_device(e).await?;
        // Freed blocks go back to the pool; without the discard a pool that does not zero
        // new chunks could hand this volume's bytes to the next one.
        self.os.discard(&dev).await?;
        if let Err(err) = self.os.remove_lv(&e.vg, &e.lv).await {
            let rows = self.lvs(&[&e.vg]).await?;
            if rows.iter().any(|l| l.name == e.lv) {
                return Err(err.into());
            }
            tracing::debug!(volume.id = %id, vg = %e.vg, error = %err, "lvremove failed but the LV is gone");
        }
        self.index().volumes.remove(id);
        tracing::debug!(volume.id = %id, lv.name = %e.lv, vg = %e.vg, "discarded and removed LV");
        Ok(())
    }

    /// The name for a new volume's LV: its ID, unless a spare or a volume made from one
    /// holds that name (the CSI name was used before), then a fresh random one.
    pub(super) fn new_lv_name(&self, id: &str) -> Result<String> {
        if self.index().known(id) {
            random_lv_name()
        } else {
            Ok(id.to_owned())
        }
    }

    /// The device node of an indexed volume's LV, activating the LV if needed.
    pub(super) async fn volume_device(&self, e: &Entry) -> Result<std::path::PathBuf> {
        match self.os.lv_device(&e.vg, &e.lv) {
            Some(dev) => Ok(dev),
            None => {
                self.os.activate_lv(&e.vg, &e.lv).await?;
                self.device(&e.vg, &e.lv)
            }
        }
    }

    /// [`Backend::get`](super::Backend::get).
    pub(super) async fn get_volume(&self, id: &str) -> Result<Option<Volume>> {
        Ok(self.lookup(id).await?.map(|e| e.volume))
    }

    /// [`Backend::list`](super::Backend::list).
    pub(super) async fn list_volumes(&self) -> Result<Vec<Volume>> {
        // ListVolumes is authoritative: it reads LVM, and the index follows what it read.
        let rows = self.report_all().await?;
        self.absorb_all(&rows);
        self.tend_spares();
        let mut out = Vec::new();
        for lv in rows.iter().filter(|l| {
            l.name.starts_with(LV_PREFIX)
                && tags::is_ours(&l.tags)
                && !tags::is_spare(&l.tags)
                && self.class_of(l).is_some()
        }) {
            match Self::volume_of(lv) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(lv.name = %lv.name, vg = %lv.vg, error = %e, "skipping an LV whose iolane tags cannot be read");
                }
            }
        }
        Ok(out)
    }

    /// [`Backend::create`](super::Backend::create).
    pub(super) async fn create_volume(&self, spec: &CreateSpec) -> Result<Created> {
        let (ci, class) = self.class_for(&spec.parameters)?;
        let c = &class.cfg;
        let tags = tags::encode(spec)?;
        // The volume may exist in any class; the driver compares it with the request.
        if let Some(e) = self.lookup(&spec.id).await? {
            return Ok(Created::Existing(e.volume));
        }
        if let Some(v) = self.claim_spare(ci, spec, &tags).await? {
            return Ok(Created::New(v));
        }
        // The LV is named by the volume ID, unless a spare or a volume made from one holds
        // that name (the name was used before): then by a fresh random one.
        let lv = self.new_lv_name(&spec.id)?;
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
            let u = match admit(c, &u, spec.size) {
                Ok(()) => u,
                // Spares hold virtual bytes a volume can have.
                Err(err) => match self.drop_spares_for(ci, spec.size).await? {
                    Some(u) => u,
                    None => return Err(err),
                },
            };
            self.index()
                .reserved
                .insert(lv.clone(), (ci, spec.size.next_multiple_of(u.extent)));
            u
        };
        let created = self
            .os
            .create_thin_lv(&c.vg, &c.thin_pool, &lv, spec.size, &tags)
            .await;
        if created.is_err() {
            self.index().reserved.remove(&lv);
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
        let volume = spec.volume(spec.size.next_multiple_of(u.extent));
        self.index_made(ci, lv.clone(), tags, &volume);
        tracing::debug!(volume.id = %spec.id, lv.name = %lv, vg = %c.vg, size = spec.size, "created thin LV");
        Ok(Created::New(volume))
    }

    /// [`Backend::delete`](super::Backend::delete).
    pub(super) async fn delete_volume(&self, id: &str) -> Result<bool> {
        let Some(e) = self.lookup(id).await? else {
            return Ok(false);
        };
        if !self.recycle(id, &e).await? {
            self.remove_volume(id, &e).await?;
        }
        Ok(true)
    }

    /// [`Backend::capacity`](super::Backend::capacity).
    pub(super) async fn capacity_left(&self, parameters: &Parameters) -> Result<Capacity> {
        let (ci, class) = self.class_for(parameters)?;
        let rows = self.lvs(&[&class.cfg.vg]).await?;
        self.absorb_pool(ci, &rows);
        let mut u = usage(&class.cfg, &rows)?;
        let index = self.index();
        // Spares give their bytes up to a create that needs them.
        u.provisioned = (u.provisioned + index.reserved_in(ci, Some(&rows)))
            .saturating_sub(super::spares::bytes_in(&index, ci));
        drop(index);
        Ok(capacity_of(&class.cfg, &u))
    }

    /// [`Backend::set_tier`](super::Backend::set_tier): the old tier tags out and the new
    /// ones in, in one `lvchange`; the index follows.
    pub(super) async fn set_volume_tier(
        &self,
        id: &str,
        tier: &iops_controller::ResolvedTier,
    ) -> Result<Volume> {
        let e = self
            .lookup(id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?;
        if e.volume.tier.as_ref() == Some(tier) {
            return Ok(e.volume);
        }
        let old = match &e.volume.tier {
            Some(t) => tags::tier_tags(t)?,
            None => Vec::new(),
        };
        let new = tags::tier_tags(tier)?;
        let delete: Vec<String> = old.iter().filter(|t| !new.contains(t)).cloned().collect();
        let add: Vec<String> = new.iter().filter(|t| !old.contains(t)).cloned().collect();
        self.os.retag_lv(&e.vg, &e.lv, &delete, &add).await?;
        let mut volume = e.volume;
        volume.tier = Some(tier.clone());
        if let Some(x) = self.index().volumes.get_mut(id) {
            x.volume.tier = Some(tier.clone());
            x.tags.retain(|t| !delete.contains(t));
            x.tags.extend(add);
        }
        tracing::debug!(volume.id = %id, vg = %e.vg, tier = %tier.name, "replaced the tier tags");
        Ok(volume)
    }

    /// [`Backend::expand`](super::Backend::expand).
    pub(super) async fn expand_volume(&self, id: &str, size: u64) -> Result<u64> {
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
                    .find(|l| l.holds(id) && l.is_thin_in(&c.vg, &c.thin_pool))
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
        self.os.extend_lv(&c.vg, &e.lv, size).await?;
        let new = size.next_multiple_of(u.extent);
        if let Some(x) = self.index().volumes.get_mut(id) {
            x.volume.capacity_bytes = new;
        }
        tracing::debug!(volume.id = %id, vg = %c.vg, size, "extended thin LV");
        Ok(new)
    }
}

/// A fresh LV name in the volume ID's form, for a volume whose own ID names an LV that
/// holds something else.
fn random_lv_name() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| crate::os::Error::io("read", std::path::Path::new("/dev/urandom"), e))?;
    let mut name = String::from(LV_PREFIX);
    for x in b {
        name.push_str(&format!("{x:02x}"));
    }
    Ok(name)
}
