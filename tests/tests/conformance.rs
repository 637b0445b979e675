//! CSI conformance of the real `iolane` binary: each RPC the driver serves, checked
//! against what the CSI spec (and csi-sanity v5.5) demands, on real loop devices, mkfs
//! and mounts. Every test starts its own driver in its own tempdir, so the tests run in
//! parallel; loop devices and mounts are only inspected below a test's own tempdir.
//!
//! The same tests run on the lvm backend in a VM (`IOLANE_TEST_BACKEND=lvm`, one at a time:
//! see `tests/vm/lvm-suite.sh`). Backend state is only read through the harness's
//! backend-neutral views (`backend_volumes`, `backend_state`, `attached_devices`,
//! `devices_left_after_unstage`), and sizes that LVM rounds to whole extents use
//! `size_unit()`.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use iolane_tests::csi;
use iolane_tests::{
    CAP_SYS_RESOURCE, Driver, GIB, MIB, NODE_ID, Options, TOPOLOGY_KEY, block_cap,
    block_device_size, capability, create_request, entries_under, expect_code, files_under,
    has_capability, have_program, mount_at, mount_cap, mounts, node_topology, note, ok, pattern,
    poll, publish_request, read_prefix, repeats, require_root, round_up, sha256, size_unit,
    stage_request, unpublish_request, unstage_request, with_mode, write_synced,
};

use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessType, MountVolume};
use tonic::Code;

/// A well-formed ID of a volume that does not exist (csi-sanity's shape).
const UNKNOWN_ID: &str = "fake-vol-id-1b4e28ba-2";
/// Bytes written through a published volume and read back.
const DATA_LEN: usize = 4 << 20;

/// The volumes the backend holds (image files or `iol-*` LVs).
fn images(d: &Driver) -> Vec<String> {
    d.backend_volumes()
}

fn topology_is_this_node(v: &csi::Volume) -> bool {
    v.accessible_topology.len() == 1 && v.accessible_topology[0].segments == node_topology()
}

/// How many mounts sit exactly at `path` (stacked mounts count separately).
fn mount_count(path: &str) -> usize {
    mounts()
        .iter()
        .filter(|m| m.mount_point == Path::new(path))
        .count()
}

/// `None` if `res` failed with `code`, otherwise what happened instead.
fn mismatch<T: std::fmt::Debug>(
    res: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    what: &str,
) -> Option<String> {
    match res {
        Err(s) if s.code() == code => None,
        Err(s) => Some(format!(
            "{what}: expected {code:?}, got {:?}: {}",
            s.code(),
            s.message()
        )),
        Ok(r) => Some(format!(
            "{what}: expected {code:?}, got OK: {:?}",
            r.get_ref()
        )),
    }
}

fn have_xfs() -> bool {
    if have_program("mkfs.xfs") {
        true
    } else {
        note("skipped: mkfs.xfs is not installed (install xfsprogs to run the xfs cases)");
        false
    }
}

async fn create(d: &mut Driver, name: &str, cap: &csi::VolumeCapability, size: i64) -> csi::Volume {
    let r = d
        .controller
        .create_volume(create_request(name, vec![cap.clone()], size, size))
        .await;
    ok(r, &format!("CreateVolume {name:?}"))
        .volume
        .expect("CreateVolume returned no volume")
}

async fn stage(d: &mut Driver, id: &str, staging: &str, cap: &csi::VolumeCapability) {
    let r = d
        .node
        .node_stage_volume(stage_request(id, staging, cap))
        .await;
    ok(r, &format!("NodeStageVolume {id} at {staging}"));
}

async fn publish(
    d: &mut Driver,
    id: &str,
    staging: &str,
    target: &str,
    cap: &csi::VolumeCapability,
    ro: bool,
) {
    let r = d
        .node
        .node_publish_volume(publish_request(id, staging, target, cap, ro))
        .await;
    ok(
        r,
        &format!("NodePublishVolume {id} at {target} (readonly={ro})"),
    );
}

async fn unpublish(d: &mut Driver, id: &str, target: &str) {
    let r = d
        .node
        .node_unpublish_volume(unpublish_request(id, target))
        .await;
    ok(r, &format!("NodeUnpublishVolume {id} at {target}"));
}

async fn unstage(d: &mut Driver, id: &str, staging: &str) {
    let r = d
        .node
        .node_unstage_volume(unstage_request(id, staging))
        .await;
    ok(r, &format!("NodeUnstageVolume {id} at {staging}"));
}

async fn delete(d: &mut Driver, id: &str) {
    let r = d
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.to_owned(),
            ..Default::default()
        })
        .await;
    ok(r, &format!("DeleteVolume {id}"));
}

async fn list_ids(d: &mut Driver) -> Vec<String> {
    let r = d
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await;
    let mut ids: Vec<String> = ok(r, "ListVolumes")
        .entries
        .into_iter()
        .map(|e| {
            e.volume
                .expect("ListVolumes entry without volume")
                .volume_id
        })
        .collect();
    ids.sort();
    ids
}

async fn capacity(d: &mut Driver, req: csi::GetCapacityRequest) -> i64 {
    ok(d.controller.get_capacity(req).await, "GetCapacity").available_capacity
}

/// Asserts that the driver created nothing: the backend holds exactly `state` (from
/// `backend_state()`), and no mount or loop device of this driver exists.
async fn assert_nothing_created(d: &Driver, state: &[String], context: &str) {
    assert_eq!(
        d.backend_state(),
        state,
        "{context}: the backend state changed"
    );
    d.assert_no_leaks(context).await;
}

// ---- identity ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn identity_reports_name_version_capabilities_and_ready() {
    require_root!();
    let mut d = Driver::start().await;
    let info = ok(
        d.identity
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await,
        "GetPluginInfo",
    );
    assert_eq!(info.name, iolane_tests::DRIVER_NAME);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));

    let caps = ok(
        d.identity
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await,
        "GetPluginCapabilities",
    );
    use csi::plugin_capability::Type as T;
    use csi::plugin_capability::service::Type as S;
    let services: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(T::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert!(
        services.contains(&(S::ControllerService as i32)),
        "CONTROLLER_SERVICE missing: {caps:?}"
    );
    assert!(
        services.contains(&(S::VolumeAccessibilityConstraints as i32)),
        "VOLUME_ACCESSIBILITY_CONSTRAINTS missing: {caps:?}"
    );

    let probe = ok(d.identity.probe(csi::ProbeRequest {}).await, "Probe");
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_and_node_capabilities_and_node_info() {
    require_root!();
    let mut d = Driver::start().await;

    use csi::controller_service_capability::rpc::Type as C;
    let caps = ok(
        d.controller
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await,
        "ControllerGetCapabilities",
    );
    let got: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(csi::controller_service_capability::Type::Rpc(r)) => r.r#type,
            None => panic!("controller capability without type: {caps:?}"),
        })
        .collect();
    let want: BTreeSet<i32> = [
        C::CreateDeleteVolume,
        C::ListVolumes,
        C::GetCapacity,
        C::ExpandVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got, want, "controller capabilities");

    // What is not advertised must not be half-served.
    let unimpl = Code::Unimplemented;
    let r = d
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerPublishVolume");
    let r = d
        .controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerUnpublishVolume");
    let r = d
        .controller
        .create_snapshot(csi::CreateSnapshotRequest::default())
        .await;
    expect_code(r, unimpl, "CreateSnapshot");
    let r = d
        .controller
        .delete_snapshot(csi::DeleteSnapshotRequest::default())
        .await;
    expect_code(r, unimpl, "DeleteSnapshot");
    let r = d
        .controller
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await;
    expect_code(r, unimpl, "ListSnapshots");
    let r = d
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerGetVolume");
    let r = d
        .controller
        .controller_modify_volume(csi::ControllerModifyVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerModifyVolume");

    use csi::node_service_capability::rpc::Type as N;
    let caps = ok(
        d.node
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await,
        "NodeGetCapabilities",
    );
    let got: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(csi::node_service_capability::Type::Rpc(r)) => r.r#type,
            None => panic!("node capability without type: {caps:?}"),
        })
        .collect();
    let want: BTreeSet<i32> = [
        N::StageUnstageVolume,
        N::GetVolumeStats,
        N::VolumeCondition,
        N::ExpandVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got, want, "node capabilities");

    let info = ok(
        d.node.node_get_info(csi::NodeGetInfoRequest {}).await,
        "NodeGetInfo",
    );
    assert_eq!(info.node_id, NODE_ID);
    assert!(info.max_volumes_per_node >= 0);
    let topo = info
        .accessible_topology
        .expect("NodeGetInfo without accessible_topology");
    assert_eq!(
        topo.segments,
        HashMap::from([(TOPOLOGY_KEY.to_owned(), NODE_ID.to_owned())])
    );
}

// ---- CreateVolume -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_sizes_and_topology() {
    require_root!();
    let mut d = Driver::start().await;
    // Block sizes round up to whole MiB (loop) or whole 4 MiB extents (lvm).
    let unit = size_unit();
    // (name, capability, required, limit, expected size)
    let cases: [(&str, csi::VolumeCapability, i64, i64, i64); 7] = [
        // A filesystem volume is at least the ext4 minimum (16 MiB).
        ("tiny-mount", mount_cap(""), 1, 0, 16 * MIB),
        ("tiny-ext4", mount_cap("ext4"), 1, 0, 16 * MIB),
        // xfsprogs refuses data sections under 300 MiB.
        ("tiny-xfs", mount_cap("xfs"), 1, 0, 300 * MIB),
        // A block volume only rounds up to whole MiB.
        ("tiny-block", block_cap(), 1, 0, unit),
        (
            "odd-block",
            block_cap(),
            3 * MIB / 2,
            0,
            round_up(2 * MIB, unit),
        ),
        ("exact", mount_cap("ext4"), GIB, GIB, GIB),
        // No capacity range: the driver's default, 1 GiB.
        ("default", mount_cap(""), 0, 0, GIB),
    ];
    for (name, cap, required, limit, want) in cases {
        let r = d
            .controller
            .create_volume(create_request(name, vec![cap], required, limit))
            .await;
        let v = ok(
            r,
            &format!("CreateVolume {name} required={required} limit={limit}"),
        )
        .volume
        .expect("no volume");
        assert_eq!(
            v.capacity_bytes, want,
            "CreateVolume {name} required={required} limit={limit}: capacity"
        );
        assert!(
            topology_is_this_node(&v),
            "{name}: accessible_topology {:?}",
            v.accessible_topology
        );
    }

    let before = d.backend_state();
    // (name, capability, required, limit): no size the driver may pick fits.
    let impossible: [(&str, csi::VolumeCapability, i64, i64); 3] = [
        // No whole MiB lies in 1.5 MiB ..= 1.9 MiB.
        ("no-fit", block_cap(), 3 * MIB / 2, 19 * MIB / 10),
        // ext4 needs 16 MiB.
        ("below-ext4-min", mount_cap("ext4"), 1, 8 * MIB),
        ("inverted", block_cap(), 2 * MIB, MIB),
    ];
    for (name, cap, required, limit) in impossible {
        let r = d
            .controller
            .create_volume(create_request(name, vec![cap], required, limit))
            .await;
        expect_code(
            r,
            Code::OutOfRange,
            &format!("CreateVolume {name} required={required} limit={limit}"),
        );
    }
    assert_nothing_created(&d, &before, "after OUT_OF_RANGE creates").await;
    assert_eq!(images(&d).len(), 7, "one image per created volume");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_is_idempotent_by_name() {
    require_root!();
    let mut d = Driver::start().await;
    let req = create_request("twice", vec![mount_cap("ext4")], 64 * MIB, 64 * MIB);
    let first = ok(
        d.controller.create_volume(req.clone()).await,
        "CreateVolume #0",
    )
    .volume
    .expect("no volume");
    let state = d.backend_state();
    for i in 1..repeats() {
        let v = ok(
            d.controller.create_volume(req.clone()).await,
            &format!("CreateVolume #{i}"),
        )
        .volume
        .expect("no volume");
        assert_eq!(
            v.volume_id, first.volume_id,
            "CreateVolume #{i}: another id"
        );
        assert_eq!(
            v.capacity_bytes, first.capacity_bytes,
            "CreateVolume #{i}: capacity"
        );
    }
    assert_eq!(
        d.backend_state(),
        state,
        "repeated creates changed the state dir"
    );
    assert_eq!(images(&d).len(), 1, "exactly one image on disk");
    assert_eq!(list_ids(&mut d).await, vec![first.volume_id.clone()]);

    // Same name, range that still admits the existing size: the same volume.
    let r = d
        .controller
        .create_volume(create_request("twice", vec![mount_cap("ext4")], MIB, 0))
        .await;
    let v = ok(r, "CreateVolume with a smaller required_bytes")
        .volume
        .expect("no volume");
    assert_eq!(v.volume_id, first.volume_id);
    delete(&mut d, &first.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_same_name_other_size_is_already_exists() {
    require_root!();
    let mut d = Driver::start().await;
    let v = create(&mut d, "sized", &mount_cap(""), GIB).await;
    let state = d.backend_state();
    let r = d
        .controller
        .create_volume(create_request(
            "sized",
            vec![mount_cap("")],
            2 * GIB,
            2 * GIB,
        ))
        .await;
    expect_code(
        r,
        Code::AlreadyExists,
        "CreateVolume same name, 2 GiB instead of 1 GiB",
    );
    let r = d
        .controller
        .create_volume(create_request(
            "sized",
            vec![mount_cap("")],
            16 * MIB,
            512 * MIB,
        ))
        .await;
    expect_code(
        r,
        Code::AlreadyExists,
        "CreateVolume same name, limit below the existing size",
    );
    assert_eq!(
        d.backend_state(),
        state,
        "the refused creates changed the state dir"
    );
    assert_eq!(list_ids(&mut d).await, vec![v.volume_id.clone()]);
    let listed = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    assert_eq!(
        listed.entries[0].volume.as_ref().map(|v| v.capacity_bytes),
        Some(GIB),
        "the existing volume must keep its size"
    );
    delete(&mut d, &v.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_rejects_bad_arguments_and_creates_nothing() {
    require_root!();
    let mut d = Driver::start().await;
    let state = d.backend_state();
    let good = || create_request("bad-args", vec![mount_cap("ext4")], 64 * MIB, 0);
    let mut cases: Vec<(&str, csi::CreateVolumeRequest, &str)> = Vec::new();

    let mut r = good();
    r.name = String::new();
    cases.push(("missing name", r, "name"));

    let mut r = good();
    r.volume_capabilities.clear();
    cases.push(("no capabilities", r, "volume_capabilities"));

    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
    ] {
        let mut r = good();
        r.volume_capabilities = vec![with_mode(mount_cap("ext4"), mode)];
        cases.push((mode.as_str_name(), r, "access_mode"));
    }

    let mut r = good();
    r.volume_capabilities = vec![with_mode(mount_cap("ext4"), Mode::Unknown)];
    cases.push(("access mode UNKNOWN", r, "access_mode"));

    let mut r = good();
    r.volume_capabilities[0].access_mode = None;
    cases.push(("no access mode", r, "access_mode"));

    let mut r = good();
    r.volume_capabilities[0].access_type = None;
    cases.push(("no access type", r, "access_type"));

    let mut r = good();
    r.volume_capabilities = vec![mount_cap("ntfs")];
    cases.push(("unknown fs_type", r, "fs_type"));

    let mut r = good();
    r.volume_capabilities = vec![mount_cap("ext4"), mount_cap("xfs")];
    cases.push(("two filesystems", r, "volume_capabilities"));

    let mut r = good();
    r.volume_capabilities = vec![capability(
        AccessType::Mount(MountVolume {
            fs_type: "ext4".to_owned(),
            mount_flags: vec!["rw,exec".to_owned()],
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    )];
    cases.push(("two options smuggled in one mount flag", r, "mount_flags"));

    let mut r = good();
    r.parameters = HashMap::from([("fsTypo".to_owned(), "ext4".to_owned())]);
    cases.push(("unknown parameter key", r, "fsTypo"));

    let mut r = good();
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    cases.push(("negative required_bytes", r, "required_bytes"));

    let mut r = good();
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 0,
        limit_bytes: -5,
    });
    cases.push(("negative limit_bytes", r, "limit_bytes"));

    let mut r = good();
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "snap-1".to_owned(),
            },
        )),
    });
    cases.push((
        "content source (clones are not supported)",
        r,
        "volume_content_source",
    ));

    for (what, req, field) in cases {
        let s = expect_code(
            d.controller.create_volume(req).await,
            Code::InvalidArgument,
            &format!("CreateVolume with {what}"),
        );
        assert!(
            s.message().contains(field),
            "CreateVolume with {what}: message {:?} does not name {field:?}",
            s.message()
        );
    }
    assert_nothing_created(&d, &state, "after invalid CreateVolume calls").await;
    assert!(list_ids(&mut d).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_name_length_and_characters() {
    require_root!();
    let mut d = Driver::start().await;
    let name128: String = "n-"
        .chars()
        .chain((0..126).map(|i| char::from(b'a' + (i % 26) as u8)))
        .collect();
    assert_eq!(name128.len(), 128);
    let v = create(&mut d, &name128, &mount_cap(""), 16 * MIB).await;
    let state = d.backend_state();

    let name129 = format!("{name128}x");
    let s = expect_code(
        d.controller
            .create_volume(create_request(&name129, vec![mount_cap("")], 16 * MIB, 0))
            .await,
        Code::InvalidArgument,
        "CreateVolume with a 129-character name",
    );
    assert!(
        s.message().contains("name"),
        "message {:?} does not name the field",
        s.message()
    );
    let huge = "x".repeat(10 * 1024);
    let s = expect_code(
        d.controller
            .create_volume(create_request(&huge, vec![mount_cap("")], 16 * MIB, 0))
            .await,
        Code::InvalidArgument,
        "CreateVolume with a 10 KiB name",
    );
    assert!(
        s.message().contains("name"),
        "message {:?} does not name the field",
        s.message()
    );
    assert_nothing_created(&d, &state, "after over-long names").await;

    // A name is only ever hashed: path syntax in it must not reach the filesystem.
    let odd = create(&mut d, "../../escape/x", &block_cap(), size_unit()).await;
    assert!(
        !d.root().join("escape").exists(),
        "a volume name became a path"
    );
    for f in files_under(d.root()) {
        let inside = f.starts_with(d.state_dir())
            || f.starts_with(d.root().join("sock"))
            || f.file_name()
                .is_some_and(|n| n == "driver.log" || n == "config.toml");
        assert!(inside, "unexpected file {}", f.display());
    }
    delete(&mut d, &odd.volume_id).await;
    delete(&mut d, &v.volume_id).await;
    assert!(d.backend_state().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_topology_of_another_node_is_resource_exhausted() {
    require_root!();
    let mut d = Driver::start().await;
    let state = d.backend_state();
    let topo = |k: &str, v: &str| csi::Topology {
        segments: HashMap::from([(k.to_owned(), v.to_owned())]),
    };
    for (what, requisite) in [
        ("another node", vec![topo(TOPOLOGY_KEY, "other-node")]),
        ("an unknown topology key", vec![topo("zone", "a")]),
    ] {
        let mut req = create_request("elsewhere", vec![mount_cap("")], 64 * MIB, 0);
        req.accessibility_requirements = Some(csi::TopologyRequirement {
            requisite,
            preferred: Vec::new(),
        });
        expect_code(
            d.controller.create_volume(req).await,
            Code::ResourceExhausted,
            &format!("CreateVolume with requisite topology of {what}"),
        );
    }
    assert_nothing_created(&d, &state, "after unreachable-topology creates").await;

    // This node among several requisite segments: created here.
    let mut req = create_request("here", vec![mount_cap("")], 64 * MIB, 0);
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![
            topo(TOPOLOGY_KEY, "other-node"),
            topo(TOPOLOGY_KEY, NODE_ID),
        ],
        preferred: vec![topo(TOPOLOGY_KEY, NODE_ID)],
    });
    let v = ok(
        d.controller.create_volume(req).await,
        "CreateVolume requisite incl. this node",
    )
    .volume
    .expect("no volume");
    assert!(
        topology_is_this_node(&v),
        "accessible_topology {:?}",
        v.accessible_topology
    );
    delete(&mut d, &v.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_beyond_capacity_is_resource_exhausted() {
    require_root!();
    // Ratio 1: capacity tracks the real free space, so a 1 GiB volume moves it by far
    // more than parallel tests writing a few MiB do.
    let mut d = Driver::start_with(Options {
        config: Some("[loop]\noverprovision_ratio = 1.0\n".to_owned()),
        ..Options::default()
    })
    .await;
    let state = d.backend_state();
    let before = capacity(&mut d, csi::GetCapacityRequest::default()).await;
    assert!(
        before > GIB,
        "GetCapacity {before} is too small to run this test"
    );

    let too_big = before + GIB;
    let r = d
        .controller
        .create_volume(create_request("huge", vec![block_cap()], too_big, too_big))
        .await;
    expect_code(
        r,
        Code::ResourceExhausted,
        &format!("CreateVolume of {too_big} bytes with {before} available"),
    );
    assert_nothing_created(&d, &state, "after an over-capacity create").await;

    let v = create(&mut d, "one-gib", &block_cap(), GIB).await;
    let after = capacity(&mut d, csi::GetCapacityRequest::default()).await;
    assert!(
        after < before,
        "GetCapacity did not decrease after a 1 GiB create: {before} -> {after}"
    );

    let here = capacity(
        &mut d,
        csi::GetCapacityRequest {
            accessible_topology: Some(csi::Topology {
                segments: node_topology(),
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(here > 0, "GetCapacity for this node's topology is {here}");
    let elsewhere = capacity(
        &mut d,
        csi::GetCapacityRequest {
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), "other-node".to_owned())]),
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(elsewhere, 0, "GetCapacity for another node's topology");
    delete(&mut d, &v.volume_id).await;
}

// ---- DeleteVolume -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn delete_volume_is_idempotent_and_refuses_traversal() {
    require_root!();
    let mut d = Driver::start().await;
    for id in [
        "fake-vol-id",
        UNKNOWN_ID,
        "iol-00000000000000000000000000000000",
    ] {
        delete(&mut d, id).await;
    }
    // Decoys where a traversing ID would land (`<state>/loop/../../etc.img`).
    for f in ["etc.img", "etc.json", "etc"] {
        std::fs::write(d.root().join(f), b"decoy").expect("write decoy");
    }
    let long = "a".repeat(10 * 1024);
    for id in [
        "",
        "../../etc",
        "a/b",
        "..",
        ".",
        "/etc/passwd",
        "a\u{0}b",
        long.as_str(),
    ] {
        let r = d
            .controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await;
        let shown: String = id.chars().take(40).collect();
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("DeleteVolume {shown:?} ({} bytes)", id.len()),
        );
    }
    for f in ["etc.img", "etc.json", "etc"] {
        assert!(
            d.root().join(f).exists(),
            "DeleteVolume removed {f} outside the state dir"
        );
    }

    let v = create(&mut d, "doomed", &mount_cap(""), 64 * MIB).await;
    for i in 0..repeats() {
        let r = d
            .controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            })
            .await;
        ok(r, &format!("DeleteVolume #{i}"));
    }
    assert!(
        d.backend_state().is_empty(),
        "files left: {:?}",
        d.backend_state()
    );
    assert!(list_ids(&mut d).await.is_empty());
    d.assert_no_leaks("after delete").await;
}

// ---- ValidateVolumeCapabilities -----------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn validate_volume_capabilities() {
    require_root!();
    let mut d = Driver::start().await;
    let req = |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.to_owned(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let r = d
        .controller
        .validate_volume_capabilities(req(UNKNOWN_ID, vec![mount_cap("")]))
        .await;
    expect_code(
        r,
        Code::NotFound,
        "ValidateVolumeCapabilities of an unknown volume",
    );
    let r = d
        .controller
        .validate_volume_capabilities(req("", vec![mount_cap("")]))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ValidateVolumeCapabilities without volume_id",
    );

    let v = create(&mut d, "validate", &mount_cap(""), 64 * MIB).await;
    let r = d
        .controller
        .validate_volume_capabilities(req(&v.volume_id, Vec::new()))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ValidateVolumeCapabilities without capabilities",
    );

    let r = d
        .controller
        .validate_volume_capabilities(req(&v.volume_id, vec![mount_cap("")]))
        .await;
    let resp = ok(r, "ValidateVolumeCapabilities SINGLE_NODE_WRITER mount");
    let confirmed = resp
        .confirmed
        .unwrap_or_else(|| panic!("SINGLE_NODE_WRITER mount not confirmed: {:?}", resp.message));
    assert_eq!(confirmed.volume_capabilities, vec![mount_cap("")]);

    let mnmw = with_mode(mount_cap(""), Mode::MultiNodeMultiWriter);
    let r = d
        .controller
        .validate_volume_capabilities(req(&v.volume_id, vec![mnmw]))
        .await;
    let resp = ok(r, "ValidateVolumeCapabilities MULTI_NODE_MULTI_WRITER");
    assert!(
        resp.confirmed.is_none(),
        "MULTI_NODE_MULTI_WRITER confirmed: {resp:?}"
    );
    assert!(
        !resp.message.is_empty(),
        "not confirmed, but no message says why"
    );
    delete(&mut d, &v.volume_id).await;
}

// ---- ListVolumes --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn list_volumes_paging_and_tokens() {
    require_root!();
    let mut d = Driver::start().await;
    let mut all = BTreeSet::new();
    for i in 0..5 {
        all.insert(
            create(&mut d, &format!("list-{i}"), &block_cap(), size_unit())
                .await
                .volume_id,
        );
    }
    let full = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    assert!(
        full.next_token.is_empty(),
        "a list without max_entries must be one page"
    );
    for e in &full.entries {
        let v = e.volume.as_ref().expect("entry without volume");
        assert_eq!(v.capacity_bytes, size_unit());
        assert!(
            topology_is_this_node(v),
            "accessible_topology {:?}",
            v.accessible_topology
        );
    }
    let ids: BTreeSet<String> = full
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(ids, all);
    assert_eq!(full.entries.len(), 5, "duplicates in ListVolumes");

    // Paging with max_entries = 2 returns every volume exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = d
            .controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await;
        let page = ok(r, &format!("ListVolumes page {pages}"));
        pages += 1;
        assert!(
            page.entries.len() <= 2,
            "page of {} with max_entries 2",
            page.entries.len()
        );
        seen.extend(
            page.entries
                .iter()
                .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone())),
        );
        assert!(pages <= 5, "paging does not end");
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 5, "paged ids {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), all);

    // Deleting the last volume of a page keeps its token valid.
    let first = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: String::new(),
            })
            .await,
        "ListVolumes first page",
    );
    let first_ids: Vec<String> = first
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(first_ids.len(), 2);
    assert!(!first.next_token.is_empty());
    delete(&mut d, &first_ids[1]).await;
    let rest = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: first.next_token.clone(),
            })
            .await,
        "ListVolumes with the token of a page whose last volume was deleted",
    );
    let rest_ids: Vec<String> = rest
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    let unique: BTreeSet<&String> = rest_ids.iter().collect();
    assert_eq!(
        unique.len(),
        rest_ids.len(),
        "duplicates after the token: {rest_ids:?}"
    );
    for id in &rest_ids {
        assert!(
            !first_ids.contains(id),
            "{id} was on the first page already (or deleted)"
        );
    }
    assert_eq!(
        rest_ids.len(),
        3,
        "the volumes after the first page: {rest_ids:?}"
    );

    let r = d
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: "invalid-token".to_owned(),
        })
        .await;
    expect_code(
        r,
        Code::Aborted,
        "ListVolumes starting_token \"invalid-token\"",
    );
    let r = d
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await;
    expect_code(r, Code::InvalidArgument, "ListVolumes max_entries -1");

    for id in list_ids(&mut d).await {
        delete(&mut d, &id).await;
    }
    assert!(d.backend_state().is_empty());
}

// ---- full life cycle ----------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fs(&'static str),
    Block,
}

impl Kind {
    fn cap(self) -> csi::VolumeCapability {
        match self {
            Kind::Fs(fs) => mount_cap(fs),
            Kind::Block => block_cap(),
        }
    }

    /// Where data goes: a file in the mounted filesystem, or the device node itself.
    fn data_path(self, target: &str) -> PathBuf {
        match self {
            Kind::Fs(_) => Path::new(target).join("data.bin"),
            Kind::Block => PathBuf::from(target),
        }
    }
}

async fn assert_stats(d: &mut Driver, id: &str, target: &str, kind: Kind, size: i64) {
    let r = d
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.to_owned(),
            volume_path: target.to_owned(),
            staging_target_path: String::new(),
        })
        .await;
    let stats = ok(r, "NodeGetVolumeStats");
    assert!(!stats.usage.is_empty(), "NodeGetVolumeStats: empty usage");
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .unwrap_or_else(|| panic!("no BYTES usage: {:?}", stats.usage));
    match kind {
        Kind::Block => assert_eq!(bytes.total, size, "block volume total bytes"),
        Kind::Fs(_) => {
            assert!(
                bytes.total <= size && bytes.total >= size / 4 * 3,
                "filesystem total {} is not close to the volume size {size}",
                bytes.total
            );
            assert!(
                bytes.used >= i64::try_from(DATA_LEN).expect("fits"),
                "used {} after writing {DATA_LEN} bytes",
                bytes.used
            );
            assert!(bytes.available <= bytes.total);
        }
    }
    if let Some(c) = &stats.volume_condition {
        assert!(!c.abnormal, "healthy volume reported abnormal: {c:?}");
    } else {
        panic!("VOLUME_CONDITION is advertised but NodeGetVolumeStats has no volume_condition");
    }
}

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

// ---- read-only publish --------------------------------------------------------------

fn assert_write_refused(path: &Path, allowed: &[i32], what: &str) {
    let res = write_synced(path, b"must not land");
    match res {
        Ok(()) => panic!("{what}: writing {} succeeded", path.display()),
        Err(e) => assert!(
            e.raw_os_error().is_some_and(|c| allowed.contains(&c)),
            "{what}: writing {} failed with {e}, expected one of errno {allowed:?}",
            path.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_flags_reach_the_staging_mount() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = capability(
        AccessType::Mount(MountVolume {
            fs_type: "ext4".to_owned(),
            mount_flags: vec!["noatime".to_owned(), "nodev".to_owned()],
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    );
    let v = create(&mut d, "flags", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("flags");
    let target = d.target("flags");
    stage(&mut d, &id, &staging, &cap).await;
    let m = mount_at(&staging).expect("staging path is not mounted");
    for flag in ["noatime", "nodev"] {
        assert!(
            m.options.split(',').any(|o| o == flag),
            "staging mount options {:?} lack {flag}",
            m.options
        );
    }
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let t = mount_at(&target).expect("target is not mounted");
    assert!(
        t.options.split(',').any(|o| o == "noatime"),
        "the bind of a noatime staging mount lost noatime: {:?}",
        t.options
    );
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after the mount-flags cycle").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_publish_refuses_writes() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let v = create(&mut d, "ro", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("ro");
    let (rw, ro) = (d.target("rw"), d.target("ro"));
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &rw, &cap, false).await;
    let data = pattern(7, 64 << 10);
    write_synced(&Path::new(&rw).join("f"), &data).expect("write through the rw target");

    for _ in 0..3 {
        publish(&mut d, &id, &staging, &ro, &cap, true).await;
    }
    let m = mount_at(&ro).expect("read-only target not mounted");
    assert!(
        m.read_only(),
        "read-only target mounted with {:?}",
        m.options
    );
    let erofs = nix::errno::Errno::EROFS as i32;
    assert_eq!(
        read_prefix(&Path::new(&ro).join("f"), data.len()).expect("read at ro target"),
        data
    );
    assert_write_refused(
        &Path::new(&ro).join("new"),
        &[erofs],
        "new file at the read-only target",
    );
    assert_write_refused(
        &Path::new(&ro).join("f"),
        &[erofs],
        "existing file at the read-only target",
    );

    // The same target asked for read-write now: incompatible with what is there.
    let r = d
        .node
        .node_publish_volume(publish_request(&id, &staging, &ro, &cap, false))
        .await;
    expect_code(
        r,
        Code::AlreadyExists,
        "NodePublishVolume rw on a target published ro",
    );

    unpublish(&mut d, &id, &ro).await;
    unpublish(&mut d, &id, &rw).await;
    unstage(&mut d, &id, &staging).await;

    // SINGLE_NODE_READER_ONLY: read-only even without the readonly flag.
    let reader = with_mode(cap.clone(), Mode::SingleNodeReaderOnly);
    let reader_target = d.target("reader");
    stage(&mut d, &id, &staging, &reader).await;
    publish(&mut d, &id, &staging, &reader_target, &reader, false).await;
    assert_eq!(
        read_prefix(&Path::new(&reader_target).join("f"), data.len()).expect("read"),
        data
    );
    assert_write_refused(
        &Path::new(&reader_target).join("f"),
        &[erofs],
        "SINGLE_NODE_READER_ONLY target",
    );
    unpublish(&mut d, &id, &reader_target).await;
    unstage(&mut d, &id, &staging).await;

    delete(&mut d, &id).await;
    d.assert_no_leaks("after read-only publish").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_block_publish_refuses_writes() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = block_cap();
    let v = create(&mut d, "ro-block", &cap, 8 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("ro-block");
    let target = d.target("ro-block");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, true).await;
    read_prefix(Path::new(&target), 4096).expect("read the read-only block target");
    // Opening a device node for writing is refused with EROFS or EACCES, a write to a
    // read-only block device with EPERM; any of them means the data is safe.
    let refused = [
        nix::errno::Errno::EROFS as i32,
        nix::errno::Errno::EACCES as i32,
        nix::errno::Errno::EPERM as i32,
    ];
    assert_write_refused(Path::new(&target), &refused, "read-only block target");
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after read-only block publish").await;
}

// ---- node errors --------------------------------------------------------------------

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

// ---- expansion ----------------------------------------------------------------------

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
        note(
            "skipped: NodeExpandVolume of ext4 (online resize2fs needs CAP_SYS_RESOURCE, \
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

// ---- concurrency --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_creates_make_one_volume() {
    require_root!();
    let mut d = Driver::start().await;
    let req = create_request("racy", vec![mount_cap("ext4")], 64 * MIB, 0);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut c = d.controller.clone();
            let req = req.clone();
            tokio::spawn(async move { c.create_volume(req).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.expect("join") {
            Ok(r) => {
                ids.insert(r.into_inner().volume.expect("no volume").volume_id);
            }
            Err(s) => assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent CreateVolume #{i}: {:?}: {}",
                s.code(),
                s.message()
            ),
        }
    }
    assert_eq!(ids.len(), 1, "concurrent creates: ids {ids:?}");
    assert_eq!(images(&d).len(), 1, "images on disk: {:?}", images(&d));
    let id = ids.into_iter().next().expect("one id");
    assert_eq!(list_ids(&mut d).await, vec![id.clone()]);

    // The same for node calls: racing stages and publishes leave one mount each.
    let cap = mount_cap("ext4");
    let staging = d.make_staging("racy");
    let target = d.target("racy");
    let stages: Vec<_> = (0..8)
        .map(|_| {
            let mut n = d.node.clone();
            let req = stage_request(&id, &staging, &cap);
            tokio::spawn(async move { n.node_stage_volume(req).await })
        })
        .collect();
    for call in stages {
        if let Err(s) = call.await.expect("join") {
            assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent NodeStageVolume: {}",
                s.message()
            );
        }
    }
    // Whoever was refused retries, as the CO would.
    stage(&mut d, &id, &staging, &cap).await;
    assert_eq!(
        mount_count(&staging),
        1,
        "racing NodeStageVolume stacked mounts"
    );
    assert_eq!(
        d.attached_devices().len(),
        1,
        "racing NodeStageVolume attached several devices: {:?}",
        d.attached_devices()
    );
    let publishes: Vec<_> = (0..8)
        .map(|_| {
            let mut n = d.node.clone();
            let req = publish_request(&id, &staging, &target, &cap, false);
            tokio::spawn(async move { n.node_publish_volume(req).await })
        })
        .collect();
    for call in publishes {
        if let Err(s) = call.await.expect("join") {
            assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent NodePublishVolume: {}",
                s.message()
            );
        }
    }
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    assert_eq!(
        mount_count(&target),
        1,
        "racing NodePublishVolume stacked mounts"
    );

    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after concurrent calls").await;
}

// ---- restarts -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn restart_after_sigkill_keeps_volumes_and_mounts() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let mut vols = Vec::new();
    for name in ["r-a", "r-b", "r-c"] {
        vols.push(create(&mut d, name, &cap, 32 * MIB).await);
    }
    let id = vols[0].volume_id.clone();
    let staging = d.make_staging("r-a");
    let target = d.target("r-a");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let data = pattern(42, DATA_LEN);
    let file = Path::new(&target).join("survives.bin");
    write_synced(&file, &data).expect("write before the crash");
    let before = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes before the crash",
    );

    d.kill();
    d.restart().await;

    let after = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes after the restart",
    );
    let key = |r: &csi::ListVolumesResponse| {
        let mut v: Vec<(String, i64)> = r
            .entries
            .iter()
            .filter_map(|e| {
                e.volume
                    .as_ref()
                    .map(|v| (v.volume_id.clone(), v.capacity_bytes))
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        key(&after),
        key(&before),
        "volumes changed across SIGKILL and restart"
    );
    assert_eq!(after.entries.len(), 3);
    assert_eq!(
        read_prefix(&file, DATA_LEN).expect("read after the restart"),
        data
    );

    // The CO retries stage and publish after a restart: still the same single mounts.
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    assert_eq!(mount_count(&staging), 1);
    assert_eq!(mount_count(&target), 1);
    assert_stats(&mut d, &id, &target, Kind::Fs("ext4"), 32 * MIB).await;

    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    for v in &vols {
        delete(&mut d, &v.volume_id).await;
    }
    assert!(
        d.backend_state().is_empty(),
        "files left: {:?}",
        d.backend_state()
    );
    d.assert_no_leaks("after the restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly_and_restart_finds_volumes() {
    require_root!();
    let mut d = Driver::start().await;
    let v = create(&mut d, "term", &mount_cap(""), 32 * MIB).await;
    d.stop().await;
    assert!(d.pid().is_none());
    d.restart().await;
    assert_eq!(list_ids(&mut d).await, vec![v.volume_id.clone()]);
    delete(&mut d, &v.volume_id).await;
    // A stale socket from a killed driver is replaced on start.
    d.kill();
    assert!(d.socket().exists(), "SIGKILL cannot remove the socket");
    d.restart().await;
    assert!(list_ids(&mut d).await.is_empty());
    d.stop().await;
    assert!(d.backend_state().is_empty());
}

// ---- bad input leaves nothing behind ------------------------------------------------

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

// ---- incompatible repeats -----------------------------------------------------------

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
