//! OS effects: the only module that spawns processes, mounts, or reads `/proc` and `/sys`.
//!
//! **Architecture Invariant:** every root (`/proc`, `/sys`, `/dev`) comes in through
//! [`Roots`], and every process goes through a [`CommandRunner`], so the rest of the driver
//! is tested on tempdirs and recording fakes.

pub mod command;
pub mod dm;
pub mod files;
pub mod host;
pub mod lvm;
pub mod mountinfo;

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use command::{Cmd, CommandRunner, Output, SystemRunner};
pub use mountinfo::MountEntry;

use iops_controller::DeviceNumber;

/// Failures of OS effects. Each carries the command or path it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{argv} exited with {status}: {stderr}")]
    CommandFailed {
        argv: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("{argv} did not finish within {secs}s and was killed")]
    Timeout { argv: String, secs: u64 },
    #[error("could not start {argv}: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: unexpected output {output:?}")]
    Parse { what: &'static str, output: String },
}

impl Error {
    /// Wraps an `io::Error` with the operation and the path.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Result with the OS error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The host roots the driver looks at; injected so tests can point them at tempdirs.
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// A filesystem iolane creates and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// The name mount(8) and blkid use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Parses a name as blkid or a capability spells it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }

    /// Smallest device mkfs accepts for this filesystem.
    pub fn min_size(self) -> u64 {
        match self {
            // ext4 fits in far less, but a journal needs a few MiB to be useful.
            FsType::Ext4 => 16 << 20,
            // xfsprogs 5.19+ refuses data sections under 300 MiB.
            FsType::Xfs => 300 << 20,
        }
    }
}

/// A loop device and whether it was attached read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub path: PathBuf,
    pub read_only: bool,
}

/// What `blkid -p` found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No signature at all: safe to format.
    Blank,
    /// A filesystem (or other superblock) of this type.
    Filesystem(String),
    /// A partition table of this type.
    PartitionTable(String),
}

/// Space and inode figures of a mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const MKFS_TIMEOUT: Duration = Duration::from_secs(300);
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The real OS, reached through injected roots and a command runner.
#[derive(Debug, Clone)]
pub struct Os {
    runner: Arc<dyn CommandRunner>,
    roots: Roots,
}

impl Os {
    pub fn new(runner: Arc<dyn CommandRunner>, roots: Roots) -> Self {
        Os { runner, roots }
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    async fn run_ok(&self, cmd: Cmd) -> Result<Output> {
        let out = self.runner.run(&cmd).await?;
        if out.status == Some(0) {
            Ok(out)
        } else {
            Err(out.into_error(&cmd))
        }
    }

    // ---- mounts -------------------------------------------------------------------

    /// The mount table of this process's mount namespace.
    pub fn mounts(&self) -> Result<Vec<MountEntry>> {
        let path = self.roots.proc.join("self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        mountinfo::parse(&text)
    }

    /// The topmost mount at exactly `path`, if any.
    pub fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>> {
        Ok(self
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == path))
    }

    /// Mounts a filesystem of `fs` from `device` on `target` with `options`.
    pub async fn mount_fs(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        options: &[String],
    ) -> Result<()> {
        let mut cmd = Cmd::new("mount", MOUNT_TIMEOUT).arg("-t").arg(fs.as_str());
        if !options.is_empty() {
            cmd = cmd.arg("-o").arg(options.join(","));
        }
        self.run_ok(cmd.arg("--").arg(device).arg(target)).await?;
        Ok(())
    }

    /// Bind-mounts `source` on `target`, then makes the bind read-only if asked. Done with
    /// mount(2) in-process (what `mount --bind` and `mount -o remount,bind,ro` do), on the
    /// blocking pool: no process per publish.
    pub async fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        use nix::mount::{MsFlags, mount};
        let (src, dst) = (source.to_owned(), target.to_owned());
        tracing::debug!(source = %source.display(), target = %target.display(), read_only, "mount(2) MS_BIND");
        blocking(move || {
            mount(
                Some(src.as_path()),
                dst.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| mount_error("bind-mount", &src, &dst, e))?;
            if !read_only {
                return Ok(());
            }
            // A bind remount sets the mount's flags to exactly those given: carry over the
            // ones the bind inherited (nosuid, nodev, ...), as mount(8) does.
            let remount = bind_flags(&dst)
                .map(|kept| kept | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY)
                .and_then(|flags| {
                    mount(
                        None::<&Path>,
                        dst.as_path(),
                        None::<&str>,
                        flags,
                        None::<&str>,
                    )
                    .map_err(|e| mount_error("remount read-only", &src, &dst, e))
                });
            if let Err(e) = remount {
                // Never leave a writable bind behind a read-only request.
                let _ = nix::mount::umount2(dst.as_path(), nix::mount::MntFlags::empty());
                return Err(e);
            }
            Ok(())
        })
        .await
    }

    /// Unmounts the topmost mount at `target` (umount(2) in-process, on the blocking pool:
    /// the last unmount of a filesystem writes its dirty data back).
    pub async fn unmount(&self, target: &Path) -> Result<()> {
        let dst = target.to_owned();
        tracing::debug!(target = %target.display(), "umount(2)");
        blocking(move || {
            nix::mount::umount2(dst.as_path(), nix::mount::MntFlags::empty())
                .map_err(|e| Error::io("unmount", &dst, std::io::Error::from(e)))
        })
        .await
    }

    // ---- loop devices -----------------------------------------------------------------

    /// Every loop device whose backing file is `file`, found through `/sys/block/loop*`,
    /// in name order.
    pub fn loops_for_file(&self, file: &Path) -> Result<Vec<LoopDevice>> {
        let block = self.roots.sys.join("block");
        let entries = match std::fs::read_dir(&block) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &block, e)),
        };
        let mut found: Vec<LoopDevice> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            if Path::new(text.trim_end_matches('\n')) != file {
                continue;
            }
            let read_only =
                std::fs::read_to_string(entry.path().join("ro")).is_ok_and(|t| t.trim() == "1");
            found.push(LoopDevice {
                path: self.roots.dev.join(&name),
                read_only,
            });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// The first writable loop device backed by `file`.
    pub fn loop_for_file(&self, file: &Path) -> Result<Option<PathBuf>> {
        Ok(self
            .loops_for_file(file)?
            .into_iter()
            .find(|l| !l.read_only)
            .map(|l| l.path))
    }

    /// Attaches `file` to a free loop device (read-only if asked) and returns its path.
    pub async fn loop_attach(&self, file: &Path, read_only: bool) -> Result<PathBuf> {
        let mut cmd = Cmd::new("losetup", SHORT_TIMEOUT)
            .arg("--find")
            .arg("--show");
        if read_only {
            cmd = cmd.arg("--read-only");
        }
        let out = self.run_ok(cmd.arg("--").arg(file)).await?;
        let dev = out.stdout.trim();
        let name = dev.strip_prefix("/dev/").unwrap_or(dev);
        if !name.starts_with("loop") || name.contains('/') {
            return Err(Error::Parse {
                what: "losetup --find --show",
                output: out.stdout,
            });
        }
        Ok(self.roots.dev.join(name))
    }

    /// Detaches a loop device (the kernel defers it while the device is still open).
    pub async fn loop_detach(&self, device: &Path) -> Result<()> {
        self.run_ok(
            Cmd::new("losetup", SHORT_TIMEOUT)
                .arg("--detach")
                .arg(device),
        )
        .await?;
        Ok(())
    }

    /// Makes a loop device pick up its backing file's new size.
    pub async fn loop_refresh_size(&self, device: &Path) -> Result<()> {
        self.run_ok(
            Cmd::new("losetup", SHORT_TIMEOUT)
                .arg("--set-capacity")
                .arg(device),
        )
        .await?;
        Ok(())
    }

    // ---- devices and filesystems ------------------------------------------------------

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
        match zero_at_both_ends(device) {
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

/// Runs a blocking system call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("run", Path::new("blocking task"), std::io::Error::other(e)))?
}

fn mount_error(what: &'static str, source: &Path, target: &Path, e: nix::errno::Errno) -> Error {
    Error::io(
        what,
        target,
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("from {}: {e}", source.display()),
        ),
    )
}

/// The per-mount flags of the mount at `path` that a bind remount must repeat.
fn bind_flags(path: &Path) -> Result<nix::mount::MsFlags> {
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| Error::io("statvfs", path, std::io::Error::from(e)))?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (have, set) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            out |= set;
        }
    }
    Ok(out)
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

/// Renders an argv for messages and logs.
pub(crate) fn render_argv(program: &str, args: &[OsString]) -> String {
    let mut s = String::from(program);
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn loop_lookup_on_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        for (n, file, ro) in [
            ("loop0", "/a/one.img", "0"),
            ("loop7", "/a/two.img (deleted)", "0"),
            ("loop3", "/a/two.img", "0"),
            ("loop2", "/a/two.img", "1"),
        ] {
            let d = sys.join("block").join(n).join("loop");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("backing_file"), format!("{file}\n")).unwrap();
            std::fs::write(sys.join("block").join(n).join("ro"), format!("{ro}\n")).unwrap();
        }
        std::fs::create_dir_all(sys.join("block/nvme0n1")).unwrap();
        let roots = Roots {
            proc: dir.path().join("proc"),
            sys,
            dev: PathBuf::from("/dev"),
        };
        let os = Os::new(Arc::new(command::RecordingRunner::default()), roots);
        assert_eq!(
            os.loop_for_file(Path::new("/a/two.img")).unwrap(),
            Some(PathBuf::from("/dev/loop3"))
        );
        assert_eq!(os.loop_for_file(Path::new("/a/none.img")).unwrap(), None);
        let all = os.loops_for_file(Path::new("/a/two.img")).unwrap();
        assert_eq!(
            all,
            vec![
                LoopDevice {
                    path: PathBuf::from("/dev/loop2"),
                    read_only: true
                },
                LoopDevice {
                    path: PathBuf::from("/dev/loop3"),
                    read_only: false
                },
            ]
        );
    }
}
