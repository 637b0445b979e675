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
    /// MiB read as zeros (see [`zero_at_both_ends`]), ext4 without a spawn when it holds
    /// nothing but a freshly made ext4 where signatures live (see [`fresh_ext4`]),
    /// otherwise whatever `blkid -p` (low-level probe, no cache) identifies.
    pub async fn probe(&self, device: &Path) -> Result<Signature> {
        // Up to 4 MiB read from the device: on the blocking pool.
        let dev = device.to_owned();
        let quick = blocking(move || {
            if zero_at_both_ends(&dev)? {
                return Ok(Some(Signature::Blank));
            }
            Ok(fresh_ext4(&dev)?.then(|| Signature::Filesystem("ext4".to_owned())))
        })
        .await;
        match quick {
            Ok(Some(sig)) => {
                tracing::debug!(device = %device.display(), signature = ?sig, "identified from the first and last MiB");
                return Ok(sig);
            }
            Ok(None) => {}
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

/// Reads `len` bytes of `f` from `start`.
fn read_range(f: &mut std::fs::File, device: &Path, start: u64, len: u64) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |op: &'static str, e: std::io::Error| Error::io(op, device, e);
    f.seek(SeekFrom::Start(start)).map_err(|e| io("seek", e))?;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    f.read_exact(&mut buf).map_err(|e| io("read", e))?;
    Ok(buf)
}

/// Whether `device` holds a freshly made ext4 and nothing else where signatures live: its
/// first KiB is zeros, then an ext4 superblock (magic 0xEF53, dynamic revision, block size
/// 1-64 KiB, the extents feature) and, with blocks of 4 KiB or more, zeros to the end of
/// that block; and its last MiB reads as zeros. That is what `mkfs.ext4` leaves on a discarded thin LV (a spare of the
/// lvm backend). Anything else, a filesystem that has been written to near its end
/// included, is left to `blkid`.
pub fn fresh_ext4(device: &Path) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(device).map_err(|e| Error::io("open", device, e))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io("seek", device, e))?;
    if size < 2 * BLANK_CHECK_BYTES {
        return Ok(false);
    }
    let head = read_range(&mut f, device, 0, 4096)?;
    let sb = &head[1024..2048];
    let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    const EXTENTS: u32 = 0x40;
    let ext4 = u16_at(0x38) == 0xEF53
        && u32_at(0x4C) == 1
        && u32_at(0x18) <= 6
        && u32_at(0x60) & EXTENTS != 0;
    // With blocks of 4 KiB or more the superblock's block holds nothing else; with 1 or 2
    // KiB blocks (small filesystems) the group descriptors follow it.
    let rest_of_block = if u32_at(0x18) >= 2 {
        &head[2048..]
    } else {
        &[][..]
    };
    if !ext4 || head[..1024].iter().any(|b| *b != 0) || rest_of_block.iter().any(|b| *b != 0) {
        return Ok(false);
    }
    let tail = read_range(&mut f, device, size - BLANK_CHECK_BYTES, BLANK_CHECK_BYTES)?;
    Ok(tail.iter().all(|b| *b == 0))
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

    /// Writes an 8 MiB image holding a minimal ext4 superblock at 1024, then `writes`.
    fn ext4_image(dir: &Path, name: &str, writes: &[(usize, &[u8])]) -> std::path::PathBuf {
        let mut bytes = vec![0u8; 8 << 20];
        let sb = 1024;
        bytes[sb + 0x38..sb + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        bytes[sb + 0x4C..sb + 0x50].copy_from_slice(&1u32.to_le_bytes());
        bytes[sb + 0x18..sb + 0x1C].copy_from_slice(&2u32.to_le_bytes());
        bytes[sb + 0x60..sb + 0x64].copy_from_slice(&0x2C2u32.to_le_bytes());
        for (at, b) in writes {
            bytes[*at..*at + b.len()].copy_from_slice(b);
        }
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        p
    }

    #[test]
    fn a_fresh_ext4_is_known_without_blkid_and_anything_more_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(fresh_ext4(&ext4_image(dir.path(), "fresh", &[])).unwrap());
        // Data in the middle is no signature.
        assert!(fresh_ext4(&ext4_image(dir.path(), "middle", &[(4 << 20, b"x")])).unwrap());
        for (name, at, b) in [
            // Something in the boot area (an MBR's 0x55AA), an LVM label in sector 1,
            // something after the superblock in its block, anything in the last MiB.
            ("mbr", 510, &b"\x55\xaa"[..]),
            ("lvm", 512, b"LABELONE"),
            ("after", 3000, b"x"),
            ("tail", (8 << 20) - 512, b"EFI PART"),
            // No extents: ext2 or ext3.
            ("ext3", 1024 + 0x60, &[0x02, 0, 0, 0][..]),
            // Not the magic.
            ("magic", 1024 + 0x38, &[0x54, 0xef][..]),
        ] {
            let p = ext4_image(dir.path(), name, &[(at, b)]);
            assert!(!fresh_ext4(&p).unwrap(), "{name}");
        }
        // Too small to have a head and a tail apart.
        let small = dir.path().join("small");
        std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
        assert!(!fresh_ext4(&small).unwrap());
    }

    #[tokio::test]
    async fn what_the_drivers_mkfs_ext4_leaves_on_a_zeroed_device_is_a_fresh_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        std::fs::File::create(&made)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let os = Os::new(Arc::new(command::SystemRunner), Roots::default());
        os.mkfs(&made, FsType::Ext4)
            .await
            .expect("mkfs.ext4 (e2fsprogs) runs");
        assert!(fresh_ext4(&made).unwrap());
        // Once written to near its end, it is left to blkid.
        let mut bytes = std::fs::read(&made).unwrap();
        let end = bytes.len() - 4096;
        bytes[end] = 1;
        std::fs::write(&made, &bytes).unwrap();
        assert!(!fresh_ext4(&made).unwrap());
    }

    #[tokio::test]
    async fn probe_knows_a_fresh_ext4_without_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Arc::new(command::RecordingRunner::default());
        let os = Os::new(runner.clone(), Roots::default());
        let p = ext4_image(dir.path(), "fresh", &[]);
        assert_eq!(
            os.probe(&p).await.unwrap(),
            Signature::Filesystem("ext4".into())
        );
        assert!(runner.calls().is_empty());
    }
}
