//! lvm backend scenarios that only a real kernel with dm-thin can run (the VM of
//! `tests/vm/`): a full thin pool, no stale data across delete and create, SIGKILL in the
//! middle of a stream of creates, and a reboot (two boots on the same disks, run by
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iolane_tests::csi;
use iolane_tests::{
    AlignedBuf, DEFAULT_VG, Driver, GIB, LVM_EXTENT, LvmClass, MIB, Options, TestBackend,
    block_cap, create_request, lvm_lvs, lvm_volume_lvs, mount_cap, note, ok, open_direct, pattern,
    poll, publish_request, read_direct, require_lvm, run, sha256, stage_request, test_backend,
    unpublish_request, unstage_request, volume_id_for, write_direct, write_synced,
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

// ---- pool full ----------------------------------------------------------------------

/// What the filler thread ended with.
#[derive(Debug)]
enum Filled {
    /// Wrote the whole volume: the pool was not full.
    All(u64),
    /// The write at this offset failed.
    Error(u64, std::io::Error),
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_pool_full_fails_writes_and_refuses_creates() {
    require_lvm!();
    let small = small_class();
    let mut d = Driver::start_with(Options {
        lvm_classes: vec![LvmClass::default_class(&lvm_devices()), small],
        ..Options::default()
    })
    .await;
    let pool = lvm_lvs(&[SMALL_VG.to_owned()])
        .into_iter()
        .find(|l| l.name == "pool")
        .expect("no thin pool in VG iolane-small");
    assert_eq!(
        pool.when_full, "error",
        "the pool must fail IO when full, not queue it: {pool:?}"
    );
    let pool_bytes = i64::try_from(pool.size).expect("fits");
    note(format!("small pool: {pool_bytes} bytes of data"));
    let small_params = class_params(SMALL_CLASS);

    // A volume that is written before the pool fills, and read after.
    let reader_cap = mount_cap("ext4");
    let reader = create_with(&mut d, "pf-reader", &reader_cap, 32 * MIB, &small_params).await;
    let (r_staging, r_target) =
        stage_publish(&mut d, &reader.volume_id, "pf-reader", &reader_cap).await;
    let kept = pattern(0x5eed, 1 << 20);
    let kept_file = Path::new(&r_target).join("kept.bin");
    write_synced(&kept_file, &kept).expect("write the reader volume before the pool fills");

    // The filler: twice the pool, so it cannot fit.
    let filler_size = (2 * pool_bytes).div_euclid(LVM_EXTENT) * LVM_EXTENT;
    let filler_cap = block_cap();
    let filler = create_with(&mut d, "pf-filler", &filler_cap, filler_size, &small_params).await;
    let (f_staging, f_target) =
        stage_publish(&mut d, &filler.volume_id, "pf-filler", &filler_cap).await;

    let progress = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let progress = progress.clone();
        let target = PathBuf::from(&f_target);
        let size = u64::try_from(filler_size).expect("fits");
        std::thread::spawn(move || {
            let res = (|| -> std::io::Result<Filled> {
                let f = open_direct(&target, true)?;
                let mut buf = AlignedBuf::new(1 << 20);
                buf.as_mut_slice()
                    .copy_from_slice(&pattern(0xf111, 1 << 20));
                let mut off = 0u64;
                while off < size {
                    if let Err(e) =
                        std::os::unix::fs::FileExt::write_all_at(&f, buf.as_slice(), off)
                    {
                        return Ok(Filled::Error(off, e));
                    }
                    off += 1 << 20;
                    progress.store(off, Ordering::Relaxed);
                }
                if let Err(e) = f.sync_all() {
                    return Ok(Filled::Error(off, e));
                }
                Ok(Filled::All(off))
            })();
            let _ = tx.send(res);
        });
    }
    let started = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    let filled = loop {
        match rx.try_recv() {
            Ok(r) => break r.expect("open the filler's block device with O_DIRECT"),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(e) => panic!("the filler thread died: {e}"),
        }
        let p = progress.load(Ordering::Relaxed);
        if p != last {
            (last, last_change) = (p, Instant::now());
        }
        assert!(
            last_change.elapsed() < STALL,
            "the writer hung: no progress for {STALL:?} at {p} bytes into a {filler_size}-byte volume in a {pool_bytes}-byte pool (IO queued instead of failing?)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut wrong: Vec<String> = Vec::new();
    match &filled {
        Filled::Error(off, e) => {
            note(format!(
                "the writer got {} at offset {off} after {:.1}s",
                errno_name(e),
                started.elapsed().as_secs_f64()
            ));
            let allowed = [
                nix::errno::Errno::ENOSPC as i32,
                nix::errno::Errno::EIO as i32,
            ];
            if !e.raw_os_error().is_some_and(|c| allowed.contains(&c)) {
                wrong.push(format!(
                    "writing into the full pool failed with {}, expected ENOSPC or EIO",
                    errno_name(e)
                ));
            }
        }
        Filled::All(n) => panic!(
            "the writer wrote all {n} bytes of a volume twice the size of its {pool_bytes}-byte pool without an error"
        ),
    }
    let pool_now = lvm_lvs(&[SMALL_VG.to_owned()])
        .into_iter()
        .find(|l| l.name == "pool")
        .expect("pool");
    note(format!(
        "pool after the writer: attr {} data_percent {}",
        pool_now.attr, pool_now.data_percent
    ));

    // The volume's condition turns abnormal.
    let end = Instant::now() + REPORT_DEADLINE;
    let (abnormal, last_condition) = loop {
        let s = stats(&mut d, &filler.volume_id, &f_target).await;
        let abnormal = s.volume_condition.as_ref().is_some_and(|c| c.abnormal);
        if abnormal || Instant::now() > end {
            break (abnormal, s.volume_condition);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if !abnormal {
        wrong.push(format!(
            "NodeGetVolumeStats of the volume whose pool is full (block, {}): volume_condition {last_condition:?} after {REPORT_DEADLINE:?}, expected abnormal=true",
            filler.volume_id
        ));
    }
    let r_stats = stats(&mut d, &reader.volume_id, &r_target).await;
    note(format!(
        "reader volume condition with the pool full: {:?}",
        r_stats.volume_condition
    ));

    // New volumes in that pool are refused, naming the data watermark.
    let mut req = create_request("pf-refused", vec![mount_cap("ext4")], 16 * MIB, 0);
    req.parameters = small_params.clone();
    match d.controller.create_volume(req).await {
        Err(s) if s.code() == Code::ResourceExhausted => {
            let m = s.message().to_lowercase();
            if !(m.contains("data") && m.contains("watermark")) {
                wrong.push(format!(
                    "CreateVolume in the full pool: RESOURCE_EXHAUSTED {:?} does not name the data watermark",
                    s.message()
                ));
            }
        }
        Err(s) => wrong.push(format!(
            "CreateVolume in the full pool: expected RESOURCE_EXHAUSTED, got {:?}: {}",
            s.code(),
            s.message()
        )),
        Ok(r) => wrong.push(format!(
            "CreateVolume in the full pool: expected RESOURCE_EXHAUSTED, got OK: {:?}",
            r.get_ref()
        )),
    }
    let cap_left = ok(
        d.controller
            .get_capacity(csi::GetCapacityRequest {
                parameters: small_params.clone(),
                ..Default::default()
            })
            .await,
        "GetCapacity of the full class",
    )
    .available_capacity;
    if cap_left != 0 {
        wrong.push(format!(
            "GetCapacity of the full class: {cap_left} bytes, expected 0 (past the data watermark)"
        ));
    }

    // The other volume in the same pool still reads (O_DIRECT: from the device, not the cache).
    match read_direct(&kept_file, 0, kept.len()) {
        Ok(b) if b == kept => {}
        Ok(_) => wrong.push("the reader volume's file changed while the pool was full".to_owned()),
        Err(e) => wrong.push(format!(
            "reading the reader volume (same pool) with the pool full failed: {}",
            errno_name(&e)
        )),
    }
    // Another class's pool is not affected.
    let other = create(&mut d, "pf-other-class", &block_cap(), 16 * MIB).await;
    delete(&mut d, &other.volume_id).await;

    // Deleting the filler gives the space back: the pool takes volumes again.
    unpublish_unstage(&mut d, &filler.volume_id, &f_staging, &f_target).await;
    delete(&mut d, &filler.volume_id).await;
    let mut last_err = String::new();
    let end = Instant::now() + REPORT_DEADLINE;
    let again = loop {
        let mut req = create_request("pf-after", vec![block_cap()], 16 * MIB, 0);
        req.parameters = small_params.clone();
        match d.controller.create_volume(req).await {
            Ok(r) => break r.into_inner().volume,
            Err(s) => last_err = format!("{:?}: {}", s.code(), s.message()),
        }
        if Instant::now() > end {
            break None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    match again {
        Some(v) => delete(&mut d, &v.volume_id).await,
        None => wrong.push(format!(
            "after deleting the filler, CreateVolume in its pool still fails: {last_err}"
        )),
    }
    unpublish_unstage(&mut d, &reader.volume_id, &r_staging, &r_target).await;
    delete(&mut d, &reader.volume_id).await;
    d.assert_no_leaks("after the pool-full test").await;
    assert!(
        d.backend_volumes().is_empty(),
        "LVs left: {:?}",
        d.backend_volumes()
    );
    assert!(wrong.is_empty(), "pool full:\n{}", wrong.join("\n"));
}

// ---- no stale data ------------------------------------------------------------------

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

/// The byte the old volume is filled with.
const OLD_BYTE: u8 = 0x5a;

/// Fills `len` bytes of `dev` with [`OLD_BYTE`] (O_DIRECT, 1 MiB at a time) and fsyncs.
fn fill_old(dev: &Path, len: usize) -> std::io::Result<()> {
    let f = open_direct(dev, true)?;
    let mut buf = AlignedBuf::new(1 << 20);
    buf.as_mut_slice().fill(OLD_BYTE);
    for off in (0..len).step_by(1 << 20) {
        let n = (1 << 20).min(len - off);
        std::os::unix::fs::FileExt::write_all_at(&f, &buf.as_slice()[..n], off as u64)?;
    }
    f.sync_all()
}

/// What a fresh volume holds after a 4 KiB marker was written into each of its chunks.
#[derive(Debug, Default)]
struct Stale {
    chunks: usize,
    /// Chunks with a non-zero byte the volume never wrote.
    stale: usize,
    /// Of those, chunks whose stray bytes are the old volume's ([`OLD_BYTE`]).
    old: usize,
    first: Option<usize>,
    /// Non-zero bytes before any marker was written.
    unwritten_nonzero: Option<usize>,
}

/// Reads `len` bytes of a fresh volume (must be zeros), writes a 4 KiB marker at the start
/// of each `chunk` (so the pool provisions every chunk, reusing freed blocks when the pool
/// has no others), and reads everything back: the rest of each chunk must be zeros.
fn probe_stale(dev: &Path, len: usize, chunk: usize) -> std::io::Result<Stale> {
    let mut out = Stale::default();
    let step = 1 << 20;
    for off in (0..len).step_by(step) {
        let b = read_direct(dev, off as u64, step.min(len - off))?;
        if let Some(p) = b.iter().position(|x| *x != 0) {
            out.unwritten_nonzero.get_or_insert(off + p);
        }
    }
    let marker = [0xa5u8; 4096];
    let f = open_direct(dev, true)?;
    let mut buf = AlignedBuf::new(4096);
    buf.as_mut_slice().copy_from_slice(&marker);
    for off in (0..len).step_by(chunk) {
        std::os::unix::fs::FileExt::write_all_at(&f, buf.as_slice(), off as u64)?;
    }
    f.sync_all()?;
    for off in (0..len).step_by(step) {
        let b = read_direct(dev, off as u64, step.min(len - off))?;
        for (i, c) in b.chunks(chunk).enumerate() {
            out.chunks += 1;
            assert_eq!(
                &c[..4096],
                &marker[..],
                "chunk at {}: marker",
                off + i * chunk
            );
            if let Some(p) = c[4096..].iter().position(|x| *x != 0) {
                out.stale += 1;
                out.first.get_or_insert(off + i * chunk + 4096 + p);
                if c[4096 + p] == OLD_BYTE {
                    out.old += 1;
                }
            }
        }
    }
    Ok(out)
}

/// `lvcreate`/`lvremove` straight, for the control run.
fn raw_lv(create: bool, name: &str, size: usize) {
    if create {
        run(
            "lvcreate",
            &[
                "-q",
                "--type",
                "thin",
                "-V",
                &format!("{size}b"),
                "--thinpool",
                "pool",
                "-n",
                name,
                SMALL_VG,
            ],
        );
    } else {
        run("lvremove", &["-q", "-y", &format!("{SMALL_VG}/{name}")]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_new_volume_never_reads_a_deleted_volumes_data() {
    require_lvm!();
    let mut d = Driver::start_with(Options {
        lvm_classes: vec![small_class()],
        ..Options::default()
    })
    .await;
    let pool = lvm_lvs(&[SMALL_VG.to_owned()])
        .into_iter()
        .find(|l| l.name == "pool")
        .expect("no thin pool in VG iolane-small");
    let chunk = usize::try_from(pool.chunk_size).expect("fits");
    assert!(chunk >= 64 << 10, "pool chunk size {chunk}");
    // Nearly the whole pool: the new volume's chunks can only come from the old one's.
    let extent = usize::try_from(LVM_EXTENT).expect("fits");
    let size = (usize::try_from(pool.size).expect("fits") - 2 * extent) / extent * extent;
    let small_dev = &small_class().devices[0];
    let dev_name = Path::new(small_dev)
        .file_name()
        .expect("device name")
        .to_string_lossy()
        .into_owned();
    let discard_max =
        std::fs::read_to_string(format!("/sys/block/{dev_name}/queue/discard_max_bytes"))
            .unwrap_or_default();
    note(format!(
        "pool {} bytes, chunk {chunk}, attr {} (8th 'z': zeroes new chunks), volumes of {size} bytes; {small_dev} discard_max_bytes {}",
        pool.size,
        pool.attr,
        discard_max.trim()
    ));

    // Control: the same sequence with raw LVM, no discard and the pool's zeroing off. It
    // shows that this pool and device would hand a deleted LV's bytes to the next one, so
    // that the check below can fail at all.
    let pool_lv = format!("{SMALL_VG}/pool");
    let zeroing = pool.attr.as_bytes().get(7) == Some(&b'z');
    run("lvchange", &["-q", "--zero", "n", &pool_lv]);
    raw_lv(true, "control-old", size);
    let old_dev = PathBuf::from(format!("/dev/{SMALL_VG}/control-old"));
    fill_old(&old_dev, size).expect("fill the control's old LV");
    raw_lv(false, "control-old", 0);
    raw_lv(true, "control-new", size);
    let control = probe_stale(
        Path::new(&format!("/dev/{SMALL_VG}/control-new")),
        size,
        chunk,
    )
    .expect("probe the control's new LV");
    raw_lv(false, "control-new", 0);
    run(
        "lvchange",
        &["-q", "--zero", if zeroing { "y" } else { "n" }, &pool_lv],
    );
    note(format!(
        "control (lvremove without discard, pool zeroing off): {control:?}"
    ));
    if control.stale == 0 {
        note("the control leaked nothing: on this pool and device the check below cannot fail");
    }

    // The driver: CreateVolume, fill, DeleteVolume, CreateVolume of the same size.
    let cap = block_cap();
    let size_i = i64::try_from(size).expect("fits");
    let old = create(&mut d, "stale-old", &cap, size_i).await;
    let (staging, target) = stage_publish(&mut d, &old.volume_id, "stale-old", &cap).await;
    fill_old(Path::new(&target), size).expect("fill the old volume");
    unpublish_unstage(&mut d, &old.volume_id, &staging, &target).await;
    delete(&mut d, &old.volume_id).await;

    let new = create(&mut d, "stale-new", &cap, size_i).await;
    assert_ne!(new.volume_id, old.volume_id);
    let (staging, target) = stage_publish(&mut d, &new.volume_id, "stale-new", &cap).await;
    let got = probe_stale(Path::new(&target), size, chunk).expect("probe the new volume");
    note(format!("driver (DeleteVolume, then CreateVolume): {got:?}"));
    unpublish_unstage(&mut d, &new.volume_id, &staging, &target).await;
    delete(&mut d, &new.volume_id).await;
    d.assert_no_leaks("after the stale-data test").await;
    assert!(
        got.unwritten_nonzero.is_none(),
        "the new volume reads non-zero bytes before anything was written to it (first at offset {:?})",
        got.unwritten_nonzero
    );
    assert!(
        got.stale == 0,
        "{} of {} newly provisioned chunks of the new volume hold bytes it never wrote (first at offset {:?}); in {} of them they are the deleted volume's bytes (0x{OLD_BYTE:02x})",
        got.stale,
        got.chunks,
        got.first,
        got.old
    );
}

// ---- SIGKILL in the middle of a stream of creates -------------------------------------

/// Processes named `lvcreate` (a killed driver's orphans finish on their own).
fn lvcreate_running() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "lvcreate").then_some(pid)
        })
        .collect()
}

/// One CreateVolume of the stream and how it ended.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    result: Option<Result<String, String>>,
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_sigkill_during_creates_leaves_consistent_state() {
    require_lvm!();
    let mut d = Driver::start().await;
    let cap = block_cap();
    let size = LVM_EXTENT;
    let mut wrong: Vec<String> = Vec::new();
    let mut all_names: BTreeSet<String> = BTreeSet::new();
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    // Kill at different points of an lvcreate: at once, a little later, later still.
    for (round, delay_ms) in [(0u32, 0u64), (1, 400), (2, 1500)] {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for stream in 0..2 {
            let calls = calls.clone();
            let mut ctl = d.controller.clone();
            let cap = cap.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("stream-{round}-{stream}-{i}");
                    let idx = {
                        let mut c = calls.lock().expect("lock");
                        c.push(Call {
                            name: name.clone(),
                            result: None,
                        });
                        c.len() - 1
                    };
                    let r = ctl
                        .create_volume(create_request(&name, vec![cap.clone()], size, 0))
                        .await
                        .map(|r| {
                            r.into_inner()
                                .volume
                                .map(|v| v.volume_id)
                                .unwrap_or_default()
                        })
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                    let failed = r.is_err();
                    calls.lock().expect("lock")[idx].result = Some(r);
                    if failed {
                        break;
                    }
                }
            }));
        }
        // Some creates done, and more under way: then SIGKILL.
        let c2 = calls.clone();
        let busy = poll(Duration::from_secs(300), move || {
            let c = c2.lock().expect("lock");
            let done = c.iter().filter(|x| matches!(x.result, Some(Ok(_)))).count();
            let pending = c.iter().filter(|x| x.result.is_none()).count();
            done >= 2 && pending >= 1
        })
        .await;
        assert!(
            busy,
            "round {round}: the create stream did not get going: {:?}",
            calls.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        d.kill();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a create stream did not end after the driver was killed")
                .expect("join");
        }
        let calls = calls.lock().expect("lock").clone();
        let mut interrupted = Vec::new();
        for c in &calls {
            all_names.insert(c.name.clone());
            match &c.result {
                Some(Ok(id)) => {
                    assert_eq!(id, &volume_id_for(&c.name), "CreateVolume {} id", c.name);
                    created.insert(c.name.clone(), id.clone());
                }
                _ => interrupted.push(c.name.clone()),
            }
        }
        note(format!(
            "round {round}: killed {delay_ms} ms after the stream was busy; {} creates returned OK, interrupted: {interrupted:?}; lvcreate still running: {:?}",
            calls.len() - interrupted.len(),
            lvcreate_running()
        ));

        d.restart().await;
        let listed = list(&mut d).await;
        for (name, id) in &created {
            if !listed.contains_key(id) {
                wrong.push(format!(
                    "round {round}: {name} ({id}) returned OK before the kill but ListVolumes after the restart does not list it"
                ));
            }
        }
        let known: BTreeSet<String> = all_names.iter().map(|n| volume_id_for(n)).collect();
        for id in listed.keys() {
            if !known.contains(id) {
                wrong.push(format!(
                    "round {round}: ListVolumes lists {id}, which no call created"
                ));
            }
        }
        // The CO retries the interrupted calls: each returns its volume, the same each time.
        for name in &interrupted {
            let want = volume_id_for(name);
            let req = create_request(name, vec![cap.clone()], size, 0);
            let mut got = Vec::new();
            for attempt in 0..2 {
                match d.controller.create_volume(req.clone()).await {
                    Ok(r) => got.push(
                        r.into_inner()
                            .volume
                            .map(|v| v.volume_id)
                            .unwrap_or_default(),
                    ),
                    Err(s) => {
                        wrong.push(format!(
                            "round {round}: repeating the interrupted CreateVolume {name} after the restart (attempt {attempt}): {:?}: {}",
                            s.code(),
                            s.message()
                        ));
                        // As the CO would, retry after a moment.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            for id in &got {
                if id != &want {
                    wrong.push(format!(
                        "round {round}: the repeated CreateVolume {name} returned {id}, expected {want}"
                    ));
                }
            }
            if let Some(prev) = listed.get(&want) {
                note(format!(
                    "round {round}: {name} was already listed after the restart ({prev} bytes)"
                ));
            }
            created.insert(name.clone(), want);
        }
    }

    // The killed drivers' lvcreate processes finish on their own; then LVM and the driver
    // agree: every iol-* LV is a tagged volume that ListVolumes lists, and the reverse.
    let settled = poll(Duration::from_secs(120), || lvcreate_running().is_empty()).await;
    assert!(
        settled,
        "lvcreate processes still running: {:?}",
        lvcreate_running()
    );
    d.restart().await;
    let listed = list(&mut d).await;
    let lvs = lvm_volume_lvs(d.vgs());
    let lv_names: BTreeSet<String> = lvs.iter().map(|l| l.name.clone()).collect();
    let listed_ids: BTreeSet<String> = listed.keys().cloned().collect();
    let want_ids: BTreeSet<String> = created.values().cloned().collect();
    for lv in &lvs {
        if !lv.tags.iter().any(|t| t.starts_with("iolane.dev/name=")) {
            wrong.push(format!(
                "LV {}/{} has no iolane name tag: {:?}",
                lv.vg, lv.name, lv.tags
            ));
        }
    }
    if lv_names != listed_ids {
        wrong.push(format!(
            "iol-* LVs and ListVolumes differ: only LVs {:?}, only listed {:?}",
            lv_names.difference(&listed_ids).collect::<Vec<_>>(),
            listed_ids.difference(&lv_names).collect::<Vec<_>>()
        ));
    }
    if listed_ids != want_ids {
        wrong.push(format!(
            "ListVolumes is not exactly the created volumes: missing {:?}, extra {:?}",
            want_ids.difference(&listed_ids).collect::<Vec<_>>(),
            listed_ids.difference(&want_ids).collect::<Vec<_>>()
        ));
    }
    note(format!("{} volumes after 3 SIGKILLs", listed.len()));
    for id in listed.keys() {
        delete(&mut d, id).await;
    }
    assert!(
        d.backend_volumes().is_empty(),
        "LVs left: {:?}",
        d.backend_volumes()
    );
    assert!(
        wrong.is_empty(),
        "SIGKILL during creates:\n{}",
        wrong.join("\n")
    );
}

// ---- reboot (two boots: tests/vm/reboot.sh) ---------------------------------------------

fn reboot_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("IOLANE_TEST_REBOOT_DIR").expect(
            "IOLANE_TEST_REBOOT_DIR: a directory kept across both boots (tests/vm/reboot.sh)",
        ),
    )
}

/// What boot 1 leaves for boot 2.
fn reboot_record(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("volumes.json"))
        .expect("read volumes.json of boot 1 (did boot 1 pass?)");
    serde_json::from_str(&text).expect("parse volumes.json")
}

fn vg_uuid() -> String {
    run("vgs", &["--noheadings", "-o", "vg_uuid", DEFAULT_VG])
        .trim()
        .to_owned()
}

/// (name, capability, size, fs): the volumes of the reboot test.
fn reboot_volumes() -> Vec<(&'static str, csi::VolumeCapability, i64, bool)> {
    vec![
        ("reboot-ext4", mount_cap("ext4"), 64 * MIB, true),
        ("reboot-block", block_cap(), 16 * MIB, false),
    ]
}

const REBOOT_DATA: usize = 4 << 20;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "first of two boots on the same disks: run by tests/vm/reboot.sh"]
async fn lvm_reboot_1_create_and_write() {
    require_lvm!();
    let dir = reboot_dir();
    let mut d = Driver::start_with(Options {
        keep_lvs: true,
        ..Options::default()
    })
    .await;
    let mut record = Vec::new();
    for (i, (name, cap, size, fs)) in reboot_volumes().into_iter().enumerate() {
        let v = create(&mut d, name, &cap, size).await;
        let (staging, target) = stage_publish(&mut d, &v.volume_id, name, &cap).await;
        let data = pattern(0xb007 + i as u64, REBOOT_DATA);
        if fs {
            write_synced(&Path::new(&target).join("data.bin"), &data).expect("write the file");
        } else {
            write_direct(Path::new(&target), 0, &data).expect("write the device");
            // The block volume is cleanly unpublished and unstaged; the filesystem one stays
            // mounted until the harness lazily unmounts it, as at an unclean shutdown.
            unpublish_unstage(&mut d, &v.volume_id, &staging, &target).await;
        }
        record.push(serde_json::json!({
            "name": name, "id": v.volume_id, "size": v.capacity_bytes, "fs": fs,
            "sha256": sha256(&data),
        }));
    }
    let rec = serde_json::json!({ "vg_uuid": vg_uuid(), "volumes": record });
    write_synced(
        &dir.join("volumes.json"),
        serde_json::to_string_pretty(&rec).expect("json").as_bytes(),
    )
    .expect("write volumes.json");
    note(format!("boot 1 recorded {rec}"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "second of two boots on the same disks: run by tests/vm/reboot.sh"]
async fn lvm_reboot_2_adopt_and_read() {
    require_lvm!();
    let rec = reboot_record(&reboot_dir());
    let vols = rec["volumes"].as_array().cloned().unwrap_or_default();
    assert_eq!(vols.len(), reboot_volumes().len(), "volumes.json: {rec}");
    let before = lvm_lvs(&[DEFAULT_VG.to_owned()]);
    note(format!(
        "LVs at boot, before the driver starts: {:?}",
        before
            .iter()
            .map(|l| format!("{} {} active={}", l.name, l.attr, l.kernel.is_some()))
            .collect::<Vec<_>>()
    ));
    let mut d = Driver::start_with(Options {
        keep_lvs: true,
        ..Options::default()
    })
    .await;
    let mut wrong = Vec::new();
    if vg_uuid() != rec["vg_uuid"].as_str().unwrap_or_default() {
        wrong.push(format!(
            "VG {DEFAULT_VG} has UUID {} after the reboot, {} before: it was recreated",
            vg_uuid(),
            rec["vg_uuid"]
        ));
    }
    if !d.log().contains("adopted") {
        wrong.push("the driver log does not say it adopted the existing pool".to_owned());
    }
    let pool = lvm_lvs(&[DEFAULT_VG.to_owned()])
        .into_iter()
        .find(|l| l.name == "pool")
        .expect("pool after the reboot");
    if pool.when_full != "error" {
        wrong.push(format!(
            "the pool's when_full is {:?} after the reboot",
            pool.when_full
        ));
    }
    let listed = list(&mut d).await;
    let want: BTreeMap<String, i64> = vols
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default().to_owned(),
                v["size"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed, want, "ListVolumes after the reboot (id -> size)");
    let caps: HashMap<&str, csi::VolumeCapability> = reboot_volumes()
        .into_iter()
        .map(|(n, c, _, _)| (n, c))
        .collect();
    for v in &vols {
        let name = v["name"].as_str().unwrap_or_default();
        let id = v["id"].as_str().unwrap_or_default();
        let fs = v["fs"].as_bool().unwrap_or_default();
        let cap = caps[name].clone();
        let (staging, target) = stage_publish(&mut d, id, name, &cap).await;
        let path = if fs {
            Path::new(&target).join("data.bin")
        } else {
            PathBuf::from(&target)
        };
        let back = read_direct(&path, 0, REBOOT_DATA).expect("read after the reboot");
        if sha256(&back) != v["sha256"].as_str().unwrap_or_default() {
            wrong.push(format!(
                "{name} ({id}): the data written before the reboot changed"
            ));
        }
        let s = stats(&mut d, id, &target).await;
        if s.volume_condition.as_ref().is_some_and(|c| c.abnormal) {
            wrong.push(format!(
                "{name}: abnormal after the reboot: {:?}",
                s.volume_condition
            ));
        }
        unpublish_unstage(&mut d, id, &staging, &target).await;
        delete(&mut d, id).await;
    }
    // A new volume in the adopted pool.
    let n = create(&mut d, "after-reboot", &mount_cap("ext4"), GIB).await;
    delete(&mut d, &n.volume_id).await;
    d.assert_no_leaks("after the reboot test").await;
    assert!(
        d.backend_volumes().is_empty(),
        "LVs left: {:?}",
        d.backend_volumes()
    );
    assert!(wrong.is_empty(), "reboot:\n{}", wrong.join("\n"));
}
