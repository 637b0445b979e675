//! The driver side: `iolane node` on the first disk, one CSI volume cycle (Create, Stage,
//! Publish, Unpublish, Unstage, Delete) with the processes each RPC spawned, the sequential
//! phase (driver and raw cycles alternating) and the driver's concurrent phase.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, MountVolume};
use iolane_tests::{connect_with_timeout, csi};
use serde_json::Value;
use tonic::transport::Channel;

use crate::raw::raw_cycle;
use crate::report::{Phase, Sample};
use crate::{Args, DRAINS, GIB, STEPS_DRIVER, STEPS_RAW, drain, record_check, secs, sh_status};

/// Upper bound for one RPC of the benchmark.
const RPC_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) struct Driver {
    pub(crate) child: Child,
    pub(crate) root: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) controller: ControllerClient<Channel>,
    pub(crate) node: NodeClient<Channel>,
}

pub(crate) async fn start_driver(a: &Args) -> Driver {
    let root = PathBuf::from("/tmp/iolane-bench");
    let _ = fs::remove_dir_all(&root);
    for d in ["state", "staging", "mount"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let socket = root.join("csi.sock");
    let log = root.join("driver.log");
    let f = File::create(&log).unwrap();
    // The default class as `--lvm-devices` makes it, with spares as asked.
    let config = root.join("node.toml");
    fs::write(
        &config,
        format!(
            "[[device_class]]\nname = \"default\"\ndevices = [{:?}]\nspares = {}\n",
            a.driver_device, a.spares
        ),
    )
    .unwrap();
    let mut child = Command::new(&a.iolane)
        .arg("node")
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "--node-id",
            "vm",
            "--log-format",
            "json",
            "--log",
            "info,csi_driver=debug",
        ])
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--config")
        .arg(&config)
        .env_remove("IOLANE_CONFIG")
        .env("IOLANE_STATUS_ADDRESS", "off")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn iolane");
    let t0 = Instant::now();
    loop {
        if socket.exists()
            && let Ok(ch) = connect_with_timeout(&socket, RPC_TIMEOUT).await
            && let Ok(r) = IdentityClient::new(ch.clone())
                .probe(csi::ProbeRequest {})
                .await
            && r.into_inner().ready == Some(true)
        {
            eprintln!(
                "bench: driver ready after {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            return Driver {
                child,
                root,
                log,
                controller: ControllerClient::new(ch.clone()),
                node: NodeClient::new(ch),
            };
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "driver not ready: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Current length of the driver log (to attribute the lines that follow to one RPC).
pub(crate) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The programs the driver spawned between two log offsets.
pub(crate) fn spawns_between(path: &Path, from: u64, to: u64) -> Vec<String> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = vec![0; (to - from) as usize];
    f.read_exact(&mut buf).unwrap();
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&buf).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &v["fields"];
        if fields["message"] == "running"
            && let Some(argv) = fields["argv"].as_str()
        {
            out.push(argv.to_owned());
        }
    }
    out
}

/// One driver cycle; with `trace`, also the argv lines each RPC spawned.
pub(crate) async fn driver_cycle(
    mut controller: ControllerClient<Channel>,
    mut node: NodeClient<Channel>,
    root: &Path,
    log: &Path,
    name: &str,
    trace: Option<&mut Vec<Vec<String>>>,
) -> Sample {
    let staging = root.join("staging").join(name);
    fs::create_dir_all(&staging).unwrap();
    let staging = staging.to_str().unwrap().to_owned();
    let target = root.join("mount").join(name).to_str().unwrap().to_owned();
    let mut times = Vec::with_capacity(6);
    let mut offsets = vec![log_len(log)];
    macro_rules! step {
        ($e:expr, $what:expr) => {{
            let t = Instant::now();
            let r = $e.await.unwrap_or_else(|s| panic!("{} {name}: {s}", $what));
            times.push(secs(t.elapsed()));
            // The log is written synchronously by the driver before it answers.
            offsets.push(log_len(log));
            r.into_inner()
        }};
    }
    let v = step!(
        controller.create_volume(csi::CreateVolumeRequest {
            name: name.to_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: GIB,
                limit_bytes: 0
            }),
            volume_capabilities: vec![cap()],
            ..Default::default()
        }),
        "CreateVolume"
    );
    let id = v.volume.expect("volume").volume_id;
    step!(
        node.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(cap()),
            ..Default::default()
        }),
        "NodeStage"
    );
    // Not timed: the staged filesystem's device and UUID.
    let (_, dev) = sh_status("findmnt", &["-n", "-o", "SOURCE", "--mountpoint", &staging]);
    let dev = dev.trim().to_owned();
    let (_, uuid) = sh_status("blkid", &["-p", "-s", "UUID", "-o", "value", &dev]);
    step!(
        node.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(cap()),
            ..Default::default()
        }),
        "NodePublish"
    );
    step!(
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.clone(),
        }),
        "NodeUnpublish"
    );
    step!(
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
        }),
        "NodeUnstage"
    );
    // Not timed: `fsck -n` of the unstaged filesystem.
    let (clean, fsck) = sh_status("e2fsck", &["-f", "-n", &dev]);
    record_check(name, uuid.trim(), clean, &format!("{dev}: {fsck}"));
    step!(
        controller.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        }),
        "DeleteVolume"
    );
    if let Some(tr) = trace {
        for w in offsets.windows(2) {
            tr.push(spawns_between(log, w[0], w[1]));
        }
    }
    times
}

/// The sequential phase: driver cycle i, then raw cycle i, alternating, so that a change in
/// the machine's load (another VM on the same cores) hits both sides alike. A side's wall
/// time is the sum of its own cycles.
pub(crate) async fn sequential(
    d: &Driver,
    n: usize,
    spawns: &mut Vec<Vec<Vec<String>>>,
) -> (Phase, Phase) {
    let (mut ds, mut rs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut tr = Vec::new();
        ds.push(
            driver_cycle(
                d.controller.clone(),
                d.node.clone(),
                &d.root,
                &d.log,
                &format!("seq-{i}"),
                Some(&mut tr),
            )
            .await,
        );
        spawns.push(tr);
        let waited = drain(&d.log).await;
        DRAINS.lock().unwrap().push(waited);
        rs.push(tokio::task::block_in_place(|| {
            raw_cycle(&format!("seq-{i}"))
        }));
    }
    let wall = |v: &[Sample]| v.iter().map(|s| s.iter().sum::<f64>()).sum();
    (
        Phase {
            name: "driver_sequential".into(),
            steps: STEPS_DRIVER,
            wall: wall(&ds),
            samples: ds,
        },
        Phase {
            name: "raw_sequential".into(),
            steps: STEPS_RAW,
            wall: wall(&rs),
            samples: rs,
        },
    )
}

pub(crate) async fn driver_concurrent(d: &Driver, workers: usize, per: usize) -> Phase {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (c, n, root, log) = (
            d.controller.clone(),
            d.node.clone(),
            d.root.clone(),
            d.log.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..per {
                out.push(
                    driver_cycle(
                        c.clone(),
                        n.clone(),
                        &root,
                        &log,
                        &format!("conc-{w}-{i}"),
                        None,
                    )
                    .await,
                );
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    Phase {
        name: "driver_concurrent".into(),
        steps: STEPS_DRIVER,
        samples,
        wall: secs(t.elapsed()),
    }
}
