//! The raw side: the same volume cycle as plain commands on a VG of the same shape on the
//! second disk (`lvcreate` thin, `mkfs.ext4` with the driver's options, `mount`, `umount`,
//! `lvremove`), sequentially and concurrently.

use std::fs;
use std::time::Instant;

use crate::report::{Phase, Sample};
use crate::{MKFS_EXT4, POOL, RAW_VG, STEPS_RAW, secs, sh, sh_status};

pub(crate) fn raw_setup(dev: &str) {
    // What the driver does at start on a blank device: a VG, then a thin pool of 95 % of it,
    // 64 KiB chunks, zeroing on, error when full.
    sh("vgcreate", &[RAW_VG, dev]);
    sh(
        "lvcreate",
        &[
            "-T",
            "-l",
            "95%VG",
            "--chunksize",
            "64k",
            "--zero",
            "y",
            "--errorwhenfull",
            "y",
            &format!("{RAW_VG}/{POOL}"),
        ],
    );
}

pub(crate) fn raw_cycle(name: &str) -> Sample {
    let dir = format!("/tmp/iolane-bench-raw/{name}");
    fs::create_dir_all(&dir).unwrap();
    let dev = format!("/dev/{RAW_VG}/{name}");
    let lv = format!("{RAW_VG}/{name}");
    let mut mkfs: Vec<&str> = MKFS_EXT4.to_vec();
    mkfs.extend(["--", &dev]);
    let steps: [(&str, Vec<&str>); 5] = [
        (
            "lvcreate",
            vec![
                "--type",
                "thin",
                "-V",
                "1073741824b",
                "--thinpool",
                POOL,
                "-n",
                name,
                RAW_VG,
            ],
        ),
        ("mkfs.ext4", mkfs),
        ("mount", vec!["-t", "ext4", "--", &dev, &dir]),
        ("umount", vec!["--", &dir]),
        ("lvremove", vec!["-y", &lv]),
    ];
    steps
        .iter()
        .map(|(p, a)| {
            // Not timed: the same `fsck -n` the driver cycle runs before its delete, so
            // both sides carry the same untimed load (and the raw filesystem is checked).
            if *p == "lvremove" {
                let (clean, out) = sh_status("e2fsck", &["-f", "-n", &dev]);
                assert!(clean, "e2fsck -fn {dev} (raw cycle {name}): {out}");
            }
            let t = Instant::now();
            sh(p, a);
            secs(t.elapsed())
        })
        .collect()
}

pub(crate) fn raw_concurrent(workers: usize, per: usize) -> Phase {
    let t = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| raw_cycle(&format!("conc-{w}-{i}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let samples = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Phase {
        name: "raw_concurrent".into(),
        steps: STEPS_RAW,
        samples,
        wall: secs(t.elapsed()),
    }
}
