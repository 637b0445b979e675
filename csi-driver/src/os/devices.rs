//! Block devices and filesystems: device numbers and sizes, the blank check and `blkid`
//! probe, `mkfs`, growing a filesystem, and `statvfs` figures.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use iops_controller::DeviceNumber;

use super::{
    Cmd, Error, FsStats, FsType, MKFS_TIMEOUT, Os, Result, SHORT_TIMEOUT, Signature, blocking,
};

impl Os {
    /// The device number of a block device node.
    pub fn device_number(&self, device: &Path) -> Result<DeviceNumber> {
        let meta = std::fs::metadata(device).map_err(|e| Error::io("stat", device, e))?;
        if !meta.file_type().is_block_device() {
            return Err(Error::io(
                "stat",
                device,
                std::io::Error::other("not a block device"),
            ));
        }
        Ok(DeviceNumber::from_rdev(meta.rdev()))
    }

    /// Size in bytes of a block device, from `/sys/dev/block/MAJ:MIN/size`.
    pub fn device_size(&self, device: &Path) -> Result<u64> {
        let num = self.device_number(device)?;
        let path = self
            .roots
            .sys
            .join(format!("dev/block/{}:{}/size", num.major, num.minor));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let sectors: u64 = text.trim().parse().map_err(|_| Error::Parse {
            what: "block device size",
            output: text.clone(),
        })?;
        Ok(sectors * 512)
    }

    /// Looks for any signature on `device`: blank without a spawn when its first and last
    /// MiB read as zeros (see [`zero_at_both_ends`]), otherwise whatever `blkid -p`
    /// (low-level probe, no cache) identifies.
    pub async fn probe(&self, device: &Path) -> Result<Signature> {
        // Up to 2 MiB read from the device: on the blocking pool.
        let dev = device.to_owned();
        match blocking(move || zero_at_both_ends(&dev)).await {
            Ok(true) => {
                tracing::debug!(device = %device.display(), "first and last MiB read as zeros: blank");
                return Ok(Signature::Blank);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(device = %device.display(), error = %e, "could not read the device's ends; asking blkid");
            }
        }
        let cmd = Cmd::new("blkid", SHORT_TIMEOUT)
            .arg("-p")
            .arg("-o")
            .arg("export")
            .arg("--")
            .arg(device);
        let out = self.runner.run(&cmd).await?;
        match out.status {
            // blkid exits 2 when it finds nothing.
            Some(2) => Ok(Signature::Blank),
            Some(0) => Ok(parse_blkid_export(&out.stdout)),
            _ => Err(out.into_error(&cmd)),
        }
    }

    /// Creates a filesystem on a device already known to be blank.
    pub async fn mkfs(&self, device: &Path, fs: FsType) -> Result<()> {
        let cmd = match fs {
            FsType::Ext4 => Cmd::new("mkfs.ext4", MKFS_TIMEOUT)
                .arg("-q")
                .arg("-m")
                .arg("0")
                .arg("-E")
                .arg("nodiscard,lazy_itable_init=1,lazy_journal_init=1"),
            FsType::Xfs => Cmd::new("mkfs.xfs", MKFS_TIMEOUT).arg("-q").arg("-K"),
        };
        self.run_ok(cmd.arg("--").arg(device)).await?;
        Ok(())
    }

    /// Grows a mounted filesystem to fill its device.
    pub async fn grow_fs(&self, device: &Path, mount_point: &Path, fs: FsType) -> Result<()> {
        let cmd = match fs {
            FsType::Ext4 => Cmd::new("resize2fs", MKFS_TIMEOUT).arg("--").arg(device),
            FsType::Xfs => Cmd::new("xfs_growfs", MKFS_TIMEOUT).arg(mount_point),
        };
        self.run_ok(cmd).await?;
        Ok(())
    }

    /// Space and inode figures of the filesystem holding `path`.
    pub fn fs_stats(&self, path: &Path) -> Result<FsStats> {
        let st = nix::sys::statvfs::statvfs(path)
            .map_err(|e| Error::io("statvfs", path, std::io::Error::from(e)))?;
        let frag = st.fragment_size();
        let total = st.blocks() * frag;
        let free = st.blocks_free() * frag;
        let avail = st.blocks_available() * frag;
        Ok(FsStats {
            total_bytes: total,
            available_bytes: avail,
            used_bytes: total.saturating_sub(free),
            total_inodes: st.files(),
            free_inodes: st.files_free(),
            used_inodes: st.files().saturating_sub(st.files_free()),
        })
    }
}

/// How much of each end of a device [`zero_at_both_ends`] reads.
pub const BLANK_CHECK_BYTES: u64 = 1 << 20;
/// The size of its reads.
const BLANK_CHUNK: usize = 256 << 10;

/// Whether the first and the last [`BLANK_CHECK_BYTES`] of `device` (a block device or a
/// file) are all zero bytes. Every signature `blkid` knows (filesystem superblocks and
/// their primary copies, LVM and RAID labels, LUKS headers, both GPT headers, MBR, swap)
/// lies in those ranges, so such a device is blank. `false` for an empty device, which
/// is left to `blkid`.
pub fn zero_at_both_ends(device: &Path) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |op: &'static str, e: std::io::Error| Error::io(op, device, e);
    let mut f = std::fs::File::open(device).map_err(|e| io("open", e))?;
    // A block device reports its size only through seeking to its end.
    let size = f.seek(SeekFrom::End(0)).map_err(|e| io("seek", e))?;
    if size == 0 {
        return Ok(false);
    }
    // Compared with `==` against zeros: slice equality of bytes is one memcmp, fast even
    // in a debug build.
    static ZEROS: [u8; BLANK_CHUNK] = [0; BLANK_CHUNK];
    let head = size.min(BLANK_CHECK_BYTES);
    let tail_start = size.saturating_sub(BLANK_CHECK_BYTES).max(head);
    let mut buf = vec![0u8; BLANK_CHUNK];
    for (start, len) in [(0, head), (tail_start, size - tail_start)] {
        f.seek(SeekFrom::Start(start)).map_err(|e| io("seek", e))?;
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = f.read(&mut buf[..want]).map_err(|e| io("read", e))?;
            if n == 0 {
                return Err(io(
                    "read",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the device ended before its reported size",
                    ),
                ));
            }
            if buf[..n] != ZEROS[..n] {
                return Ok(false);
            }
            left -= n as u64;
        }
    }
    Ok(true)
}

fn parse_blkid_export(stdout: &str) -> Signature {
    let mut fs = None;
    let mut pt = None;
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("TYPE=") {
            fs = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("PTTYPE=") {
            pt = Some(v.to_owned());
        }
    }
    match (fs, pt) {
        (Some(t), _) => Signature::Filesystem(t),
        (None, Some(p)) => Signature::PartitionTable(p),
        (None, None) => Signature::Filesystem(String::from("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{Output, Roots, command};
    use std::sync::Arc;

    #[test]
    fn blkid_export() {
        assert_eq!(
            parse_blkid_export(
                "DEVNAME=/dev/loop0\nUUID=1\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n"
            ),
            Signature::Filesystem("ext4".into())
        );
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/loop0\nPTUUID=a\nPTTYPE=gpt\n"),
            Signature::PartitionTable("gpt".into())
        );
    }

    #[test]
    fn blank_check_reads_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, size: u64, writes: &[(u64, &[u8])]| {
            use std::io::{Seek, SeekFrom, Write};
            let p = dir.path().join(name);
            let mut f = std::fs::File::create(&p).unwrap();
            f.set_len(size).unwrap();
            for (at, bytes) in writes {
                f.seek(SeekFrom::Start(*at)).unwrap();
                f.write_all(bytes).unwrap();
            }
            p
        };
        let mib = BLANK_CHECK_BYTES;
        // Sparse and zero: blank, whatever the size (smaller than both ranges too).
        assert!(zero_at_both_ends(&file("zero", 64 * mib, &[])).unwrap());
        assert!(zero_at_both_ends(&file("tiny", 4096, &[])).unwrap());
        // An ext4 superblock magic at 1080, a GPT backup header at the last sector, an
        // LVM label in sector 1, a byte just inside the end of the head range.
        for (name, at) in [
            ("ext4", 1080),
            ("gpt-backup", 64 * mib - 512),
            ("lvm", 512),
            ("head-edge", mib - 1),
            ("tail-edge", 63 * mib),
        ] {
            let p = file(name, 64 * mib, &[(at, b"\x53\xef")]);
            assert!(!zero_at_both_ends(&p).unwrap(), "{name}");
        }
        // Data in the middle only is outside both ranges: blank as far as signatures go.
        assert!(zero_at_both_ends(&file("middle", 64 * mib, &[(32 * mib, b"x")])).unwrap());
        assert!(!zero_at_both_ends(&file("empty", 0, &[])).unwrap());
        let err = zero_at_both_ends(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().starts_with("open "), "{err}");
    }

    #[tokio::test]
    async fn probe_skips_blkid_for_a_zeroed_device_only() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Arc::new(command::RecordingRunner::default());
        let os = Os::new(runner.clone(), Roots::default());
        let zero = dir.path().join("zero");
        std::fs::File::create(&zero)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        assert_eq!(os.probe(&zero).await.unwrap(), Signature::Blank);
        assert!(runner.calls().is_empty());
        let used = dir.path().join("used");
        let mut bytes = vec![0u8; 8 << 20];
        bytes[1080] = 0x53;
        std::fs::write(&used, &bytes).unwrap();
        runner.answer(
            "blkid ",
            Output {
                status: Some(0),
                stdout: "TYPE=ext4\n".to_owned(),
                stderr: String::new(),
            },
        );
        assert_eq!(
            os.probe(&used).await.unwrap(),
            Signature::Filesystem("ext4".into())
        );
        assert_eq!(
            runner.calls(),
            vec![format!("blkid -p -o export -- {}", used.display())]
        );
    }
}
