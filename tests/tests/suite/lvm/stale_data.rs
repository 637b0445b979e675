//! No stale data: a new volume never reads what a deleted volume wrote to the same chunks
//! of the small pool, with the pool's zeroing of new chunks turned off during the driver's
//! run, so that only the driver's discard protects the next tenant. A control run with the
//! discard left out (raw LVM, in a sibling pool of the same chunk size and zeroing off, on
//! the same device) must show leaked data, so the check can fail at all.

use super::*;

/// The byte the old volume is filled with.
pub(super) const OLD_BYTE: u8 = 0x5a;

/// Fills `len` bytes of `dev` with [`OLD_BYTE`] (O_DIRECT, 1 MiB at a time) and fsyncs.
pub(super) fn fill_old(dev: &Path, len: usize) -> std::io::Result<()> {
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
pub(super) struct Stale {
    pub(super) chunks: usize,
    /// Chunks with a non-zero byte the volume never wrote.
    pub(super) stale: usize,
    /// Of those, chunks whose stray bytes are the old volume's ([`OLD_BYTE`]).
    pub(super) old: usize,
    pub(super) first: Option<usize>,
    /// Non-zero bytes before any marker was written.
    pub(super) unwritten_nonzero: Option<usize>,
}

/// Reads `len` bytes of a fresh volume (must be zeros), writes a 4 KiB marker at the start
/// of each `chunk` (so the pool provisions every chunk, reusing freed blocks when the pool
/// has no others), and reads everything back: the rest of each chunk must be zeros.
pub(super) fn probe_stale(dev: &Path, len: usize, chunk: usize) -> std::io::Result<Stale> {
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

/// The control's own thin pool in the small VG (same device, chunk size, zeroing off).
const CONTROL_POOL: &str = "control";

/// `lvcreate`/`lvremove` straight in the control pool, for the control run.
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
                CONTROL_POOL,
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

    // The driver, with the pool's zeroing off: CreateVolume, fill, DeleteVolume,
    // CreateVolume of the same size.
    let pool_lv = format!("{SMALL_VG}/pool");
    let zeroing = pool.attr.as_bytes().get(7) == Some(&b'z');
    let _zero = ZeroingOff::new(&pool_lv, zeroing);
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

    // Control: the same sequence with raw LVM and no discard, in a pool of its own.
    run(
        "lvcreate",
        &[
            "-q",
            "-T",
            "-L",
            &format!("{}b", pool.size),
            "--chunksize",
            &format!("{}k", chunk / 1024),
            "--zero",
            "n",
            &format!("{SMALL_VG}/{CONTROL_POOL}"),
        ],
    );
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
        "lvremove",
        &["-q", "-y", &format!("{SMALL_VG}/{CONTROL_POOL}")],
    );
    note(format!(
        "control (lvremove without discard, zeroing off): {control:?}"
    ));
    assert!(
        control.old > 0,
        "the control leaked nothing: on this pool and device the check cannot fail ({control:?})"
    );
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

/// Turns a thin pool's zeroing of new chunks off, and back to `restore` when dropped (also
/// when the test fails).
pub(super) struct ZeroingOff {
    pool: String,
    restore: bool,
}

impl ZeroingOff {
    pub(super) fn new(pool: &str, restore: bool) -> ZeroingOff {
        run("lvchange", &["-q", "--zero", "n", pool]);
        ZeroingOff {
            pool: pool.to_owned(),
            restore,
        }
    }
}

impl Drop for ZeroingOff {
    fn drop(&mut self) {
        let z = if self.restore { "y" } else { "n" };
        if let Err(e) = iolane_tests::try_run("lvchange", &["-q", "--zero", z, &self.pool]) {
            note(format!(
                "could not set zeroing of {} back to {z}: {e}",
                self.pool
            ));
        }
    }
}
