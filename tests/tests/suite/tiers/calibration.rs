//! `iolane bench --calibrate` end to end on the loop backend (host, root): the calibration
//! of a real loop device whose backing file is in the node's state directory is stored
//! under that directory, and the running `iolane node` starts the priority controller of
//! that disk from it (`/status`'s `devices`: the stored read and write IOPS, source
//! `calibrated`), with the default tiers (priority on) and no `[priority.devices]` entry.
//!
//! In lvm mode (the VM) the volumes are not on the state directory's disk: the test
//! returns with a printed reason there; the loop backend runs it on the host.

use super::*;

/// A free loopback address for `--status-address`.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("test setup")
        .local_addr()
        .expect("test setup")
}

/// `key=value` of a calibration file, read without the project's parser.
fn value(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {text:?}: {e}"))
}

#[tokio::test]
async fn calibrate_a_loop_device_and_the_node_starts_its_disk_from_it() {
    require_root!();
    let cg = tempfile::tempdir().expect("tempdir");
    let cg_root = cg.path().canonicalize().expect("canonicalize");
    let status_addr = free_addr();
    let mut d = Driver::start_with(Options {
        args: vec![
            "--cgroup-root".into(),
            cg_root.display().to_string(),
            "--status-address".into(),
            status_addr.to_string(),
        ],
        ..Options::default()
    })
    .await;
    if !d.vgs().is_empty() {
        note(
            "calibration: lvm mode, the volumes are not on the state directory's disk; the loop backend runs this test",
        );
        return;
    }
    let state = d.state_dir();

    // A scratch image in the state directory, on a real loop device.
    let img = state.join("calibrate-scratch.img");
    let f = fs::File::create(&img).expect("create the scratch image");
    f.set_len(64 << 20).expect("size the scratch image");
    drop(f);
    /// Detaches the scratch loop device and removes its image, also on a failed assert.
    struct Scratch(String, PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::panic::catch_unwind(|| run("losetup", &["-d", &self.0]));
            let _ = fs::remove_file(&self.1);
        }
    }
    let loopdev = run("losetup", &["--find", "--show", &img.to_string_lossy()])
        .trim()
        .to_owned();
    let scratch = Scratch(loopdev.clone(), img);
    let bin = binary();
    let stdout = run(
        &bin.to_string_lossy(),
        &[
            "--log",
            "warn",
            "bench",
            "--calibrate",
            "--target",
            &loopdev,
            "--state-dir",
            &state.to_string_lossy(),
            "--duration",
            "1",
            "--queue-depth",
            "8",
            "--size-limit",
            &(32u64 << 20).to_string(),
        ],
    );
    drop(scratch);
    assert!(stdout.contains("calibrated "), "{stdout}");
    let files: Vec<PathBuf> = fs::read_dir(state.join("calibration"))
        .expect("the calibration directory")
        .map(|e| e.expect("read_dir").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = fs::read_to_string(&files[0]).expect("read the calibration");
    let (read_iops, write_iops) = (value(&stored, "read_iops"), value(&stored, "write_iops"));
    for key in ["read_iops", "write_iops", "read_bps", "write_bps"] {
        assert!(value(&stored, key) > 0.0, "{key}: {stored}");
    }
    // The disk under the state directory, as the kernel names it.
    let st_dev = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&state)
            .expect("stat the state directory")
            .dev()
    };
    let major_minor = format!(
        "{}:{}",
        nix::sys::stat::major(st_dev),
        nix::sys::stat::minor(st_dev)
    );
    let disk = fs::read_to_string(format!("/sys/dev/block/{major_minor}/uevent"))
        .expect("the state directory's block device")
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
        .expect("DEVNAME");
    assert!(
        stored.contains(&format!("name={disk}\n")),
        "not the state directory's disk {disk}: {stored}"
    );

    // A batch volume published to a pod: its loop device's controller starts from the
    // calibration.
    let uid = uuid();
    let pod = cg_root
        .join("kubepods/besteffort")
        .join(format!("pod{uid}"));
    fs::create_dir_all(&pod).expect("create fake cgroup");
    fs::write(pod.join("cgroup.controllers"), "io memory\n").expect("write");
    fs::write(pod.join("io.max"), "").expect("write");
    fs::write(pod.join("io.stat"), "").expect("write");
    let mut req = create_request("calibrated", vec![block_cap()], GIB, 0);
    req.parameters = params(&[(TIER_KEY, "batch")]);
    let vol = ok(d.controller.create_volume(req).await, "CreateVolume")
        .volume
        .expect("volume");
    let staging = d.make_staging("calibrated");
    ok(
        d.node
            .node_stage_volume(stage_request(&vol.volume_id, &staging, &block_cap()))
            .await,
        "NodeStage",
    );
    let dir = d
        .root()
        .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-calibrated");
    fs::create_dir_all(&dir).expect("create publish dir");
    let target = dir.join(&uid);
    let mut publish = publish_request(
        &vol.volume_id,
        &staging,
        &target.to_string_lossy(),
        &block_cap(),
        false,
    );
    publish.volume_context = vol.volume_context.clone();
    publish
        .volume_context
        .insert(POD_UID_KEY.into(), uid.clone());
    ok(d.node.node_publish_volume(publish).await, "NodePublish");

    let mut body = String::new();
    let found = poll(Duration::from_secs(30), || {
        body = super::vm::http_get(&status_addr.to_string(), "/status");
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|s| {
            s["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == disk.as_str()))
        })
    })
    .await;
    assert!(
        found,
        "/status never showed a controller for {disk}: {body}"
    );
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let dev = status["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == disk.as_str()))
        .expect("the device");
    assert_eq!(dev["capacity_source"], "calibrated", "{dev}");
    assert_eq!(dev["capacity_scale"], 1.0, "{dev}");
    let close = |got: &serde_json::Value, want: f64| {
        got.as_f64()
            .is_some_and(|g| (g - want).abs() <= 1e-6 * want)
    };
    assert!(
        close(&dev["capacity_read_iops"], read_iops),
        "{dev} vs {stored}"
    );
    assert!(
        close(&dev["capacity_write_iops"], write_iops),
        "{dev} vs {stored}"
    );
    assert_eq!(dev["batch_publications"], 1, "{dev}");

    ok(
        d.node
            .node_unpublish_volume(unpublish_request(&vol.volume_id, &target.to_string_lossy()))
            .await,
        "NodeUnpublish",
    );
    ok(
        d.node
            .node_unstage_volume(unstage_request(&vol.volume_id, &staging))
            .await,
        "NodeUnstage",
    );
}
