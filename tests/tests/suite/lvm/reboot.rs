//! The reboot test, two boots on the same disks (`tests/vm/reboot.sh`, both tests
//! `#[ignore]`d so only that script runs them): boot 1 creates volumes and writes data,
//! boot 2 adopts the pool, lists, stages, publishes and reads the data back.

use super::*;

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
