//! The `publish_*` tests: a tempdir cgroup root of plain files, so the `io.max` line the
//! driver writes at publish (and removes at unpublish, re-computes after an expansion) is
//! the file's whole content.

use super::*;

/// A fake cgroup v2 tree: `<root>/kubepods/burstable/pod<uid>` with `cgroup.controllers`
/// listing io and an empty `io.max`.
fn fake_pod_cgroup(root: &Path, uid: &str) -> PathBuf {
    let dir = root.join("kubepods/burstable").join(format!("pod{uid}"));
    fs::create_dir_all(&dir).expect("create fake cgroup");
    fs::write(dir.join("cgroup.controllers"), "cpu io memory pids\n").expect("write controllers");
    fs::write(dir.join("io.max"), "").expect("write io.max");
    dir
}

#[tokio::test]
async fn publish_writes_the_tiers_four_caps_for_the_volumes_own_device_and_unpublish_lifts_them() {
    require_root!();
    let cg = tempfile::tempdir().expect("tempdir");
    let cg_root = cg.path().canonicalize().expect("canonicalize");
    let mut d = Driver::start_with(Options {
        args: vec!["--cgroup-root".into(), cg_root.display().to_string()],
        config: Some(TIERS.to_owned()),
        ..Options::default()
    })
    .await;

    // batch, raw block, pod UID in volume_context, a kubelet-shaped target path.
    let batch_pod = uuid();
    let batch_cg = fake_pod_cgroup(&cg_root, &batch_pod);
    let mut req = create_request("tier-batch", vec![block_cap()], GIB, 0);
    req.parameters = params(&[(TIER_KEY, "batch")]);
    let vol = ok(d.controller.create_volume(req).await, "CreateVolume batch")
        .volume
        .expect("volume");
    assert_eq!(
        vol.volume_context.get(TIER_KEY).map(String::as_str),
        Some("batch")
    );
    let staging = d.make_staging("tier-batch");
    ok(
        d.node
            .node_stage_volume(stage_request(&vol.volume_id, &staging, &block_cap()))
            .await,
        "NodeStage batch",
    );
    let dir = d
        .root()
        .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-batch");
    fs::create_dir_all(&dir).expect("create publish dir");
    let target = dir.join(&batch_pod);
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
        .insert(POD_UID_KEY.into(), batch_pod.clone());
    ok(
        d.node.node_publish_volume(publish).await,
        "NodePublish batch",
    );
    let dev = stat_dev(&target);
    assert_eq!(
        dev,
        lsblk_dev(&target),
        "stat and lsblk disagree on {}",
        target.display()
    );
    let text = cat_io_max(&batch_cg);
    assert_eq!(text.lines().count(), 1, "one line written: {text:?}");
    assert_caps(
        text.trim(),
        &dev,
        [
            ("rbps", "max"),
            ("wbps", "max"),
            ("riops", "200"),
            ("wiops", "200"),
        ],
    );

    // streaming: uncapped, so nothing is written into a pod io.max that has no line.
    let stream_pod = uuid();
    let stream_cg = fake_pod_cgroup(&cg_root, &stream_pod);
    let mut req = create_request("tier-streaming", vec![block_cap()], GIB, 0);
    req.parameters = params(&[(TIER_KEY, "streaming")]);
    let svol = ok(
        d.controller.create_volume(req).await,
        "CreateVolume streaming",
    )
    .volume
    .expect("volume");
    let sstaging = d.make_staging("tier-streaming");
    ok(
        d.node
            .node_stage_volume(stage_request(&svol.volume_id, &sstaging, &block_cap()))
            .await,
        "NodeStage streaming",
    );
    let sdir = d
        .root()
        .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-streaming");
    fs::create_dir_all(&sdir).expect("create publish dir");
    let starget = sdir.join(&stream_pod);
    let mut publish = publish_request(
        &svol.volume_id,
        &sstaging,
        &starget.to_string_lossy(),
        &block_cap(),
        false,
    );
    publish
        .volume_context
        .insert(POD_UID_KEY.into(), stream_pod.clone());
    ok(
        d.node.node_publish_volume(publish).await,
        "NodePublish streaming",
    );
    assert_eq!(
        cat_io_max(&stream_cg),
        "",
        "streaming is uncapped: nothing to write"
    );

    // A filesystem volume with an override, whose pod UID comes from the kubelet target
    // path alone (no pod UID in volume_context).
    let fs_pod = uuid();
    let fs_cg = fake_pod_cgroup(&cg_root, &fs_pod);
    let mut req = create_request("tier-fs", vec![mount_cap("ext4")], GIB, 0);
    req.parameters = params(&[(TIER_KEY, "batch"), ("iolane.dev/read-iops", "150")]);
    let fvol = ok(d.controller.create_volume(req).await, "CreateVolume fs")
        .volume
        .expect("volume");
    let fstaging = d.make_staging("tier-fs");
    ok(
        d.node
            .node_stage_volume(stage_request(
                &fvol.volume_id,
                &fstaging,
                &mount_cap("ext4"),
            ))
            .await,
        "NodeStage fs",
    );
    let ftarget = d
        .root()
        .join("kubelet/pods")
        .join(&fs_pod)
        .join("volumes/kubernetes.io~csi/pv-fs/mount");
    fs::create_dir_all(ftarget.parent().expect("parent")).expect("create pod volume dir");
    ok(
        d.node
            .node_publish_volume(publish_request(
                &fvol.volume_id,
                &fstaging,
                &ftarget.to_string_lossy(),
                &mount_cap("ext4"),
                false,
            ))
            .await,
        "NodePublish fs",
    );
    let fdev = run("mountpoint", &["-d", &ftarget.to_string_lossy()])
        .trim()
        .to_owned();
    let text = cat_io_max(&fs_cg);
    assert_caps(
        text.trim(),
        &fdev,
        [
            ("rbps", "max"),
            ("wbps", "max"),
            ("riops", "150"),
            ("wiops", "200"),
        ],
    );

    // Unpublish lifts every cap: the kernel drops an all-max line, so the driver writes one.
    for (id, t, cgroup, dev) in [
        (&vol.volume_id, &target, &batch_cg, &dev),
        (&fvol.volume_id, &ftarget, &fs_cg, &fdev),
    ] {
        ok(
            d.node
                .node_unpublish_volume(unpublish_request(id, &t.to_string_lossy()))
                .await,
            "NodeUnpublish",
        );
        let text = cat_io_max(cgroup);
        assert_caps(
            text.trim(),
            dev,
            [
                ("rbps", "max"),
                ("wbps", "max"),
                ("riops", "max"),
                ("wiops", "max"),
            ],
        );
    }
    ok(
        d.node
            .node_unpublish_volume(unpublish_request(
                &svol.volume_id,
                &starget.to_string_lossy(),
            ))
            .await,
        "NodeUnpublish streaming",
    );
    for (id, s) in [
        (&vol.volume_id, &staging),
        (&svol.volume_id, &sstaging),
        (&fvol.volume_id, &fstaging),
    ] {
        ok(
            d.node.node_unstage_volume(unstage_request(id, s)).await,
            "NodeUnstage",
        );
        ok(
            d.controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
                .await,
            "DeleteVolume",
        );
    }
    d.assert_no_leaks("after the tier volumes are gone").await;
}

/// A tier with per-GiB IOPS caps: 100 reads and 50 writes per GiB.
/// A streaming tier with per-GiB caps: the priority controllers (on by default) give a
/// streaming volume exactly its ceiling, so the line is the tier's caps for the size (a
/// batch tier's line would be its dynamic share under them).
const PER_GIB_TIERS: &str = "[tiers.perf]\npriority = \"streaming\"\nread_bps = \"max\"\nwrite_bps = \"max\"\nper_gib = { read_iops = 100, write_iops = 50, floor_gib = 1, ceiling_gib = 100 }\n";

#[tokio::test]
async fn publish_caps_follow_the_size_after_node_expand_volume() {
    require_root!();
    let cg = tempfile::tempdir().expect("tempdir");
    let cg_root = cg.path().canonicalize().expect("canonicalize");
    let mut d = Driver::start_with(Options {
        args: vec!["--cgroup-root".into(), cg_root.display().to_string()],
        config: Some(PER_GIB_TIERS.to_owned()),
        ..Options::default()
    })
    .await;
    let pod = uuid();
    let pod_cg = fake_pod_cgroup(&cg_root, &pod);
    let mut req = create_request("tier-grow", vec![block_cap()], GIB, 0);
    req.parameters = params(&[(TIER_KEY, "perf")]);
    let vol = ok(d.controller.create_volume(req).await, "CreateVolume perf")
        .volume
        .expect("volume");
    let staging = d.make_staging("tier-grow");
    ok(
        d.node
            .node_stage_volume(stage_request(&vol.volume_id, &staging, &block_cap()))
            .await,
        "NodeStage",
    );
    let dir = d
        .root()
        .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-grow");
    fs::create_dir_all(&dir).expect("create publish dir");
    let target = dir.join(&pod);
    let mut publish = publish_request(
        &vol.volume_id,
        &staging,
        &target.to_string_lossy(),
        &block_cap(),
        false,
    );
    publish
        .volume_context
        .insert(POD_UID_KEY.into(), pod.clone());
    ok(d.node.node_publish_volume(publish).await, "NodePublish");
    let dev = stat_dev(&target);
    let caps_now = |riops: &str, wiops: &str| {
        let text = cat_io_max(&pod_cg);
        let line = line_of(&text, &dev).unwrap_or_else(|| panic!("no line in {text:?}"));
        assert_caps(
            &line,
            &dev,
            [
                ("rbps", "max"),
                ("wbps", "max"),
                ("riops", riops),
                ("wiops", wiops),
            ],
        );
    };
    caps_now("100", "50");

    // Grown to 3 GiB: the controller side, then the node's own expansion re-caps the pod.
    let range = Some(csi::CapacityRange {
        required_bytes: 3 * GIB,
        limit_bytes: 0,
    });
    ok(
        d.controller
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                capacity_range: range,
                ..Default::default()
            })
            .await,
        "ControllerExpandVolume",
    );
    ok(
        d.node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: target.to_string_lossy().into_owned(),
                capacity_range: range,
                volume_capability: Some(block_cap()),
                ..Default::default()
            })
            .await,
        "NodeExpandVolume",
    );
    caps_now("300", "150");

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
    ok(
        d.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: vol.volume_id.clone(),
                ..Default::default()
            })
            .await,
        "DeleteVolume",
    );
    d.assert_no_leaks("after the expansion caps test").await;
}
