//! Bad input everywhere leaves nothing behind, and repeated calls with incompatible
//! arguments are ALREADY_EXISTS.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_everywhere_leaves_nothing_behind() {
    require_root!();
    let mut d = Driver::start().await;
    let state = d.backend_state();
    let cap = mount_cap("ext4");
    let long = "z".repeat(10 * 1024);
    let bad_ids = ["", "../../etc", "a/b", "..", long.as_str()];
    for id in bad_ids {
        let r = d
            .controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("DeleteVolume id {} bytes", id.len()),
        );
        let r = d
            .controller
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: id.to_owned(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: GIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("ControllerExpandVolume id {} bytes", id.len()),
        );
        let staging = d.staging("bad");
        let target = d.target("bad");
        let r = d
            .node
            .node_stage_volume(stage_request(id, &staging, &cap))
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("NodeStageVolume id {} bytes", id.len()),
        );
        let r = d
            .node
            .node_publish_volume(publish_request(id, &staging, &target, &cap, false))
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("NodePublishVolume id {} bytes", id.len()),
        );
        let r = d
            .node
            .node_unstage_volume(unstage_request(id, &staging))
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("NodeUnstageVolume id {} bytes", id.len()),
        );
        let r = d
            .node
            .node_unpublish_volume(unpublish_request(id, &target))
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("NodeUnpublishVolume id {} bytes", id.len()),
        );
    }
    for name in ["", long.as_str()] {
        let r = d
            .controller
            .create_volume(create_request(name, vec![cap.clone()], GIB, 0))
            .await;
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("CreateVolume name of {} bytes", name.len()),
        );
    }
    let r = d
        .controller
        .create_volume(create_request("ok-name", vec![cap.clone()], i64::MAX, 0))
        .await;
    match r {
        Ok(v) => panic!(
            "CreateVolume of i64::MAX bytes succeeded: {:?}",
            v.get_ref()
        ),
        Err(s) => assert!(
            matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
            "CreateVolume of i64::MAX bytes: expected OUT_OF_RANGE or RESOURCE_EXHAUSTED, got {:?}: {}",
            s.code(),
            s.message()
        ),
    }
    assert_nothing_created(&d, &state, "after bad input").await;
    assert!(entries_under(&d.root().join("staging")).is_empty());
    assert!(entries_under(&d.root().join("mount")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_calls_with_incompatible_arguments_are_already_exists() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let a = create(&mut d, "a", &cap, 32 * MIB).await;
    let b = create(&mut d, "b", &cap, 32 * MIB).await;
    let (sa, sb) = (d.make_staging("a"), d.make_staging("b"));
    let target = d.target("a");
    stage(&mut d, &a.volume_id, &sa, &cap).await;
    stage(&mut d, &b.volume_id, &sb, &cap).await;
    publish(&mut d, &a.volume_id, &sa, &target, &cap, false).await;

    // The spec: staged (or published) at that path with another capability or another
    // volume is ALREADY_EXISTS. Every case is tried, then all mismatches are reported.
    let mut wrong = Vec::new();
    let cases = [
        (
            "a again as xfs",
            stage_request(&a.volume_id, &sa, &mount_cap("xfs")),
        ),
        (
            "a again as block",
            stage_request(&a.volume_id, &sa, &block_cap()),
        ),
        (
            "a again read-only",
            stage_request(
                &a.volume_id,
                &sa,
                &with_mode(cap.clone(), Mode::SingleNodeReaderOnly),
            ),
        ),
        (
            "b at a's staging path",
            stage_request(&b.volume_id, &sa, &cap),
        ),
    ];
    for (what, req) in cases {
        let r = d.node.node_stage_volume(req).await;
        if let Some(m) = mismatch(r, Code::AlreadyExists, &format!("NodeStageVolume {what}")) {
            wrong.push(m);
        }
    }
    let r = d
        .node
        .node_publish_volume(publish_request(&b.volume_id, &sb, &target, &cap, false))
        .await;
    if let Some(m) = mismatch(
        r,
        Code::AlreadyExists,
        "NodePublishVolume of b at a's target",
    ) {
        wrong.push(m);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(mount_count(&sa), 1);
    assert_eq!(mount_count(&target), 1);

    unpublish(&mut d, &a.volume_id, &target).await;
    unstage(&mut d, &a.volume_id, &sa).await;
    unstage(&mut d, &b.volume_id, &sb).await;
    delete(&mut d, &a.volume_id).await;
    delete(&mut d, &b.volume_id).await;
    d.assert_no_leaks("after incompatible repeats").await;
}
