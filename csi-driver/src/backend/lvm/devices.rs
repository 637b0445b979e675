//! The block devices of lvm volumes: the kernel's node of an active LV, activation, and
//! read-only loop devices over an LV.
//!
//! Block devices: thin LVs stay active from creation to removal, so [`Backend::detach`](super::Backend::detach) is a
//! no-op: an active thin LV costs a device-mapper table and nothing else, and keeping it
//! keeps its device number stable for the volume's life (IO limits are keyed on it). The
//! device the node service uses is the kernel's node for the LV (`/dev/dm-N`). A read-only
//! raw-block publication gets a read-only loop device on top of the LV, which the kernel
//! itself keeps read-only, exactly as the loop backend does.

use std::path::{Path, PathBuf};

use super::LvmBackend;
use crate::error::{Error, Result};
use crate::os;

impl LvmBackend {
    /// The device node of an LV that must be active.
    pub(super) fn device(&self, vg: &str, lv: &str) -> Result<PathBuf> {
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
    pub(super) fn active_device(&self, id: &str) -> Option<PathBuf> {
        let (vg, lv) = {
            let index = self.index();
            match index.volumes.get(id) {
                Some(e) => (Some(e.vg.clone()), e.lv.clone()),
                // An LV of that name holds a spare or another volume.
                None if index.known(id) => return None,
                None => (None, id.to_owned()),
            }
        };
        match vg {
            Some(vg) => self.os.lv_device(&vg, &lv),
            None => self
                .ready_classes()
                .find_map(|c| self.os.lv_device(&c.cfg.vg, &lv)),
        }
    }

    /// [`Backend::attach`](super::Backend::attach).
    pub(super) async fn attach_volume(&self, id: &str) -> Result<PathBuf> {
        if let Some(dev) = self.active_device(id) {
            return Ok(dev);
        }
        let e = self
            .lookup(id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(id.to_owned()))?;
        self.os.activate_lv(&e.vg, &e.lv).await?;
        tracing::debug!(volume.id = %id, vg = %e.vg, lv = %e.lv, "activated thin LV");
        let dev = self.device(&e.vg, &e.lv)?;
        if let Some(x) = self.index().volumes.get_mut(id) {
            x.active = true;
        }
        Ok(dev)
    }

    /// [`Backend::attached`](super::Backend::attached).
    pub(super) async fn attached_device(&self, id: &str) -> Result<Option<PathBuf>> {
        Ok(self.active_device(id))
    }

    /// [`Backend::devices`](super::Backend::devices).
    pub(super) async fn volume_devices(&self, id: &str) -> Result<Vec<PathBuf>> {
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

    /// [`Backend::attach_read_only`](super::Backend::attach_read_only).
    pub(super) async fn attach_volume_read_only(&self, id: &str) -> Result<PathBuf> {
        let dev = self.attach_volume(id).await?;
        let ro = self.os.loop_attach(&dev, true).await?;
        tracing::debug!(volume.id = %id, device = %ro.display(), "attached read-only loop device over the LV");
        Ok(ro)
    }

    /// [`Backend::release_read_only`](super::Backend::release_read_only).
    pub(super) async fn release_volume_read_only(&self, id: &str, device: &Path) -> Result<()> {
        let Some(dev) = self.active_device(id) else {
            return Ok(());
        };
        let ours = self
            .os
            .loops_for_file(&dev)?
            .iter()
            .any(|l| l.read_only && l.path == device);
        if ours && self.os.loop_detach(device, &dev).await? {
            tracing::debug!(volume.id = %id, device = %device.display(), "detached read-only loop device");
        }
        Ok(())
    }
}
