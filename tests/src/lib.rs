//! Shared harness for the iolane test suites.
//!
//! [`Driver`] starts the real `iolane` binary in a tempdir of its own (state dir, socket,
//! staging and mount parents), talks CSI to it over the Unix socket, and on drop removes
//! whatever a failing test left behind: mounts under the tempdir, loop devices backed by
//! files under it, and the process itself. Tests running in parallel never look at loop
//! devices or mounts outside their own tempdir.
//!
//! The host-level tests need root (loop devices, mkfs, mount); [`require_root!`] skips a
//! test with a printed reason otherwise, so `cargo test` as a normal user still passes.
//!
//! **Backends.** By default the driver runs on its loop backend. With
//! `IOLANE_TEST_BACKEND=lvm` and `IOLANE_TEST_LVM_DEVICES=/dev/A[,/dev/B]` (a VM: see
//! `tests/vm/`), [`Driver::start`] writes a node config with an LVM device class `default`
//! (VG [`DEFAULT_VG`]) over those devices instead. Tests look at backend state only through
//! [`Driver::backend_volumes`], [`Driver::backend_state`], [`Driver::attached_devices`] and
//! [`Driver::devices_left_after_unstage`], which read image files and loop devices under
//! the tempdir (loop) or the `iol-*` LVs of the test VGs, via `lvs --reportformat json`
//! (lvm). In lvm mode every test shares the VGs, so the tests must run one at a time
//! (`--test-threads 1`); each driver start removes `iol-*` LVs a previous test left, and
//! each drop removes what its test left, so every test starts from and leaves empty VGs.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi::{
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
pub use csi_proto::v1 as csi;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Response, Status};

/// Name the driver reports by default.
pub const DRIVER_NAME: &str = "csi.iolane.dev";
/// Node ID every test driver runs with.
pub const NODE_ID: &str = "test-node";
/// Topology key whose value is the node ID.
pub const TOPOLOGY_KEY: &str = "topology.iolane.dev/node";
/// One MiB, as the CSI wire type.
pub const MIB: i64 = 1 << 20;
/// One GiB, as the CSI wire type.
pub const GIB: i64 = 1 << 30;

/// How long the driver may take to answer its first Probe.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the driver may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Upper bound for one RPC (the driver gives mkfs 300 s), so a hung call fails the test
/// instead of hanging it.
const RPC_TIMEOUT: Duration = Duration::from_secs(330);
/// Default deadline of [`wait_for`].
pub const POLL_DEADLINE: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Prints a line for the person reading test output.
#[allow(
    clippy::print_stderr,
    reason = "the harness reports skips, leaks and driver logs on stderr"
)]
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the calling test with "skipped: not root" unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::note("skipped: not root");
            return;
        }
    };
}

/// Linux capability number of `CAP_SYS_RESOURCE` (needed for online ext4 resize).
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has capability number `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|bits| bits & (1 << cap) != 0)
}

/// Whether `program` is an executable in `$PATH`, `/usr/sbin` or `/sbin`.
pub fn have_program(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(program).is_file())
}

/// The `iolane` binary under test: `$IOLANE_BIN`, else `$CARGO_TARGET_DIR/debug/iolane`,
/// else `<workspace>/target/debug/iolane`.
pub fn binary() -> PathBuf {
    let path = if let Some(p) = std::env::var_os("IOLANE_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("debug/iolane")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/iolane")
    };
    assert!(
        path.is_file(),
        "iolane binary not found at {}: run `cargo build -p csi-driver` first (or set IOLANE_BIN)",
        path.display()
    );
    path
}

/// Extra start-up settings of a [`Driver`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Flags appended to `iolane node ...`.
    pub args: Vec<String>,
    /// Node config file text, written to `<tempdir>/config.toml` and passed with `--config`.
    /// In lvm mode the device class tables are appended to it (a `[loop]` table in it is
    /// then parsed but has no effect).
    pub config: Option<String>,
    /// lvm mode only: the device classes to configure; empty means the one
    /// [`LvmClass::default_class`]. Setting any in loop mode is a test bug (panics).
    pub lvm_classes: Vec<LvmClass>,
    /// lvm mode only: leave `iol-*` LVs alone at start and at drop (a reboot test keeps
    /// its volumes across boots).
    pub keep_lvs: bool,
}

/// A running `iolane node` with CSI clients connected to it.
#[derive(Debug)]
pub struct Driver {
    root: PathBuf,
    /// The options as launched (in lvm mode, `config` holds the device class tables).
    options: Options,
    /// lvm mode: the VGs of the configured device classes; empty in loop mode.
    vgs: Vec<String>,
    child: Option<Child>,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
    // Dropped last, after `Drop::drop` has unmounted and detached everything under it.
    _tmp: tempfile::TempDir,
}

impl Driver {
    /// Starts a driver with default settings in a fresh tempdir.
    pub async fn start() -> Driver {
        Self::start_with(Options::default()).await
    }

    /// Starts a driver with `options` in a fresh tempdir.
    pub async fn start_with(options: Options) -> Driver {
        let tmp = tempfile::Builder::new()
            .prefix("iolane-test-")
            .tempdir()
            .expect("create tempdir");
        // Mountinfo and sysfs report resolved paths; use the same spelling everywhere.
        let root = tmp.path().canonicalize().expect("canonicalize tempdir");
        for d in ["state", "sock", "staging", "mount"] {
            fs::create_dir_all(root.join(d)).expect("create harness directory");
        }
        let mut options = options;
        let mut vgs = Vec::new();
        match test_backend() {
            TestBackend::Loop => assert!(
                options.lvm_classes.is_empty(),
                "Options::lvm_classes set in loop mode: gate the test with require_lvm!()"
            ),
            TestBackend::Lvm { devices } => {
                if options.lvm_classes.is_empty() {
                    options.lvm_classes = vec![LvmClass::default_class(&devices)];
                }
                let mut text = options.config.take().unwrap_or_default();
                for c in &options.lvm_classes {
                    text.push_str(&c.toml());
                    vgs.push(c.vg.clone());
                }
                options.config = Some(text);
                if !options.keep_lvs {
                    let done = lvm_sweep(&vgs);
                    if !done.is_empty() {
                        note(format!(
                            "harness: removed what an earlier test left in VG(s) {vgs:?}: {}",
                            done.join("; ")
                        ));
                    }
                }
            }
        }
        if let Some(cfg) = &options.config {
            fs::write(root.join("config.toml"), cfg).expect("write config file");
        }
        let (child, channel) = launch(&root, &options).await;
        Driver {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
            root,
            options,
            vgs,
            child: Some(child),
            _tmp: tmp,
        }
    }

    /// lvm mode: the VGs of this driver's device classes (empty in loop mode).
    pub fn vgs(&self) -> &[String] {
        &self.vgs
    }

    /// The volumes as the backend stores them: image files under the state dir (loop), or
    /// `vg/iol-*` LVs in the test VGs (lvm). Sorted.
    pub fn backend_volumes(&self) -> Vec<String> {
        if self.vgs.is_empty() {
            files_under(&self.state_dir())
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "img"))
                .map(|p| path_string(&p))
                .collect()
        } else {
            let mut v: Vec<String> = lvm_volume_lvs(&self.vgs)
                .iter()
                .map(|l| format!("{}/{}", l.vg, l.name))
                .collect();
            v.sort();
            v
        }
    }

    /// Everything of the backend's that a refused call must leave unchanged: every file
    /// under the state dir (loop), or every `iol-*` LV with its size and tags (lvm). Sorted.
    pub fn backend_state(&self) -> Vec<String> {
        if self.vgs.is_empty() {
            files_under(&self.state_dir())
                .iter()
                .map(|p| path_string(p))
                .collect()
        } else {
            let mut v: Vec<String> = lvm_volume_lvs(&self.vgs)
                .iter()
                .map(|l| {
                    format!(
                        "{}/{} size={} tags={}",
                        l.vg,
                        l.name,
                        l.size,
                        l.tags.join(",")
                    )
                })
                .collect();
            v.sort();
            v
        }
    }

    /// Block devices that exist for volumes now: loop devices of images under the state
    /// dir (loop); active `iol-*` LVs and loop devices over them (lvm). A staged volume has
    /// exactly one on either backend.
    pub fn attached_devices(&self) -> Vec<PathBuf> {
        if self.vgs.is_empty() {
            loops_for(&self.state_dir())
        } else {
            let lvs = lvm_volume_lvs(&self.vgs);
            let mut out: Vec<PathBuf> = lvs.iter().filter_map(LvInfo::device).collect();
            out.extend(loops_over_lvs(&lvs));
            out.sort();
            out
        }
    }

    /// Devices that must be gone once no volume is staged: every loop device of the state
    /// dir (loop); loop devices over `iol-*` LVs (lvm, whose thin LVs stay active from
    /// creation to removal by design).
    pub fn devices_left_after_unstage(&self) -> Vec<PathBuf> {
        if self.vgs.is_empty() {
            loops_for(&self.state_dir())
        } else {
            loops_over_lvs(&lvm_volume_lvs(&self.vgs))
        }
    }

    /// The tempdir holding everything of this driver.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `--state-dir` of the driver.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The Unix socket the driver serves on.
    pub fn socket(&self) -> PathBuf {
        self.root.join("sock/csi.sock")
    }

    /// `<tempdir>/staging/<name>`, not created.
    pub fn staging(&self, name: &str) -> String {
        path_string(&self.root.join("staging").join(name))
    }

    /// `<tempdir>/staging/<name>`, created as an empty directory (as kubelet does).
    pub fn make_staging(&self, name: &str) -> String {
        let p = self.root.join("staging").join(name);
        fs::create_dir_all(&p).expect("create staging directory");
        path_string(&p)
    }

    /// `<tempdir>/mount/<name>`, not created: NodePublish creates the target itself.
    pub fn target(&self, name: &str) -> String {
        path_string(&self.root.join("mount").join(name))
    }

    /// The driver's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("driver.log")).unwrap_or_default()
    }

    /// The process ID of the running driver.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the driver and reaps it. Mounts and loop devices stay as they are.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL iolane");
            c.wait().expect("reap iolane");
        }
    }

    /// Sends SIGTERM and waits; asserts a zero exit status and that the socket is gone.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("driver is not running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM iolane");
        let status = wait_exit(&mut child, STOP_DEADLINE).await;
        let status = match status {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "iolane did not exit within {STOP_DEADLINE:?} of SIGTERM\n{}",
                    self.log()
                );
            }
        };
        assert!(
            status.success(),
            "iolane exited with {status} after SIGTERM, expected 0\n{}",
            self.log()
        );
        assert!(
            !self.socket().exists(),
            "socket {} still exists after a clean shutdown",
            self.socket().display()
        );
    }

    /// Starts the driver again on the same state dir (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop); a running driver is killed first) and reconnects.
    pub async fn restart(&mut self) {
        self.kill();
        let (child, channel) = launch(&self.root, &self.options).await;
        self.child = Some(child);
        self.identity = IdentityClient::new(channel.clone());
        self.controller = ControllerClient::new(channel.clone());
        self.node = NodeClient::new(channel);
    }

    /// Asserts that nothing of this driver's is mounted under its tempdir and that no
    /// loop device is backed by a file under it (loop detach may complete asynchronously
    /// in the kernel, so that part polls with a deadline).
    /// In lvm mode, also that no loop device sits over an `iol-*` LV of the test VGs.
    pub async fn assert_no_leaks(&self, context: &str) {
        let mounts = mounts_under(&self.root);
        assert!(
            mounts.is_empty(),
            "{context}: mounts left under {}: {mounts:#?}",
            self.root.display()
        );
        let root = self.root.clone();
        let gone = poll(POLL_DEADLINE, || loops_for(&root).is_empty()).await;
        assert!(
            gone,
            "{context}: loop devices still backed by files under {}: {:?}",
            self.root.display(),
            loops_for(&self.root)
        );
        if !self.vgs.is_empty() {
            let vgs = self.vgs.clone();
            let gone = poll(POLL_DEADLINE, || {
                loops_over_lvs(&lvm_volume_lvs(&vgs)).is_empty()
            })
            .await;
            assert!(
                gone,
                "{context}: loop devices still over volume LVs of {:?}: {:?}",
                self.vgs,
                loops_over_lvs(&lvm_volume_lvs(&self.vgs))
            );
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut cleaned = cleanup(&self.root);
        if !self.vgs.is_empty() {
            if self.options.keep_lvs {
                cleaned.extend(detach_loops_over(&lvm_volume_lvs(&self.vgs)));
            } else {
                cleaned.extend(lvm_sweep(&self.vgs));
            }
        }
        if std::thread::panicking() || std::env::var_os("IOLANE_TEST_SHOW_DRIVER_LOG").is_some() {
            note(format!(
                "---- iolane log ({}) ----\n{}---- end of iolane log ----",
                self.root.display(),
                self.log()
            ));
        }
        if !cleaned.is_empty() {
            note(format!(
                "harness cleanup under {}: {}",
                self.root.display(),
                cleaned.join("; ")
            ));
        }
    }
}

fn path_string(p: &Path) -> String {
    p.to_str().expect("tempdir paths are UTF-8").to_owned()
}

/// A command for a host program. The harness has to start the binary under test and
/// `losetup`; the driver's own rule (processes only through its `os::CommandRunner`)
/// does not reach across into its test harness.
#[allow(
    clippy::disallowed_methods,
    reason = "the harness spawns the binary under test and cleanup tools"
)]
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::new(program)
}

/// Spawns `iolane node` for `root` and waits until its socket answers Probe with ready.
async fn launch(root: &Path, options: &Options) -> (Child, Channel) {
    let socket = root.join("sock/csi.sock");
    let log_path = root.join("driver.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open driver log");
    let mut cmd = command(binary());
    cmd.arg("node")
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .arg("--node-id")
        .arg(NODE_ID)
        .arg("--state-dir")
        .arg(root.join("state"));
    if options.config.is_some() {
        cmd.arg("--config").arg(root.join("config.toml"));
    }
    cmd.args(&options.args)
        // Settings of the environment running the tests must not leak into the driver.
        .env_remove("IOLANE_CONFIG")
        .env_remove("IOLANE_PATH_ROOT")
        .env_remove("IOLANE_DRIVER_NAME")
        .env_remove("IOLANE_MAX_VOLUMES")
        .env("IOLANE_LOG", "info,csi_driver=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    let mut child = cmd.spawn().expect("spawn iolane");
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("poll iolane") {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            panic!("iolane exited with {status} before serving\n{text}");
        }
        if socket.exists()
            && let Ok(channel) = connect(&socket).await
        {
            let ready = IdentityClient::new(channel.clone())
                .probe(csi::ProbeRequest {})
                .await
                .map(|r| r.into_inner().ready);
            if let Ok(Some(true)) = ready {
                return (child, channel);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "iolane did not answer Probe with ready=true on {} within {START_DEADLINE:?}\n{text}",
                socket.display()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A running `iolane controller` (the central Deployment's role) on a socket in its own
/// tempdir; killed on drop.
#[derive(Debug)]
pub struct Central {
    child: Child,
    pub channel: Channel,
    _tmp: tempfile::TempDir,
}

impl Central {
    /// Starts `iolane controller` and waits until Probe answers ready.
    pub async fn start() -> Central {
        let tmp = tempfile::Builder::new()
            .prefix("iolane-central-")
            .tempdir()
            .expect("create tempdir");
        let socket = tmp.path().join("controller.sock");
        let mut child = command(binary())
            .arg("controller")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .env("IOLANE_LOG", "info,csi_driver=debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn iolane controller");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("poll iolane") {
                panic!("iolane controller exited with {status} before serving");
            }
            if socket.exists()
                && let Ok(channel) = connect(&socket).await
                && let Ok(r) = IdentityClient::new(channel.clone())
                    .probe(csi::ProbeRequest {})
                    .await
                && r.into_inner().ready == Some(true)
            {
                return Central {
                    child,
                    channel,
                    _tmp: tmp,
                };
            }
            assert!(
                Instant::now() < deadline,
                "iolane controller did not become ready within {START_DEADLINE:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC channel over the Unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::try_from("http://[::]:50051")?
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

async fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(s) = child.try_wait().expect("poll child") {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Calls `check` until it returns true or `deadline` passes; returns the last answer.
pub async fn poll(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---- backends -------------------------------------------------------------------------

/// The backend the suite runs the driver on (`IOLANE_TEST_BACKEND`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBackend {
    /// The embedded default: sparse images on loop devices under the state dir.
    Loop,
    /// LVM thin pools on `devices` (`IOLANE_TEST_LVM_DEVICES`, comma-separated).
    Lvm { devices: Vec<String> },
}

/// VG of the default device class (what `--lvm-devices` would make).
pub const DEFAULT_VG: &str = "iolane";
/// Name of the default device class.
pub const DEFAULT_CLASS: &str = "default";
/// Prefix of the LV names of volumes.
pub const LV_PREFIX: &str = "iol-";
/// The extent size of a VG `vgcreate` makes: what LVM rounds LV sizes up to.
pub const LVM_EXTENT: i64 = 4 << 20;

/// The backend from `IOLANE_TEST_BACKEND` (`loop`, the default, or `lvm`); panics on
/// anything else, or on lvm without `IOLANE_TEST_LVM_DEVICES`.
pub fn test_backend() -> TestBackend {
    let kind = std::env::var("IOLANE_TEST_BACKEND").unwrap_or_default();
    match kind.as_str() {
        "" | "loop" => TestBackend::Loop,
        "lvm" => {
            let devices: Vec<String> = std::env::var("IOLANE_TEST_LVM_DEVICES")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
            assert!(
                !devices.is_empty(),
                "IOLANE_TEST_BACKEND=lvm needs IOLANE_TEST_LVM_DEVICES=/dev/A[,/dev/B] (blank devices or an iolane VG, in a VM: see tests/vm/README.md)"
            );
            TestBackend::Lvm { devices }
        }
        other => panic!("IOLANE_TEST_BACKEND={other:?}: expected \"loop\" or \"lvm\""),
    }
}

/// Whether the suite runs on the lvm backend.
pub fn is_lvm() -> bool {
    matches!(test_backend(), TestBackend::Lvm { .. })
}

/// Returns from the calling test with a printed reason unless running as root in lvm mode.
#[macro_export]
macro_rules! require_lvm {
    () => {
        $crate::require_root!();
        if !$crate::is_lvm() {
            $crate::note(
                "skipped: lvm backend test (set IOLANE_TEST_BACKEND=lvm and IOLANE_TEST_LVM_DEVICES; runs in the VM: tests/vm/lvm-suite.sh)",
            );
            return;
        }
    };
}

/// Granularity of volume sizes: the driver rounds to whole MiB on the loop backend and
/// LVM to whole extents (4 MiB) on the lvm backend.
pub fn size_unit() -> i64 {
    if is_lvm() { LVM_EXTENT } else { MIB }
}

/// How many times the idempotency checks repeat a call: 10 on the loop backend, 3 on the
/// lvm backend, where every call runs LVM commands that take about a second in the VM (three
/// calls already prove that a repeat changes nothing).
pub fn repeats() -> usize {
    if is_lvm() { 3 } else { 10 }
}

/// `v` (non-negative) rounded up to a multiple of `unit` (positive).
pub fn round_up(v: i64, unit: i64) -> i64 {
    (v + unit - 1) / unit * unit
}

/// The volume ID the driver derives from a CSI name: `iol-` + the first 16 bytes of its
/// SHA-256, hex.
pub fn volume_id_for(name: &str) -> String {
    format!("{LV_PREFIX}{}", &sha256(name.as_bytes())[..32])
}

/// An lvm device class for [`Options::lvm_classes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvmClass {
    pub name: String,
    pub devices: Vec<String>,
    pub vg: String,
    /// More `key = value` lines for the table (`pool_size_percent = 3`, ...).
    pub extra: String,
}

impl LvmClass {
    /// Class `default`, VG `iolane`, every other setting the driver's default: what
    /// `--lvm-devices` makes.
    pub fn default_class(devices: &[String]) -> LvmClass {
        LvmClass {
            name: DEFAULT_CLASS.to_owned(),
            devices: devices.to_vec(),
            vg: DEFAULT_VG.to_owned(),
            extra: String::new(),
        }
    }

    /// The `[[device_class]]` table.
    pub fn toml(&self) -> String {
        let devices: Vec<String> = self.devices.iter().map(|d| format!("{d:?}")).collect();
        let mut t = format!(
            "\n[[device_class]]\nname = {:?}\ndevices = [{}]\nvg = {:?}\n",
            self.name,
            devices.join(", "),
            self.vg
        );
        t.push_str(&self.extra);
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    }
}

/// One row of the harness's own `lvs` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub vg: String,
    pub name: String,
    pub attr: String,
    pub size: u64,
    /// Thin pool of a thin LV, empty otherwise.
    pub pool: String,
    pub tags: Vec<String>,
    /// `/dev/mapper/...`.
    pub dm_path: String,
    /// Kernel device number, `None` when the LV is not active.
    pub kernel: Option<(u32, u32)>,
    pub data_percent: String,
    pub when_full: String,
    /// Chunk size of a thin pool (0 for other LVs).
    pub chunk_size: u64,
}

impl LvInfo {
    /// The kernel's node (`/dev/dm-N`) of an active LV.
    pub fn device(&self) -> Option<PathBuf> {
        self.kernel?;
        fs::canonicalize(&self.dm_path).ok()
    }
}

/// Fields of [`lvm_lvs`].
const HARNESS_LV_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,pool_lv,lv_tags,lv_dm_path,lv_kernel_major,lv_kernel_minor,data_percent,lv_when_full,chunk_size";

/// Every LV of `vgs` (a missing VG has none), from one `lvs --reportformat json`.
pub fn lvm_lvs(vgs: &[String]) -> Vec<LvInfo> {
    if vgs.is_empty() {
        return Vec::new();
    }
    let out = command("lvs")
        .args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            HARNESS_LV_FIELDS,
        ])
        .args(vgs)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run lvs");
    // A missing VG is exit 5 with an empty, valid report on stdout: the report decides.
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lvs printed no JSON ({e}), exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let rows = json["report"][0]["lv"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
    rows.iter()
        .map(|r| {
            let major: i64 = text(r, "lv_kernel_major").parse().unwrap_or(-1);
            let minor: i64 = text(r, "lv_kernel_minor").parse().unwrap_or(-1);
            LvInfo {
                vg: text(r, "vg_name"),
                name: text(r, "lv_name"),
                attr: text(r, "lv_attr"),
                size: text(r, "lv_size").parse().unwrap_or(0),
                pool: text(r, "pool_lv"),
                tags: text(r, "lv_tags")
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                dm_path: text(r, "lv_dm_path"),
                kernel: match (u32::try_from(major), u32::try_from(minor)) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    _ => None,
                },
                data_percent: text(r, "data_percent"),
                when_full: text(r, "lv_when_full"),
                chunk_size: text(r, "chunk_size").parse().unwrap_or(0),
            }
        })
        .collect()
}

/// The `iol-*` LVs of `vgs`: the volumes, tagged or not.
pub fn lvm_volume_lvs(vgs: &[String]) -> Vec<LvInfo> {
    lvm_lvs(vgs)
        .into_iter()
        .filter(|l| l.name.starts_with(LV_PREFIX))
        .collect()
}

/// Loop devices whose backing file is the device of one of `lvs` (read-only block
/// publications).
pub fn loops_over_lvs(lvs: &[LvInfo]) -> Vec<PathBuf> {
    let devices: Vec<PathBuf> = lvs.iter().filter_map(LvInfo::device).collect();
    if devices.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let text = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let file = PathBuf::from(text.trim_end_matches('\n'));
            let file = fs::canonicalize(&file).unwrap_or(file);
            devices
                .contains(&file)
                .then(|| Path::new("/dev").join(&name))
        })
        .collect();
    out.sort();
    out
}

/// Unmounts whatever shows one of `devices` anywhere (a filesystem on it, or a bind of its
/// device node), deepest first; returns what it did.
fn unmount_devices(devices: &[PathBuf]) -> Vec<String> {
    let mut done = Vec::new();
    let numbers: Vec<(u32, u32)> = devices
        .iter()
        .filter_map(|d| {
            use std::os::unix::fs::MetadataExt;
            let rdev = fs::metadata(d).ok()?.rdev();
            Some((
                nix::sys::stat::major(rdev) as u32,
                nix::sys::stat::minor(rdev) as u32,
            ))
        })
        .collect();
    let names: Vec<PathBuf> = devices
        .iter()
        .filter_map(|d| d.file_name().map(|n| Path::new("/").join(n)))
        .collect();
    for m in mounts().iter().rev() {
        let on_device = numbers.contains(&(m.major, m.minor));
        let device_bind = m.fs_type == "devtmpfs" && names.contains(&m.root);
        if on_device || device_bind {
            match nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => done.push(format!("unmounted {}", m.mount_point.display())),
                Err(e) => done.push(format!("umount {} failed: {e}", m.mount_point.display())),
            }
        }
    }
    done
}

/// Unmounts and detaches the loop devices over `lvs`; returns what it did.
fn detach_loops_over(lvs: &[LvInfo]) -> Vec<String> {
    let loops = loops_over_lvs(lvs);
    let mut done = unmount_devices(&loops);
    done.extend(loops.iter().map(|dev| detach_loop(dev)));
    done
}

/// Detaches one loop device; says whether it could.
fn detach_loop(dev: &Path) -> String {
    let ok = command("losetup")
        .arg("--detach")
        .arg(dev)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    format!(
        "{} {}",
        if ok { "detached" } else { "could not detach" },
        dev.display()
    )
}

/// Removes every `iol-*` LV of `vgs` (after unmounting and detaching whatever uses it), so
/// the next test starts from empty VGs; returns what it did. Not a driver call: the driver
/// under test may be dead or wrong.
pub fn lvm_sweep(vgs: &[String]) -> Vec<String> {
    let lvs = lvm_volume_lvs(vgs);
    if lvs.is_empty() {
        return Vec::new();
    }
    let mut done = detach_loops_over(&lvs);
    let devices: Vec<PathBuf> = lvs.iter().filter_map(LvInfo::device).collect();
    done.extend(unmount_devices(&devices));
    for lv in &lvs {
        let out = command("lvremove")
            .arg("-y")
            .arg(format!("{}/{}", lv.vg, lv.name))
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                done.push(format!("removed LV {}/{}", lv.vg, lv.name));
            }
            Ok(o) => done.push(format!(
                "lvremove {}/{} failed ({}): {}",
                lv.vg,
                lv.name,
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => done.push(format!("lvremove {}/{} failed: {e}", lv.vg, lv.name)),
        }
    }
    done
}

/// Runs a host program and returns its stdout; panics with its stderr unless it exits 0.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = command(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- direct IO ------------------------------------------------------------------------

/// Alignment O_DIRECT needs for buffers, offsets and lengths (logical block size or more).
pub const DIRECT_ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes aligned for O_DIRECT (no `unsafe`: an aligned window of
/// a larger vector).
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let off = raw.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(off < DIRECT_ALIGN, "cannot align a buffer");
        AlignedBuf { raw, off, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Opens `path` with O_DIRECT (page cache bypassed: reads see the device, writes reach it).
pub fn open_direct(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
}

/// Reads `len` bytes at `offset` of `path` with O_DIRECT (both multiples of
/// [`DIRECT_ALIGN`]).
pub fn read_direct(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = open_direct(path, false)?;
    let mut buf = AlignedBuf::new(len);
    f.read_exact_at(buf.as_mut_slice(), offset)?;
    Ok(buf.as_slice().to_vec())
}

/// Writes `data` at `offset` of `path` with O_DIRECT and fsyncs (length and offset
/// multiples of [`DIRECT_ALIGN`]).
pub fn write_direct(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let f = open_direct(path, true)?;
    let mut buf = AlignedBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    f.write_all_at(buf.as_slice(), offset)?;
    f.sync_all()
}

// ---- host inspection ------------------------------------------------------------------

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub major: u32,
    pub minor: u32,
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, ...).
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

impl MountInfo {
    /// Whether the mount itself is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u16, |acc, c| acc * 8 + u16::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount table of this process's mount namespace, in mount order.
pub fn mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (major, minor) = l.get(2)?.split_once(':')?;
            Some(MountInfo {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                root: PathBuf::from(unescape(l.get(3)?)),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                options: (*l.get(5)?).to_owned(),
                fs_type: (*r.first()?).to_owned(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// Mounts at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<MountInfo> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// The topmost mount at exactly `path`.
pub fn mount_at(path: impl AsRef<Path>) -> Option<MountInfo> {
    let path = path.as_ref();
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Loop devices (`/dev/loopN`) whose backing file lies under `dir`, including backing
/// files that were deleted while attached.
pub fn loops_for(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let text = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let text = text.trim_end_matches('\n');
            let file = text.strip_suffix(" (deleted)").unwrap_or(text);
            Path::new(file)
                .starts_with(dir)
                .then(|| Path::new("/dev").join(&name))
        })
        .collect();
    out.sort();
    out
}

/// Every entry (files, directories, sockets, ...) below `dir`, recursively, sorted;
/// symbolic links are listed, not followed. Empty if `dir` does not exist.
pub fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every non-directory entry below `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// Removes what a test left under `root`: unmounts (lazily, deepest first) everything
/// mounted below it and detaches loop devices backed by files below it. Returns what it
/// did, for the log.
pub fn cleanup(root: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for _ in 0..16 {
        let left = mounts_under(root);
        if left.is_empty() {
            break;
        }
        for m in left.iter().rev() {
            match nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => done.push(format!("unmounted {}", m.mount_point.display())),
                Err(e) => done.push(format!("umount {} failed: {e}", m.mount_point.display())),
            }
        }
    }
    done.extend(loops_for(root).iter().map(|dev| detach_loop(dev)));
    done
}

// ---- requests -------------------------------------------------------------------------

/// A capability with `access` and `mode`.
pub fn capability(access: AccessType, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(access),
    }
}

/// SINGLE_NODE_WRITER mount capability with `fs_type` (empty = driver's choice).
pub fn mount_cap(fs: &str) -> VolumeCapability {
    capability(
        AccessType::Mount(MountVolume {
            fs_type: fs.to_owned(),
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    )
}

/// SINGLE_NODE_WRITER raw block capability.
pub fn block_cap() -> VolumeCapability {
    capability(AccessType::Block(BlockVolume {}), Mode::SingleNodeWriter)
}

/// `cap` with its access mode replaced.
pub fn with_mode(mut cap: VolumeCapability, mode: Mode) -> VolumeCapability {
    cap.access_mode = Some(AccessMode { mode: mode as i32 });
    cap
}

/// A CreateVolume request; `required`/`limit` of 0 mean unset, and both 0 sends no range.
pub fn create_request(
    name: &str,
    caps: Vec<VolumeCapability>,
    required: i64,
    limit: i64,
) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: (required != 0 || limit != 0).then_some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        volume_capabilities: caps,
        ..Default::default()
    }
}

/// A NodeStageVolume request.
pub fn stage_request(id: &str, staging: &str, cap: &VolumeCapability) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.to_owned(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    }
}

/// A NodeUnstageVolume request.
pub fn unstage_request(id: &str, staging: &str) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.to_owned(),
    }
}

/// A NodePublishVolume request.
pub fn publish_request(
    id: &str,
    staging: &str,
    target: &str,
    cap: &VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.to_owned(),
        target_path: target.to_owned(),
        volume_capability: Some(cap.clone()),
        readonly,
        ..Default::default()
    }
}

/// A NodeUnpublishVolume request.
pub fn unpublish_request(id: &str, target: &str) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.to_owned(),
    }
}

/// The single-segment topology of the test node.
pub fn node_topology() -> HashMap<String, String> {
    HashMap::from([(TOPOLOGY_KEY.to_owned(), NODE_ID.to_owned())])
}

/// Unwraps an RPC reply that must succeed, naming the call on failure.
#[track_caller]
pub fn ok<T>(res: Result<Response<T>, Status>, what: &str) -> T {
    match res {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("{what}: expected OK, got {:?}: {}", s.code(), s.message()),
    }
}

/// Asserts that an RPC failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(res: Result<Response<T>, Status>, code: Code, what: &str) -> Status {
    match res {
        Ok(r) => panic!("{what}: expected {code:?}, got OK: {:?}", r.get_ref()),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            s
        }
    }
}

// ---- data -----------------------------------------------------------------------------

/// `len` pseudo-random bytes from `seed` (splitmix64): reproducible, incompressible.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` at the start of `path` (a file, created if needed, or a block device)
/// and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // No truncation: the path may be a block device.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Reads `len` bytes from the start of `path`.
pub fn read_prefix(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// Size in bytes of the block device at `path` (through a bind mount too).
pub fn block_device_size(path: &Path) -> u64 {
    let mut f = File::open(path).expect("open block device");
    f.seek(SeekFrom::End(0))
        .expect("seek to end of block device")
}
