//! LVM commands and the block-device commands around them (`wipefs`, `blkdiscard`).
//!
//! Argv only, through the [`CommandRunner`](super::CommandRunner) (which sets `LC_ALL=C`),
//! each with a timeout. Names reaching these argvs are VG and pool names from the validated
//! config, volume IDs from `volume_id_for`, or LV names read back from LVM itself; tags
//! come from the lvm backend's encoder, which only emits LVM's tag characters. Reports are
//! returned as the JSON text LVM printed; the lvm backend parses them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cmd, Os, Result};

/// LVM commands wait for the VG lock; give them room without hanging a call forever.
const LVM_TIMEOUT: Duration = Duration::from_secs(120);
/// Discarding a large, mostly provisioned volume can take a while on slow devices.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(600);
const WIPE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which LVM report to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `lvs`: one row per (visible) LV.
    Lv,
    /// `pvs`: one row per PV, orphans included.
    Pv,
}

/// How to create a thin pool.
#[derive(Debug, Clone)]
pub struct ThinPoolSpec<'a> {
    pub vg: &'a str,
    pub pool: &'a str,
    /// Share of the VG for the pool's data, in percent.
    pub percent_of_vg: u32,
    /// Chunk size in bytes, a multiple of 64 KiB.
    pub chunk_size: u64,
    /// Zero newly provisioned chunks.
    pub zero: bool,
}

fn yn(b: bool) -> &'static str {
    if b { "y" } else { "n" }
}

/// A size in bytes as an LVM size argument (`b` = bytes; LVM rounds up to extents).
fn bytes(size: u64) -> String {
    format!("{size}b")
}

impl Os {
    /// Runs one JSON report with exactly `fields`, limited to `vgs` (all VGs if empty),
    /// and returns what it printed.
    pub async fn lvm_report(&self, kind: Report, fields: &[&str], vgs: &[&str]) -> Result<String> {
        let program = match kind {
            Report::Lv => "lvs",
            Report::Pv => "pvs",
        };
        let mut cmd = Cmd::new(program, LVM_TIMEOUT)
            .arg("--reportformat")
            .arg("json")
            .arg("--units")
            .arg("b")
            .arg("--nosuffix")
            .arg("-o")
            .arg(fields.join(","));
        for vg in vgs {
            cmd = cmd.arg(vg);
        }
        Ok(self.run_ok(cmd).await?.stdout)
    }

    /// Erases every signature on `device` (`wipefs -a`; it refuses a device in use).
    pub async fn wipe_signatures(&self, device: &Path) -> Result<()> {
        self.run_ok(
            Cmd::new("wipefs", WIPE_TIMEOUT)
                .arg("-a")
                .arg("--")
                .arg(device),
        )
        .await?;
        Ok(())
    }

    /// Makes a blank device an LVM physical volume.
    pub async fn pvcreate(&self, device: &Path) -> Result<()> {
        self.run_ok(Cmd::new("pvcreate", LVM_TIMEOUT).arg(device))
            .await?;
        Ok(())
    }

    /// Creates a VG over physical volumes.
    pub async fn vgcreate(&self, vg: &str, devices: &[PathBuf]) -> Result<()> {
        let mut cmd = Cmd::new("vgcreate", LVM_TIMEOUT).arg(vg);
        for d in devices {
            cmd = cmd.arg(d);
        }
        self.run_ok(cmd).await?;
        Ok(())
    }

    /// Creates a thin pool that errors (instead of queueing IO) when full.
    pub async fn create_thin_pool(&self, spec: &ThinPoolSpec<'_>) -> Result<()> {
        // `-T ... VG/POOL`, not `--type thin-pool`: lvm 2.03.16 refuses `--errorwhenfull`
        // with the latter ("Option --errorwhenfull is unsupported with thin pools").
        let cmd = Cmd::new("lvcreate", LVM_TIMEOUT)
            .arg("-T")
            .arg("-l")
            .arg(format!("{}%VG", spec.percent_of_vg))
            .arg("--chunksize")
            .arg(format!("{}k", spec.chunk_size / 1024))
            .arg("--zero")
            .arg(yn(spec.zero))
            .arg("--errorwhenfull")
            .arg("y")
            .arg(format!("{}/{}", spec.vg, spec.pool));
        self.run_ok(cmd).await?;
        Ok(())
    }

    /// Creates a thin LV of `size` bytes in `vg/pool` carrying `tags`, in one command, so
    /// the LV and its tags appear together or not at all.
    pub async fn create_thin_lv(
        &self,
        vg: &str,
        pool: &str,
        lv: &str,
        size: u64,
        tags: &[String],
    ) -> Result<()> {
        let mut cmd = Cmd::new("lvcreate", LVM_TIMEOUT)
            .arg("--type")
            .arg("thin")
            .arg("-V")
            .arg(bytes(size))
            .arg("--thinpool")
            .arg(pool)
            .arg("-n")
            .arg(lv);
        for t in tags {
            cmd = cmd.arg("--addtag").arg(t);
        }
        self.run_ok(cmd.arg(vg)).await?;
        Ok(())
    }

    /// Creates `lv`, a thin snapshot of the thin LV `vg/origin`, carrying `tags`, in one
    /// command. A snapshot (`active` false) keeps LVM's activation-skip flag and stays
    /// inactive; a clone (`active` true) is made without the flag and activated. No size
    /// is given: with one, LVM would make an old-style COW snapshot instead of a thin one.
    pub async fn create_thin_snapshot(
        &self,
        vg: &str,
        origin: &str,
        lv: &str,
        tags: &[String],
        active: bool,
    ) -> Result<()> {
        let mut cmd = Cmd::new("lvcreate", LVM_TIMEOUT)
            .arg("--snapshot")
            .arg("--setactivationskip")
            .arg(yn(!active))
            .arg("--activate")
            .arg(yn(active))
            .arg("-n")
            .arg(lv);
        for t in tags {
            cmd = cmd.arg("--addtag").arg(t);
        }
        self.run_ok(cmd.arg(format!("{vg}/{origin}"))).await?;
        Ok(())
    }

    /// Activates an LV, even one flagged to skip activation.
    pub async fn activate_lv(&self, vg: &str, lv: &str) -> Result<()> {
        self.run_ok(
            Cmd::new("lvchange", LVM_TIMEOUT)
                .arg("-ay")
                .arg("-K")
                .arg(format!("{vg}/{lv}")),
        )
        .await?;
        Ok(())
    }

    /// Grows an LV to `size` bytes (rounded up to whole extents by LVM).
    pub async fn extend_lv(&self, vg: &str, lv: &str, size: u64) -> Result<()> {
        self.run_ok(
            Cmd::new("lvextend", LVM_TIMEOUT)
                .arg("-L")
                .arg(bytes(size))
                .arg(format!("{vg}/{lv}")),
        )
        .await?;
        Ok(())
    }

    /// Replaces tags of an LV in one `lvchange` (LVM commits the VG metadata once, so the
    /// LV carries either the old tags or the new ones): `delete` go, `add` come.
    pub async fn retag_lv(
        &self,
        vg: &str,
        lv: &str,
        delete: &[String],
        add: &[String],
    ) -> Result<()> {
        let mut cmd = Cmd::new("lvchange", LVM_TIMEOUT);
        for t in delete {
            cmd = cmd.arg("--deltag").arg(t);
        }
        for t in add {
            cmd = cmd.arg("--addtag").arg(t);
        }
        self.run_ok(cmd.arg(format!("{vg}/{lv}"))).await?;
        Ok(())
    }

    /// Removes an LV without asking.
    pub async fn remove_lv(&self, vg: &str, lv: &str) -> Result<()> {
        self.run_ok(
            Cmd::new("lvremove", LVM_TIMEOUT)
                .arg("-y")
                .arg(format!("{vg}/{lv}")),
        )
        .await?;
        Ok(())
    }

    /// The device node of the active LV `vg/lv`, if `/dev/<vg>/<lv>` exists: the kernel's
    /// own node (`/dev/dm-3`, found through `/sys/dev/block/MAJ:MIN`) when there is one,
    /// so that bind mounts of it show up in the mount table under that name; otherwise
    /// `/dev/<vg>/<lv>` itself.
    pub fn lv_device(&self, vg: &str, lv: &str) -> Option<PathBuf> {
        let link = self.roots.dev.join(vg).join(lv);
        if !link.exists() {
            return None;
        }
        Some(self.kernel_node(&link).unwrap_or(link))
    }

    fn kernel_node(&self, path: &Path) -> Option<PathBuf> {
        let n = self.device_number(path).ok()?;
        let sys = self
            .roots
            .sys
            .join(format!("dev/block/{}:{}", n.major, n.minor));
        let target = std::fs::read_link(sys).ok()?;
        let node = self.roots.dev.join(target.file_name()?);
        (self.device_number(&node).ok()? == n).then_some(node)
    }

    /// Whether two paths name the same device: equal after following symlinks, or block
    /// devices with the same number.
    pub fn same_device(&self, a: &Path, b: &Path) -> bool {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        if canon(a) == canon(b) {
            return true;
        }
        matches!(
            (self.device_number(a), self.device_number(b)),
            (Ok(x), Ok(y)) if x == y
        )
    }

    /// Whether `path` exists (following symlinks).
    pub fn device_exists(&self, path: &Path) -> bool {
        path.exists()
    }

    /// Discards every block of `device`.
    pub async fn discard(&self, device: &Path) -> Result<()> {
        self.run_ok(
            Cmd::new("blkdiscard", DISCARD_TIMEOUT)
                .arg("--")
                .arg(device),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::os::Roots;
    use crate::os::command::RecordingRunner;

    #[tokio::test]
    async fn argvs() {
        let runner = Arc::new(RecordingRunner::default());
        let os = Os::new(runner.clone(), Roots::default());
        os.lvm_report(Report::Lv, &["lv_name", "lv_size"], &["vg1", "vg2"])
            .await
            .unwrap();
        os.create_thin_pool(&ThinPoolSpec {
            vg: "iolane",
            pool: "pool",
            percent_of_vg: 95,
            chunk_size: 128 << 10,
            zero: false,
        })
        .await
        .unwrap();
        os.create_thin_lv(
            "iolane",
            "pool",
            "iol-1",
            4 << 20,
            &["a=1".into(), "b".into()],
        )
        .await
        .unwrap();
        os.create_thin_snapshot("iolane", "iol-1", "iolsnap-2", &["a=1".into()], false)
            .await
            .unwrap();
        os.create_thin_snapshot("iolane", "iolsnap-2", "iol-3", &[], true)
            .await
            .unwrap();
        os.extend_lv("iolane", "iol-1", 8 << 20).await.unwrap();
        os.remove_lv("iolane", "iol-1").await.unwrap();
        assert_eq!(
            runner.calls(),
            vec![
                "lvs --reportformat json --units b --nosuffix -o lv_name,lv_size vg1 vg2",
                "lvcreate -T -l 95%VG --chunksize 128k --zero n --errorwhenfull y iolane/pool",
                "lvcreate --type thin -V 4194304b --thinpool pool -n iol-1 --addtag a=1 --addtag b iolane",
                "lvcreate --snapshot --setactivationskip y --activate n -n iolsnap-2 --addtag a=1 iolane/iol-1",
                "lvcreate --snapshot --setactivationskip n --activate y -n iol-3 iolane/iolsnap-2",
                "lvextend -L 8388608b iolane/iol-1",
                "lvremove -y iolane/iol-1",
            ]
        );
    }
}
