//! The full life cycle of a volume on ext4, the default filesystem, xfs and raw block:
//! create, stage, publish, data written and read back, NodeGetVolumeStats, then teardown.

use super::*;

async fn full_cycle(kind: Kind, size: i64) {
    let mut d = Driver::start().await;
    let cap = kind.cap();
    let v = create(&mut d, "cycle", &cap, size).await;
    let id = v.volume_id.clone();
    assert_eq!(v.capacity_bytes, size);
    let staging = d.make_staging("cycle");
    let target = d.target("cycle");

    for i in 0..repeats() {
        let r = d
            .node
            .node_stage_volume(stage_request(&id, &staging, &cap))
            .await;
        ok(r, &format!("NodeStageVolume #{i}"));
    }
    assert_eq!(
        d.attached_devices().len(),
        1,
        "one block device for the staged volume: {:?}",
        d.attached_devices()
    );
    if let Kind::Fs(fs) = kind {
        let m = mount_at(&staging).expect("staging path is not mounted after NodeStageVolume");
        assert_eq!(m.fs_type, if fs.is_empty() { "ext4" } else { fs });
        assert_eq!(
            mount_count(&staging),
            1,
            "{} NodeStageVolume calls stacked mounts",
            repeats()
        );
    }
    for i in 0..repeats() {
        let r = d
            .node
            .node_publish_volume(publish_request(&id, &staging, &target, &cap, false))
            .await;
        ok(r, &format!("NodePublishVolume #{i}"));
    }
    assert_eq!(
        mount_count(&target),
        1,
        "{} NodePublishVolume calls stacked mounts",
        repeats()
    );
    let md = std::fs::metadata(&target).expect("stat target");
    match kind {
        Kind::Fs(_) => assert!(md.is_dir(), "mount target is not a directory"),
        Kind::Block => {
            assert!(
                md.file_type().is_block_device(),
                "block target is not a device node"
            );
            assert_eq!(
                block_device_size(Path::new(&target)),
                u64::try_from(size).expect("fits")
            );
        }
    }

    let data = pattern(0x10_1a_2e, DATA_LEN);
    let sum = sha256(&data);
    let path = kind.data_path(&target);
    write_synced(&path, &data).expect("write through the published volume");
    assert_eq!(
        sha256(&read_prefix(&path, DATA_LEN).expect("read back")),
        sum
    );
    assert_stats(&mut d, &id, &target, kind, size).await;

    for _ in 0..repeats() {
        unpublish(&mut d, &id, &target).await;
    }
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "NodeUnpublishVolume left the target path {target}"
    );
    for _ in 0..repeats() {
        unstage(&mut d, &id, &staging).await;
    }
    assert!(
        mount_at(&staging).is_none(),
        "staging still mounted after NodeUnstageVolume"
    );
    assert!(
        poll(iolane_tests::POLL_DEADLINE, || d
            .devices_left_after_unstage()
            .is_empty())
        .await,
        "devices left after NodeUnstageVolume: {:?}",
        d.devices_left_after_unstage()
    );

    // Persistence: the same bytes after a fresh stage and publish.
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let back = read_prefix(&path, DATA_LEN).expect("read after re-stage");
    assert_eq!(sha256(&back), sum, "data changed across unstage and stage");
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;

    delete(&mut d, &id).await;
    assert!(
        d.backend_state().is_empty(),
        "files left in the state dir: {:?}",
        d.backend_state()
    );
    assert!(
        entries_under(&d.root().join("mount")).is_empty(),
        "entries left under the mount dir"
    );
    d.assert_no_leaks("after the full cycle").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_cycle_ext4() {
    require_root!();
    full_cycle(Kind::Fs("ext4"), 64 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_cycle_default_fs_is_ext4() {
    require_root!();
    full_cycle(Kind::Fs(""), 32 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_cycle_xfs() {
    require_root!();
    if !have_xfs() {
        return;
    }
    full_cycle(Kind::Fs("xfs"), 300 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_cycle_block() {
    require_root!();
    full_cycle(Kind::Block, 16 * MIB).await;
}
