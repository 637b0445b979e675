//! Snapshots and clones in the lvm backend: a snapshot is a thin snapshot of a volume's LV
//! (`iolsnap-*`, inactive, tagged by [`tags::encode_snapshot`]); a clone is a thin
//! snapshot of a snapshot or of a volume, made active and tagged as a volume, then grown
//! if it was asked to be larger than its source.
//!
//! Both live in the pool of their source, so a clone is in the source's device class (on
//! the source's node, which topology already says). Admission counts each snapshot's and
//! clone's virtual size like a volume's. Deleting a snapshot discards its blocks first, as
//! deleting a volume does: thin discards only unmap the deleted LV's own mappings, so the
//! blocks it still shares with its source or with clones stay theirs.

use super::admission::admit;
use super::index::SnapEntry;
use super::report::Lv;
use super::{Created, LvmBackend, tags};
use crate::backend::CreatedSnapshot;
use crate::error::{Error, Result};
use crate::volume::{ContentSource, CreateSpec, SNAPSHOT_PREFIX, Snapshot, SnapshotSpec};

impl LvmBackend {
    /// Every snapshot of every ready class, as one report says.
    fn snapshots_in(&self, rows: &[Lv]) -> Vec<SnapEntry> {
        rows.iter()
            .filter_map(|lv| match self.snap_entry_of(lv)? {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(lv.name = %lv.name, vg = %lv.vg, error = %e, "skipping a snapshot LV whose iolane tags cannot be read");
                    None
                }
            })
            .collect()
    }

    /// [`Backend::get_snapshot`](crate::backend::Backend::get_snapshot).
    pub(super) async fn get_snapshot_lv(&self, id: &str) -> Result<Option<Snapshot>> {
        if !id.starts_with(SNAPSHOT_PREFIX) {
            return Ok(None);
        }
        let rows = self.report_all().await?;
        Ok(self
            .snapshots_in(&rows)
            .into_iter()
            .find(|e| e.snapshot.id == id)
            .map(|e| e.snapshot))
    }

    /// [`Backend::list_snapshots`](crate::backend::Backend::list_snapshots).
    pub(super) async fn list_snapshot_lvs(&self) -> Result<Vec<Snapshot>> {
        let rows = self.report_all().await?;
        Ok(self
            .snapshots_in(&rows)
            .into_iter()
            .map(|e| e.snapshot)
            .collect())
    }

    /// What an LV named like the snapshot found in a report means for a create: our
    /// snapshot (already taken), or a foreign LV in the way.
    fn existing_snapshot(&self, id: &str, rows: &[Lv]) -> Result<Option<Snapshot>> {
        let Some(lv) = rows.iter().find(|l| l.name == id) else {
            return Ok(None);
        };
        match self.snap_entry_of(lv) {
            Some(Ok(e)) => {
                let s = e.snapshot.clone();
                self.index().snapshots.insert(id.to_owned(), e);
                Ok(Some(s))
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::FailedPrecondition(format!(
                "LV {}/{id} exists and is not an iolane snapshot of a ready device class",
                lv.vg
            ))),
        }
    }

    /// [`Backend::create_snapshot`](crate::backend::Backend::create_snapshot).
    pub(super) async fn create_snapshot_lv(&self, spec: &SnapshotSpec) -> Result<CreatedSnapshot> {
        let rows = self.report_all().await?;
        if let Some(s) = self.existing_snapshot(&spec.id, &rows)? {
            return Ok(CreatedSnapshot::Existing(s));
        }
        let src = self
            .fix_entry(&spec.source_volume_id, &rows)?
            .ok_or_else(|| Error::VolumeNotFound(spec.source_volume_id.clone()))?;
        let size = src.volume.capacity_bytes;
        let tags = tags::encode_snapshot(spec, size, src.volume.fs_type)?;
        let class = &self.classes[src.class];
        let c = &class.cfg;
        {
            let _admit = class.admission.lock().await;
            let (u, _) = self.admission_usage(src.class).await?;
            admit(c, &u, size)?;
            self.index().reserved.insert(
                spec.id.clone(),
                (src.class, size.next_multiple_of(u.extent)),
            );
        }
        let created = self
            .os
            .create_thin_snapshot(&c.vg, &src.lv, &spec.id, &tags, false)
            .await;
        self.index().reserved.remove(&spec.id);
        if let Err(err) = created {
            // A snapshot of this name that a killed iolane's lvcreate finished meanwhile
            // makes lvcreate fail: one report says which.
            let Ok(rows) = self.lvs(&[&c.vg]).await else {
                return Err(err.into());
            };
            return match self.existing_snapshot(&spec.id, &rows)? {
                Some(s) => Ok(CreatedSnapshot::Existing(s)),
                None => Err(err.into()),
            };
        }
        let snapshot = Snapshot {
            id: spec.id.clone(),
            name: spec.name.clone(),
            source_volume_id: spec.source_volume_id.clone(),
            size_bytes: size,
            created_ns: spec.created_ns,
            fs_type: src.volume.fs_type,
        };
        self.index().snapshots.insert(
            spec.id.clone(),
            SnapEntry {
                class: src.class,
                vg: c.vg.clone(),
                snapshot: snapshot.clone(),
                bytes: size,
            },
        );
        tracing::debug!(snapshot.id = %spec.id, volume.id = %spec.source_volume_id, vg = %c.vg, "created thin snapshot");
        Ok(CreatedSnapshot::New(snapshot))
    }

    /// [`Backend::delete_snapshot`](crate::backend::Backend::delete_snapshot).
    pub(super) async fn delete_snapshot_lv(&self, id: &str) -> Result<bool> {
        if !id.starts_with(SNAPSHOT_PREFIX) {
            return Ok(false);
        }
        let rows = self.report_all().await?;
        let Some(lv) = rows
            .iter()
            .find(|l| l.name == id && self.snap_entry_of(l).is_some())
        else {
            self.index().snapshots.remove(id);
            return Ok(false);
        };
        self.remove(lv).await?;
        self.index().snapshots.remove(id);
        Ok(true)
    }

    /// [`Backend::create`](crate::backend::Backend::create) of a clone: a thin snapshot of
    /// `src` (a snapshot or a volume in the requested class's pool), active, tagged as a
    /// volume, grown to the requested size.
    pub(super) async fn create_clone(
        &self,
        spec: &CreateSpec,
        src: &ContentSource,
    ) -> Result<Created> {
        let (ci, class) = self.class_for(&spec.parameters)?;
        let c = &class.cfg;
        let tags = tags::encode(spec)?;
        if let Some(e) = self.lookup(&spec.id).await? {
            return Ok(Created::Existing(e.volume));
        }
        let rows = self.report_all().await?;
        if let Some(v) = self.existing_in(c, &spec.id, &rows)? {
            return Ok(Created::Existing(v));
        }
        let is_source = |l: &&Lv| match src {
            ContentSource::Snapshot(id) => l.name == *id && self.snap_entry_of(l).is_some(),
            ContentSource::Volume(id) => l.holds(id) && self.entry_of(l).is_some(),
        };
        let origin = match rows.iter().find(is_source) {
            Some(l) if l.is_thin_in(&c.vg, &c.thin_pool) => l,
            Some(l) => {
                let other = self
                    .class_of(l)
                    .map_or_else(|| l.vg.clone(), |k| k.cfg.name.clone());
                return Err(Error::invalid(
                    src.field(),
                    format!(
                        "{} is in device class {other}, the new volume's is {}: a clone is made in the pool of its source",
                        src.id(),
                        c.name
                    ),
                ));
            }
            None => {
                return Err(match src {
                    ContentSource::Snapshot(id) => Error::SnapshotNotFound(id.clone()),
                    ContentSource::Volume(id) => Error::VolumeNotFound(id.clone()),
                });
            }
        };
        if spec.size < origin.size {
            return Err(Error::OutOfRange(format!(
                "{}: the source holds {} bytes, more than the {} bytes asked for",
                src.field(),
                origin.size,
                spec.size
            )));
        }
        let lv = self.new_lv_name(&spec.id)?;
        let u = {
            let _admit = class.admission.lock().await;
            let (u, _) = self.admission_usage(ci).await?;
            admit(c, &u, spec.size)?;
            self.index()
                .reserved
                .insert(lv.clone(), (ci, spec.size.next_multiple_of(u.extent)));
            u
        };
        let made = self
            .os
            .create_thin_snapshot(&c.vg, &origin.name, &lv, &tags, true)
            .await;
        if let Err(err) = made {
            self.index().reserved.remove(&lv);
            let Ok(rows) = self.lvs(&[&c.vg]).await else {
                return Err(err.into());
            };
            return match self.existing_in(c, &spec.id, &rows)? {
                Some(v) => Ok(Created::Existing(v)),
                None => Err(err.into()),
            };
        }
        if spec.size > origin.size
            && let Err(err) = self.os.extend_lv(&c.vg, &lv, spec.size).await
        {
            // Not a volume of the size asked for: undo it, so a retry starts afresh.
            let rows = self.lvs(&[&c.vg]).await?;
            if let Some(made) = rows.iter().find(|l| l.name == lv) {
                self.remove(made).await?;
            }
            self.index().reserved.remove(&lv);
            return Err(err.into());
        }
        let volume = spec.volume(spec.size.max(origin.size).next_multiple_of(u.extent));
        self.index_made(ci, lv, tags, &volume);
        tracing::debug!(volume.id = %spec.id, source = %src.id(), vg = %c.vg, size = volume.capacity_bytes, "created thin clone");
        Ok(Created::New(volume))
    }
}
