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

mod bad_input;
mod concurrency;
mod controller;
mod create;
mod expansion;
mod identity;
mod lifecycle;
mod node_errors;
mod read_only;
mod restarts;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use iolane_tests::csi;
use iolane_tests::{
    CAP_SYS_RESOURCE, Driver, GIB, MIB, NODE_ID, Options, TOPOLOGY_KEY, block_cap,
    block_device_size, capability, create_request, entries_under, expect_code, files_under,
    has_capability, have_program, is_lvm, mount_at, mount_cap, mounts, node_topology, ok, pattern,
    poll, publish_request, read_prefix, repeats, require_root, round_up, sha256, size_unit, skip,
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
        skip("mkfs.xfs is not installed (install xfsprogs to run the xfs cases)");
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
