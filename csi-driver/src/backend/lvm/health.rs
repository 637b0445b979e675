//! What the lvm backend reports of its pools and volumes: each pool's usage for
//! `iolane status`, and a volume's condition when its thin pool cannot take writes.

use super::admission::{past_watermark, usage};
use super::report::Lv;
use super::{DeviceClass, LvmBackend, tags};
use crate::error::Result;

impl LvmBackend {
    /// [`Backend::pools`](super::Backend::pools).
    pub(super) async fn pool_statuses(&self) -> Result<Vec<crate::status::PoolStatus>> {
        let rows = self.report_all().await?;
        let mut out = Vec::new();
        for class in &self.classes {
            let c = &class.cfg;
            let location = format!("{}/{}", c.vg, c.thin_pool);
            let status = match (class.not_ready(), usage(c, &rows)) {
                (Some(reason), _) => crate::status::PoolStatus {
                    name: c.name.clone(),
                    location,
                    problem: Some(format!("not ready: {reason}")),
                    ..Default::default()
                },
                (None, Err(e)) => crate::status::PoolStatus {
                    name: c.name.clone(),
                    location,
                    problem: Some(e.to_string()),
                    ..Default::default()
                },
                (None, Ok(u)) => crate::status::PoolStatus {
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

    /// [`Backend::conditions`](super::Backend::conditions).
    pub(super) async fn volume_conditions(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let rows = self.report_all().await?;
        let mut out = std::collections::BTreeMap::new();
        for (id, lv) in rows
            .iter()
            .filter(|l| tags::is_ours(&l.tags))
            .filter_map(|l| Some((l.volume_id()?, l)))
        {
            let Some(class) = self.class_of(lv) else {
                continue;
            };
            let c = &class.cfg;
            let pool = rows
                .iter()
                .find(|l| l.vg == c.vg && l.name == c.thin_pool && l.is_thin_pool());
            if let Some(why) = pool_condition(c, lv, pool) {
                out.insert(id, why);
            }
        }
        Ok(out)
    }

    /// [`Backend::condition`](super::Backend::condition).
    pub(super) async fn volume_condition(&self, id: &str) -> Result<Option<String>> {
        let rows = self.report_all().await?;
        let Some((class, lv)) = rows.iter().find_map(|l| {
            (l.holds(id) && tags::is_ours(&l.tags))
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
