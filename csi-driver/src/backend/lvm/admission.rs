//! Admission in the lvm backend: whether a pool can take more virtual bytes, as pure
//! functions over its usage figures ([`PoolUsage`]), and where those figures come from.
//!
//! Admission in create and expand reads the pool's data and metadata usage in-process with
//! the device-mapper status ioctl ([`crate::os::dm`]) and sums virtual sizes from the index
//! plus the thin LVs of the pool that are not iolane's (as of the last report), so a create
//! is one `lvcreate` and nothing else. When the ioctl fails, or no report of the pool has
//! been seen yet, admission falls back to one `lvs` of the class's VG as before. The
//! watermarks are advisory either way; the pool's `--errorwhenfull y` is the hard stop.

use super::index::PoolFacts;
use super::report::{Lv, extent_of};
use super::{DeviceClass, LvmBackend};
use crate::error::{Error, Result};
use crate::os::dm::ThinPoolStatus;
use crate::volume::Capacity;

/// One thin pool's figures, from one report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PoolUsage {
    /// Size of the pool's data LV.
    pub(super) data_bytes: u64,
    /// Sum of the virtual sizes of every thin LV in the pool (iolane's or not).
    pub(super) provisioned: u64,
    pub(super) data_percent: f64,
    pub(super) metadata_percent: f64,
    pub(super) extent: u64,
}

impl LvmBackend {
    /// Pool usage for admission without a spawn: the thin-pool status from the kernel and
    /// the provisioned bytes from the index; `Err` says why it is not available.
    pub(super) fn fast_usage(&self, class: usize) -> std::result::Result<PoolUsage, String> {
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
                .sum::<u64>()
                + index
                    .snapshots
                    .values()
                    .filter(|e| e.class == class)
                    .map(|e| e.bytes)
                    .sum::<u64>()
                + super::spares::bytes_in(&index, class);
            (facts, indexed + index.reserved_in(class, None))
        };
        let status = self
            .pool_status
            .thin_pool_status(&c.vg, &c.thin_pool)
            .map_err(|e| e.to_string())?;
        Ok(in_process_usage(facts, indexed, &status))
    }

    /// Admission figures for `class`: from [`Self::fast_usage`], else from one `lvs` of
    /// its VG (whose rows are returned too). Callers hold the class's admission lock.
    pub(super) async fn admission_usage(
        &self,
        class: usize,
    ) -> Result<(PoolUsage, Option<Vec<Lv>>)> {
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
}

/// Figures of a pool from what the index keeps of it, the virtual bytes of the class's
/// indexed volumes and in-flight creates (`ours`), and the pool's device-mapper status.
pub(super) fn in_process_usage(facts: PoolFacts, ours: u64, status: &ThinPoolStatus) -> PoolUsage {
    PoolUsage {
        data_bytes: facts.data_bytes,
        provisioned: facts.foreign + ours,
        data_percent: status.data_percent(),
        metadata_percent: status.metadata_percent(),
        extent: facts.extent,
    }
}

/// Figures of `c`'s pool from a report of its VG.
pub(super) fn usage(c: &DeviceClass, rows: &[Lv]) -> Result<PoolUsage> {
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
pub(super) fn past_watermark(c: &DeviceClass, u: &PoolUsage) -> Option<String> {
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
pub(super) fn provisionable(c: &DeviceClass, u: &PoolUsage) -> (u64, u64) {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let limit = (u.data_bytes as f64 * c.overprovision_ratio) as u64;
    let left = limit.saturating_sub(u.provisioned) / u.extent * u.extent;
    (left, limit)
}

pub(super) fn capacity_of(c: &DeviceClass, u: &PoolUsage) -> Capacity {
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
pub(super) fn admit(c: &DeviceClass, u: &PoolUsage, grow: u64) -> Result<()> {
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
