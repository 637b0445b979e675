//! lvm backend scenarios that only a real kernel with dm-thin can run (the VM of
//! `tests/vm/`): a full thin pool, no stale data across delete and create, SIGKILL in the
//! middle of a stream of creates, snapshots and clones (`snapshots.rs`), spares
//! (`spares.rs`), and a reboot (two boots on the same disks, run by
//! `tests/vm/reboot.sh`). Every test returns early with a printed reason unless
//! `IOLANE_TEST_BACKEND=lvm` (see `iolane_tests::test_backend`); the tests share the VGs, so
//! they run one at a time (`--test-threads 1`).
//!
//! Environment (set by `tests/vm/lvm-suite.sh`):
//! - `IOLANE_TEST_LVM_DEVICES`: the default class's devices (VG `iolane`);
//! - `IOLANE_TEST_LVM_SMALL_DEVICE`: a second device for the small pool (VG `iolane-small`,
//!   about 80 MiB on the VM's 8 GiB disk) of the pool-full and stale-data tests;
//! - `IOLANE_TEST_REBOOT_DIR`: a directory kept across the two boots of the reboot test.
//!
//! No assertion is about time: a writer that makes no progress for [`STALL`] counts as hung
//! (a deadline, so a hang fails the test instead of hanging the run).

mod pool_full;
mod reboot;
mod sigkill;
mod snapshots;
mod spares;
mod stale_data;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iolane_tests::csi;
use iolane_tests::{
    AlignedBuf, DEFAULT_VG, Driver, GIB, LVM_EXTENT, LvmClass, MIB, Options, TestBackend,
    block_cap, create_request, lvm_lvs, lvm_snapshot_lvs, lvm_volume_lvs, mount_cap, note, ok,
    open_direct, pattern, poll, publish_request, read_direct, require_lvm, run, sha256,
    stage_request, test_backend, unpublish_request, unstage_request, volume_id_for, write_direct,
    write_synced,
};
use tonic::Code;

/// VG and class of the small pool.
const SMALL_VG: &str = "iolane-small";
const SMALL_CLASS: &str = "small";
const CLASS_KEY: &str = "iolane.dev/device-class";
/// A writer that makes no progress for this long is hung (IO queued, not failed).
const STALL: Duration = Duration::from_secs(60);
/// How long a condition the driver reports may take to show (it may cache or poll).
const REPORT_DEADLINE: Duration = Duration::from_secs(30);

fn lvm_devices() -> Vec<String> {
    match test_backend() {
        TestBackend::Lvm { devices } => devices,
        TestBackend::Loop => panic!("not in lvm mode"),
    }
}

fn class_params(class: &str) -> HashMap<String, String> {
    HashMap::from([(CLASS_KEY.to_owned(), class.to_owned())])
}

async fn create_with(
    d: &mut Driver,
    name: &str,
    cap: &csi::VolumeCapability,
    size: i64,
    params: &HashMap<String, String>,
) -> csi::Volume {
    let mut req = create_request(name, vec![cap.clone()], size, 0);
    req.parameters = params.clone();
    ok(
        d.controller.create_volume(req).await,
        &format!("CreateVolume {name:?} ({size} bytes, parameters {params:?})"),
    )
    .volume
    .expect("CreateVolume returned no volume")
}

async fn create(d: &mut Driver, name: &str, cap: &csi::VolumeCapability, size: i64) -> csi::Volume {
    create_with(d, name, cap, size, &HashMap::new()).await
}

/// Stages and publishes `id` at `<tempdir>/staging/<name>` and `<tempdir>/mount/<name>`;
/// returns (staging, target).
async fn stage_publish(
    d: &mut Driver,
    id: &str,
    name: &str,
    cap: &csi::VolumeCapability,
) -> (String, String) {
    let staging = d.make_staging(name);
    let target = d.target(name);
    ok(
        d.node
            .node_stage_volume(stage_request(id, &staging, cap))
            .await,
        &format!("NodeStageVolume {id}"),
    );
    ok(
        d.node
            .node_publish_volume(publish_request(id, &staging, &target, cap, false))
            .await,
        &format!("NodePublishVolume {id}"),
    );
    (staging, target)
}

async fn unpublish_unstage(d: &mut Driver, id: &str, staging: &str, target: &str) {
    ok(
        d.node
            .node_unpublish_volume(unpublish_request(id, target))
            .await,
        &format!("NodeUnpublishVolume {id}"),
    );
    ok(
        d.node
            .node_unstage_volume(unstage_request(id, staging))
            .await,
        &format!("NodeUnstageVolume {id}"),
    );
}

async fn delete(d: &mut Driver, id: &str) {
    ok(
        d.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await,
        &format!("DeleteVolume {id}"),
    );
}

async fn list(d: &mut Driver) -> BTreeMap<String, i64> {
    ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    )
    .entries
    .into_iter()
    .filter_map(|e| e.volume.map(|v| (v.volume_id, v.capacity_bytes)))
    .collect()
}

async fn stats(d: &mut Driver, id: &str, path: &str) -> csi::NodeGetVolumeStatsResponse {
    ok(
        d.node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.to_owned(),
                volume_path: path.to_owned(),
                staging_target_path: String::new(),
            })
            .await,
        &format!("NodeGetVolumeStats {id} at {path}"),
    )
}

fn errno_name(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(
        || e.to_string(),
        |c| format!("{} ({e})", nix::errno::Errno::from_raw(c)),
    )
}

/// The small pool of the pool-full and stale-data tests: a few hundred MiB on the second
/// device, so that a volume can cover nearly all of it.
fn small_class() -> LvmClass {
    let dev = std::env::var("IOLANE_TEST_LVM_SMALL_DEVICE").expect(
        "IOLANE_TEST_LVM_SMALL_DEVICE: a second blank device for the small pool (the VM's /dev/nvme1n1)",
    );
    LvmClass {
        name: SMALL_CLASS.to_owned(),
        devices: vec![dev],
        vg: SMALL_VG.to_owned(),
        // 1% of the VM's 8 GiB disk: a pool of about 80 MiB, filled in a second or two.
        extra: "pool_size_percent = 1\noverprovision_ratio = 4.0\ndata_high_watermark = 90\n"
            .to_owned(),
    }
}
