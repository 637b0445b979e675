//! A full thin pool: writes to a volume fail with an IO error instead of hanging, and
//! CreateVolume refuses what the pool cannot hold.

use super::*;

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
