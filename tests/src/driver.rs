//! [`Driver`]: one `iolane node` in a tempdir of its own (state dir, socket, staging and
//! mount parents) with CSI clients connected to it; its start-up [`Options`]; the
//! backend-neutral views of what it stored; kill, stop and restart; and the clean-up on drop
//! (mounts, loop devices and, in lvm mode, `iol-*` LVs a failing test left).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::csi;
use crate::csi::controller_client::ControllerClient;
use crate::csi::identity_client::IdentityClient;
use crate::csi::node_client::NodeClient;
use crate::{
    LvInfo, LvmClass, NODE_ID, POLL_DEADLINE, POLL_INTERVAL, TestBackend, binary, cleanup, command,
    connect, detach_loops_over, files_under, loops_for, loops_over_lvs, lvm_sweep, lvm_volume_lvs,
    mounts_under, note, poll, start_deadline, test_backend,
};

/// How long the driver may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

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
    /// The driver's log filter (`IOLANE_LOG`); `None` is `info,csi_driver=debug`.
    pub log: Option<String>,
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
    /// `vg/<volume ID>` of the `iol-*` LVs in the test VGs that are not spares (lvm; see
    /// [`LvInfo::volume_id`](crate::LvInfo::volume_id)). Sorted.
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
                .filter_map(|l| Some(format!("{}/{}", l.vg, l.volume_id()?)))
                .collect();
            v.sort();
            v
        }
    }

    /// Everything of the backend's that a refused call must leave unchanged: every file
    /// under the state dir but the node's instance lock (loop), or every `iol-*` LV with
    /// its size and tags (lvm). Sorted.
    pub fn backend_state(&self) -> Vec<String> {
        if self.vgs.is_empty() {
            let lock = self.state_dir().join("iolane.lock");
            files_under(&self.state_dir())
                .iter()
                .filter(|p| **p != lock)
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
        // Tests run drivers side by side: `/status` only where a test asks for it with
        // `--status-address` (the default loopback port would be taken by the first).
        .env("IOLANE_STATUS_ADDRESS", "off")
        .env(
            "IOLANE_LOG",
            options.log.as_deref().unwrap_or("info,csi_driver=debug"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    let mut child = cmd.spawn().expect("spawn iolane");
    let deadline = Instant::now() + start_deadline();
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
                "iolane did not answer Probe with ready=true on {} within {:?}\n{text}",
                socket.display(),
                start_deadline()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
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
