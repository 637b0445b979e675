//! Start-up of the lvm backend: adopting or building each device class's VG and thin
//! pool ([`LvmBackend::open`]), and the sweep of volume LVs a create did not finish.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use super::index::Index;
use super::report::{self, LV_FIELDS, Lv, PV_FIELDS, extent_of, parse_lvs, parse_pvs};
use super::{Class, DeviceClass, LV_PREFIX, LvmBackend, SetupRetry, WipePolicy, tags};
use crate::error::{Error, Result};
use crate::os::lvm::{Report, ThinPoolSpec};
use crate::os::{Os, Signature};

/// What start-up did with a device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Adopted,
    Created,
}

impl LvmBackend {
    /// Sets up every class (adopting existing pools, building new ones on blank devices)
    /// and removes untagged volume LVs. Never fails: a class that cannot be set up is
    /// logged and reported by [`Backend::ready`](super::Backend::ready), which tries it
    /// again later ([`Self::retry_setup`]).
    pub async fn open(os: Os, classes: Vec<DeviceClass>) -> Self {
        let mut out = Vec::with_capacity(classes.len());
        for cfg in classes {
            let state = init_class(&os, &cfg).await.map(|(setup, extent)| {
                log_ready(&cfg, setup, extent);
                extent
            });
            if let Err(reason) = &state {
                tracing::error!(
                    device_class = %cfg.name,
                    vg = %cfg.vg,
                    %reason,
                    "device class is not ready: /healthz reports it; its set-up is tried again after {} s, then at most every {} s",
                    super::SETUP_RETRY_FIRST.as_secs(),
                    super::SETUP_RETRY_MAX.as_secs()
                );
            }
            out.push(Class {
                cfg,
                state: std::sync::RwLock::new(state),
                admission: Mutex::new(()),
            });
        }
        let pools = vec![None; out.len()];
        let backend = LvmBackend {
            pool_status: Arc::new(os.clone()),
            os,
            classes: out,
            last_setup: Mutex::new(SetupRetry {
                at: Instant::now(),
                wait: super::SETUP_RETRY_FIRST,
            }),
            index: std::sync::Arc::new(std::sync::Mutex::new(Index {
                volumes: HashMap::new(),
                snapshots: HashMap::new(),
                reserved: HashMap::new(),
                pools,
                spares: HashMap::new(),
                spare_done: Arc::default(),
            })),
        };
        backend.index_ready_classes().await;
        backend
    }

    /// Sweeps the ready classes' untagged volume LVs and indexes their volumes.
    async fn index_ready_classes(&self) {
        match self.sweep().await {
            Ok(rows) => {
                self.absorb_all(&rows);
                let (volumes, spares) = {
                    let index = self.index();
                    (index.volumes.len(), index.spares.len())
                };
                tracing::info!(
                    volumes,
                    spares,
                    "indexed the volumes of every ready device class"
                );
                self.tend_spares();
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not look for untagged volume LVs; the volume index starts empty and fills from LVM on demand"
            ),
        }
    }

    /// Sets up again every class that is not ready, if the wait since the last try has
    /// passed (5 s after the first failure, doubling up to 30 s) and no other retry is
    /// running: a device cleared by
    /// the operator, or an LVM report that hung once (a command of a SIGKILLed predecessor
    /// can hold the VG for minutes), then needs no restart. A class that turns ready is
    /// swept and indexed as at start-up.
    pub(super) async fn retry_setup(&self) {
        if self.classes.iter().all(Class::is_ready) {
            return;
        }
        let Ok(mut last) = self.last_setup.try_lock() else {
            return;
        };
        if last.at.elapsed() < last.wait {
            return;
        }
        let mut turned_ready = false;
        for class in self.classes.iter().filter(|c| !c.is_ready()) {
            let cfg = &class.cfg;
            match init_class(&self.os, cfg).await {
                Ok((setup, extent)) => {
                    log_ready(cfg, setup, extent);
                    class.set_state(Ok(extent));
                    turned_ready = true;
                }
                Err(reason) => {
                    if class.not_ready().as_ref() == Some(&reason) {
                        tracing::debug!(device_class = %cfg.name, %reason, "device class is still not ready");
                    } else {
                        tracing::warn!(device_class = %cfg.name, vg = %cfg.vg, %reason, "device class is still not ready, for another reason");
                    }
                    class.set_state(Err(reason));
                }
            }
        }
        *last = SetupRetry {
            at: Instant::now(),
            wait: (last.wait * 2).min(super::SETUP_RETRY_MAX),
        };
        if turned_ready {
            self.index_ready_classes().await;
        }
    }

    /// Lets the next [`Backend::ready`](super::Backend::ready) retry the set-up at once.
    #[cfg(test)]
    pub(super) async fn expire_setup_retry(&self) {
        let mut last = self.last_setup.lock().await;
        if let Some(earlier) = last.at.checked_sub(last.wait) {
            last.at = earlier;
        }
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
}

fn log_ready(cfg: &DeviceClass, setup: Setup, extent: u64) {
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

pub(super) fn lcm(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        a.max(b)
    } else {
        a / gcd(a, b) * b
    }
}
