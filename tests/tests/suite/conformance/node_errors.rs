//! Node-side errors: bad arguments to NodeStage/NodePublish, calls on unknown volumes and
//! paths, publish before stage, and delete or unstage of a volume still in use.

use super::*;

/// A 5 KiB absolute path below `base`, made of short components.
fn long_path(base: &str) -> String {
    let mut p = base.to_owned();
    while p.len() < 5 * 1024 {
        p.push_str("/abcdefghijklmnopqrstuvwxyz0123456789");
    }
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn node_stage_and_publish_reject_bad_arguments() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let v = create(&mut d, "real", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let state = d.backend_state();
    let staging_root = d.root().join("staging");
    let mount_root = d.root().join("mount");
    let good_staging = d.staging("s");
    let escape = format!("{}/../escape", staging_root.display());
    let long = long_path(&good_staging);
    let mock = HashMap::from([("device".to_owned(), "/dev/mock".to_owned())]);

    let stage_cases: Vec<(&str, csi::NodeStageVolumeRequest, Code)> = vec![
        (
            "no volume_id",
            stage_request("", &good_staging, &cap),
            Code::InvalidArgument,
        ),
        (
            "no staging path",
            stage_request(&id, "", &cap),
            Code::InvalidArgument,
        ),
        (
            "no capability",
            csi::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: good_staging.clone(),
                publish_context: mock.clone(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "traversing volume_id",
            stage_request("../../etc", &good_staging, &cap),
            Code::InvalidArgument,
        ),
        (
            "staging path with ..",
            stage_request(&id, &escape, &cap),
            Code::InvalidArgument,
        ),
        (
            "relative staging path",
            stage_request(&id, "staging/rel", &cap),
            Code::InvalidArgument,
        ),
        (
            "5 KiB staging path",
            stage_request(&id, &long, &cap),
            Code::InvalidArgument,
        ),
        (
            "unknown fs_type",
            stage_request(&id, &good_staging, &mount_cap("ntfs")),
            Code::InvalidArgument,
        ),
        (
            "MULTI_NODE_MULTI_WRITER",
            stage_request(
                &id,
                &good_staging,
                &with_mode(cap.clone(), Mode::MultiNodeMultiWriter),
            ),
            Code::InvalidArgument,
        ),
        (
            "unknown volume",
            stage_request(UNKNOWN_ID, &good_staging, &cap),
            Code::NotFound,
        ),
    ];
    for (what, mut req, code) in stage_cases {
        req.publish_context = mock.clone();
        let r = d.node.node_stage_volume(req).await;
        expect_code(r, code, &format!("NodeStageVolume with {what}"));
        assert!(
            entries_under(&staging_root).is_empty(),
            "NodeStageVolume with {what} created {:?}",
            entries_under(&staging_root)
        );
    }

    let target = d.target("t");
    let escape_t = format!("{}/../escape", mount_root.display());
    let long_t = long_path(&target);
    let publish_cases: Vec<(&str, csi::NodePublishVolumeRequest, Code)> = vec![
        (
            "no volume_id",
            publish_request("", &good_staging, &target, &cap, false),
            Code::InvalidArgument,
        ),
        (
            "no target path",
            publish_request(UNKNOWN_ID, &good_staging, "", &cap, false),
            Code::InvalidArgument,
        ),
        (
            "no capability",
            csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.clone(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "no staging path",
            publish_request(&id, "", &target, &cap, false),
            Code::InvalidArgument,
        ),
        (
            "traversing volume_id",
            publish_request("a/b", &good_staging, &target, &cap, false),
            Code::InvalidArgument,
        ),
        (
            "target with ..",
            publish_request(&id, &good_staging, &escape_t, &cap, false),
            Code::InvalidArgument,
        ),
        (
            "relative target",
            publish_request(&id, &good_staging, "mount/rel", &cap, false),
            Code::InvalidArgument,
        ),
        (
            "5 KiB target",
            publish_request(&id, &good_staging, &long_t, &cap, false),
            Code::InvalidArgument,
        ),
        (
            "staging path with ..",
            publish_request(&id, &escape, &target, &cap, false),
            Code::InvalidArgument,
        ),
        (
            "unknown volume",
            publish_request(UNKNOWN_ID, &good_staging, &target, &cap, false),
            Code::NotFound,
        ),
    ];
    for (what, req, code) in publish_cases {
        let r = d.node.node_publish_volume(req).await;
        expect_code(r, code, &format!("NodePublishVolume with {what}"));
        assert!(
            entries_under(&mount_root).is_empty(),
            "NodePublishVolume with {what} created {:?}",
            entries_under(&mount_root)
        );
    }

    let r = d
        .node
        .node_unstage_volume(unstage_request("", &good_staging))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeUnstageVolume without volume_id",
    );
    let r = d.node.node_unstage_volume(unstage_request(&id, "")).await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeUnstageVolume without staging path",
    );
    let r = d
        .node
        .node_unpublish_volume(unpublish_request("", &target))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeUnpublishVolume without volume_id",
    );
    let r = d
        .node
        .node_unpublish_volume(unpublish_request(&id, ""))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeUnpublishVolume without target path",
    );
    let r = d
        .node
        .node_unpublish_volume(unpublish_request(&id, &escape_t))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeUnpublishVolume with .. in the target path",
    );
    let stats = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.to_owned(),
        volume_path: path.to_owned(),
        staging_target_path: String::new(),
    };
    let r = d.node.node_get_volume_stats(stats("", "some/path")).await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeGetVolumeStats without volume_id",
    );
    let r = d.node.node_get_volume_stats(stats(UNKNOWN_ID, "")).await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeGetVolumeStats without volume_path",
    );
    let r = d
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_path: mount_root.display().to_string(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeExpandVolume without volume_id",
    );
    let r = d
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "NodeExpandVolume without volume_path",
    );
    // A '..' or '.' path is malformed even for a volume that does not exist (the gRPC
    // fuzz campaign found both calls answering NOT_FOUND for the volume).
    let r = d
        .node
        .node_get_volume_stats(stats(
            UNKNOWN_ID,
            &format!("{}/./dot", mount_root.display()),
        ))
        .await;
    let s = expect_code(
        r,
        Code::InvalidArgument,
        "NodeGetVolumeStats of an unknown volume at a '.' path",
    );
    assert!(s.message().contains("volume_path"), "{}", s.message());
    let r = d
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: UNKNOWN_ID.to_owned(),
            volume_path: format!("{}/../escape", mount_root.display()),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await;
    let s = expect_code(
        r,
        Code::InvalidArgument,
        "NodeExpandVolume of an unknown volume at a '..' path",
    );
    assert!(s.message().contains("volume_path"), "{}", s.message());

    assert!(!d.root().join("escape").exists(), "a '..' path escaped");
    assert!(
        entries_under(&staging_root).is_empty(),
        "entries under staging: {:?}",
        entries_under(&staging_root)
    );
    assert!(
        entries_under(&mount_root).is_empty(),
        "entries under mount: {:?}",
        entries_under(&mount_root)
    );
    assert_nothing_created(&d, &state, "after invalid node calls").await;
    delete(&mut d, &id).await;
    assert!(d.backend_state().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn node_calls_on_unknown_volumes_and_paths() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let v = create(&mut d, "known", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("known");
    let target = d.target("known");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;

    let stats = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.to_owned(),
        volume_path: path.to_owned(),
        staging_target_path: String::new(),
    };
    let elsewhere = d.target("not-published-here");
    std::fs::create_dir(&elsewhere).expect("create an unrelated directory");
    for (what, req) in [
        ("unknown volume, some/path", stats(UNKNOWN_ID, "some/path")),
        (
            "unknown volume, its real target",
            stats(UNKNOWN_ID, &target),
        ),
        ("known volume, some/path", stats(&id, "some/path")),
        (
            "known volume, missing absolute path",
            stats(&id, &d.target("missing")),
        ),
        (
            "known volume, a directory it is not published at",
            stats(&id, &elsewhere),
        ),
    ] {
        let r = d.node.node_get_volume_stats(req).await;
        expect_code(r, Code::NotFound, &format!("NodeGetVolumeStats {what}"));
    }
    std::fs::remove_dir(&elsewhere).expect("remove the unrelated directory");

    // csi-sanity sends neither capability nor capacity range here.
    let r = d
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: UNKNOWN_ID.to_owned(),
            volume_path: "some/path".to_owned(),
            ..Default::default()
        })
        .await;
    expect_code(r, Code::NotFound, "NodeExpandVolume of an unknown volume");

    let never = d.target("never");
    unpublish(&mut d, &id, &never).await;
    unpublish(&mut d, UNKNOWN_ID, &never).await;
    assert!(!Path::new(&never).exists());

    let other = create(&mut d, "never-staged", &cap, 64 * MIB).await;
    let other_staging = d.make_staging("never-staged");
    unstage(&mut d, &other.volume_id, &other_staging).await;
    unstage(&mut d, UNKNOWN_ID, &other_staging).await;
    let missing = d.staging("does-not-exist");
    unstage(&mut d, UNKNOWN_ID, &missing).await;

    // The published volume is untouched by all of the above.
    assert!(
        mount_at(&target).is_some(),
        "the published volume lost its target mount"
    );
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    delete(&mut d, &other.volume_id).await;
    assert!(d.backend_state().is_empty());
    d.assert_no_leaks("after calls on unknown volumes").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_before_stage_is_failed_precondition() {
    require_root!();
    let mut d = Driver::start().await;
    for (name, cap) in [("fs", mount_cap("ext4")), ("blk", block_cap())] {
        let v = create(&mut d, name, &cap, 32 * MIB).await;
        let staging = d.make_staging(name);
        let target = d.target(name);
        let r = d
            .node
            .node_publish_volume(publish_request(
                &v.volume_id,
                &staging,
                &target,
                &cap,
                false,
            ))
            .await;
        expect_code(
            r,
            Code::FailedPrecondition,
            &format!("NodePublishVolume of an unstaged {name} volume"),
        );
        assert!(
            std::fs::symlink_metadata(&target).is_err(),
            "the refused NodePublishVolume created {target}"
        );
        delete(&mut d, &v.volume_id).await;
    }
    d.assert_no_leaks("after publish before stage").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_or_unstage_of_a_volume_in_use_is_failed_precondition() {
    require_root!();
    let mut d = Driver::start().await;
    for (name, kind) in [("fs", Kind::Fs("ext4")), ("blk", Kind::Block)] {
        let cap = kind.cap();
        let v = create(&mut d, name, &cap, 32 * MIB).await;
        let id = v.volume_id.clone();
        let staging = d.make_staging(name);
        let target = d.target(name);
        stage(&mut d, &id, &staging, &cap).await;
        let del = csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        };
        let r = d.controller.delete_volume(del.clone()).await;
        expect_code(
            r,
            Code::FailedPrecondition,
            &format!("DeleteVolume of a staged {name} volume"),
        );

        // Still usable.
        publish(&mut d, &id, &staging, &target, &cap, false).await;
        let r = d.controller.delete_volume(del.clone()).await;
        expect_code(
            r,
            Code::FailedPrecondition,
            &format!("DeleteVolume of a published {name} volume"),
        );
        let r = d
            .node
            .node_unstage_volume(unstage_request(&id, &staging))
            .await;
        expect_code(
            r,
            Code::FailedPrecondition,
            &format!("NodeUnstageVolume of a published {name} volume"),
        );
        let data = pattern(99, 1 << 20);
        let path = kind.data_path(&target);
        write_synced(&path, &data).expect("write to the volume DeleteVolume refused");
        assert_eq!(read_prefix(&path, data.len()).expect("read back"), data);

        unpublish(&mut d, &id, &target).await;
        unstage(&mut d, &id, &staging).await;
        delete(&mut d, &id).await;
    }
    assert!(d.backend_state().is_empty());
    d.assert_no_leaks("after refused deletes").await;
}
