//! Volume expansion: ControllerExpandVolume + NodeExpandVolume online on ext4, xfs and raw
//! block, and ControllerExpandVolume's errors.

use super::*;

fn statvfs_total(path: &str) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() * st.fragment_size()
}

async fn controller_expand(
    d: &mut Driver,
    id: &str,
    required: i64,
    cap: Option<csi::VolumeCapability>,
) -> csi::ControllerExpandVolumeResponse {
    let r = d
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.to_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: required,
                limit_bytes: 0,
            }),
            volume_capability: cap,
            ..Default::default()
        })
        .await;
    ok(r, &format!("ControllerExpandVolume {id} to {required}"))
}

async fn expand_filesystem(fs: &'static str, size: i64) {
    let mut d = Driver::start().await;
    let cap = mount_cap(fs);
    let v = create(&mut d, "grow", &cap, size).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("grow");
    let target = d.target("grow");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let data = pattern(3, DATA_LEN);
    let file = Path::new(&target).join("keep.bin");
    write_synced(&file, &data).expect("write before expansion");
    let before = statvfs_total(&target);

    // As csi-sanity does it: no capability in the request.
    let r = controller_expand(&mut d, &id, 2 * size, None).await;
    assert_eq!(
        r.capacity_bytes,
        2 * size,
        "ControllerExpandVolume capacity"
    );
    assert!(
        r.node_expansion_required,
        "a filesystem volume needs node expansion"
    );
    // Idempotent.
    let r = controller_expand(&mut d, &id, 2 * size, None).await;
    assert_eq!(
        r.capacity_bytes,
        2 * size,
        "repeated ControllerExpandVolume capacity"
    );

    // The kernel refuses online ext4 resize without CAP_SYS_RESOURCE, whoever asks.
    let can_grow = fs != "ext4" || has_capability(CAP_SYS_RESOURCE);
    let after = if can_grow {
        let r = d
            .node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: target.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 2 * size,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await;
        let n = ok(r, "NodeExpandVolume");
        assert!(
            n.capacity_bytes == 0 || n.capacity_bytes == 2 * size,
            "NodeExpandVolume capacity {}",
            n.capacity_bytes
        );
        let after = statvfs_total(&target);
        let size_u = u64::try_from(size).expect("fits");
        assert!(
            after > before && after > size_u,
            "filesystem did not grow: {before} -> {after} bytes (volume {size} -> {})",
            2 * size
        );
        after
    } else {
        skip(
            "NodeExpandVolume of ext4 (online resize2fs needs CAP_SYS_RESOURCE, \
             which this process lacks)",
        );
        before
    };
    assert_eq!(
        sha256(&read_prefix(&file, DATA_LEN).expect("read")),
        sha256(&data)
    );

    // A smaller request never shrinks.
    let r = controller_expand(&mut d, &id, size, None).await;
    assert_eq!(
        r.capacity_bytes,
        2 * size,
        "ControllerExpandVolume to a smaller size shrank"
    );
    let listed = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    assert_eq!(
        listed.entries[0].volume.as_ref().map(|v| v.capacity_bytes),
        Some(2 * size)
    );
    assert_eq!(
        statvfs_total(&target),
        after,
        "the filesystem changed size on a shrink request"
    );

    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after expansion").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expand_ext4_online() {
    require_root!();
    expand_filesystem("ext4", 64 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expand_xfs_online() {
    require_root!();
    if !have_xfs() {
        return;
    }
    expand_filesystem("xfs", 300 * MIB).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expand_block_online() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = block_cap();
    let v = create(&mut d, "grow-block", &cap, 16 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("grow-block");
    let target = d.target("grow-block");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let r = controller_expand(&mut d, &id, 32 * MIB, Some(cap.clone())).await;
    assert_eq!(r.capacity_bytes, 32 * MIB);
    if r.node_expansion_required {
        let r = d
            .node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: target.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 32 * MIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await;
        ok(r, "NodeExpandVolume of a block volume");
    }
    assert_eq!(
        block_device_size(Path::new(&target)),
        32 << 20,
        "block device size after expansion"
    );
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after block expansion").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_expand_errors() {
    require_root!();
    let mut d = Driver::start().await;
    let range = |required: i64, limit: i64| {
        Some(csi::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        })
    };
    let req = |id: &str, capacity_range| csi::ControllerExpandVolumeRequest {
        volume_id: id.to_owned(),
        capacity_range,
        ..Default::default()
    };
    let r = d
        .controller
        .controller_expand_volume(req("", range(GIB, 0)))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ControllerExpandVolume without volume_id",
    );
    let r = d.controller.controller_expand_volume(req("", None)).await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ControllerExpandVolume without anything",
    );
    let r = d
        .controller
        .controller_expand_volume(req(UNKNOWN_ID, range(GIB, 0)))
        .await;
    expect_code(
        r,
        Code::NotFound,
        "ControllerExpandVolume of an unknown volume",
    );

    let v = create(&mut d, "grow-errors", &block_cap(), 16 * MIB).await;
    let r = d
        .controller
        .controller_expand_volume(req(&v.volume_id, None))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ControllerExpandVolume without capacity_range",
    );
    let r = d
        .controller
        .controller_expand_volume(req(&v.volume_id, range(0, 8 * MIB)))
        .await;
    expect_code(
        r,
        Code::OutOfRange,
        "ControllerExpandVolume with limit below the size",
    );
    let r = d
        .controller
        .controller_expand_volume(req(&v.volume_id, range(32 * MIB, 24 * MIB)))
        .await;
    expect_code(
        r,
        Code::OutOfRange,
        "ControllerExpandVolume with required above limit",
    );
    let listed = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    assert_eq!(
        listed.entries[0].volume.as_ref().map(|v| v.capacity_bytes),
        Some(16 * MIB),
        "a refused expansion changed the size"
    );
    delete(&mut d, &v.volume_id).await;
}
