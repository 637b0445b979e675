//! Start-up: pools built on blank devices or adopted, devices refused, the sweep of
//! untagged volume LVs, and the granularity of several classes.

use super::*;
use crate::backend::lvm::setup::lcm;

/// The `lvs` report of the fixture's VG, as the backend runs it.
fn lvs_of_vg() -> String {
    format!(
        "lvs --reportformat json --units b --nosuffix -o {} iolane",
        report::LV_FIELDS.join(",")
    )
}

#[tokio::test]
async fn blank_devices_become_a_vg_and_a_thin_pool() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1", "nvme1n1"]);
    let (a, b) = (class.devices[0].clone(), class.devices[1].clone());
    f.answer_pvs(&[]);
    for d in [&a, &b] {
        // blkid exits 2 when it finds no signature.
        f.runner.answer(
            &format!("blkid -p -o export -- {}", d.display()),
            Output {
                status: Some(2),
                ..Output::default()
            },
        );
    }
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    assert_eq!(backend.ready().await, Ok(()));
    assert_eq!(backend.granularity(), EXTENT);
    assert_eq!(
        f.runner.calls(),
        vec![
            "pvs --reportformat json --units b --nosuffix -o pv_name,vg_name".to_owned(),
            format!("blkid -p -o export -- {}", a.display()),
            format!("blkid -p -o export -- {}", b.display()),
            format!("pvcreate {}", a.display()),
            format!("pvcreate {}", b.display()),
            format!("vgcreate iolane {} {}", a.display(), b.display()),
            "lvcreate -T -l 95%VG --chunksize 64k --zero y --errorwhenfull y iolane/pool"
                .to_owned(),
            lvs_of_vg(),
            lvs_of_vg(),
        ]
    );
}

#[tokio::test]
async fn a_device_with_a_signature_is_refused_and_nothing_is_changed() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1", "nvme1n1"]);
    let second = class.devices[1].clone();
    f.answer_pvs(&[]);
    // The first device is blank, the second holds a filesystem.
    f.runner.answer(
        "blkid -p",
        Output {
            status: Some(2),
            ..Output::default()
        },
    );
    f.answer(
        &format!("blkid -p -o export -- {}", second.display()),
        "DEVNAME=x\nTYPE=xfs\nUSAGE=filesystem\n".to_owned(),
    );
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let calls = f.runner.calls();
    assert!(
        calls.iter().all(|c| !c.starts_with("pvcreate")
            && !c.starts_with("vgcreate")
            && !c.starts_with("lvcreate")
            && !c.starts_with("wipefs")),
        "{calls:#?}"
    );
    let reason = backend.ready().await.unwrap_err();
    assert!(
        reason.contains(&second.display().to_string())
            && reason.contains("xfs")
            && reason.contains("wipe = \"signatures\""),
        "{reason}"
    );
    // The process keeps serving: volume calls say the class is not ready.
    let err = backend.create(&spec("v", 8 << 20)).await.unwrap_err();
    assert!(matches!(err, Error::NotReady(_)), "{err}");
    assert!(backend.list().await.unwrap().is_empty());
}

/// A class whose set-up failed (here `pvs` timing out, as one did after a SIGKILLed
/// `lvcreate`) is tried again once the retry period has passed, not before, and turns
/// ready without a restart.
#[tokio::test]
async fn a_class_not_ready_at_start_is_set_up_again_and_turns_ready() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    let d = class.devices[0].clone();
    f.runner.answer(
        "pvs ",
        Output {
            status: Some(5),
            stderr: "  Timed out waiting for the VG lock\n".to_owned(),
            ..Output::default()
        },
    );
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(reason.contains("Timed out waiting"), "{reason}");
    let err = backend.create(&spec("v", 8 << 20)).await.unwrap_err();
    assert!(matches!(err, Error::NotReady(_)), "{err}");
    // Within the retry period nothing runs again.
    let calls = f.runner.calls().len();
    assert!(backend.ready().await.is_err());
    assert_eq!(f.runner.calls().len(), calls);
    // The VG and its pool are there now: adopted, then swept and indexed.
    f.answer_pvs(&[(&d, "iolane")]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0), tagged("keep", 8 << 20)]);
    backend.expire_setup_retry().await;
    assert_eq!(backend.ready().await, Ok(()));
    assert_eq!(backend.granularity(), EXTENT);
    assert_eq!(
        f.runner.calls()[calls..],
        [
            "pvs --reportformat json --units b --nosuffix -o pv_name,vg_name".to_owned(),
            lvs_of_vg(),
            lvs_of_vg(),
        ]
    );
    // The sweep's report filled the index: the volume is known without another report.
    f.activate("iolane", &volume_id_for("keep"));
    let keep = backend.get(&volume_id_for("keep")).await.unwrap().unwrap();
    assert_eq!(keep.capacity_bytes, 8 << 20);
    assert_eq!(f.runner.calls().len(), calls + 3);
}

#[tokio::test]
async fn an_lvm_label_that_pvs_does_not_list_is_a_foreign_signature() {
    // What blkid printed for a real PV (fixture), on a device LVM does not report (e.g.
    // filtered out by the host's lvm.conf): not ours to take.
    let blkid = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvm/blkid-lvm2-pv.stdout"),
    )
    .unwrap();
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    f.answer_pvs(&[]);
    f.answer("blkid -p", blkid);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(reason.contains("a signature (LVM2_member)"), "{reason}");
    assert_eq!(f.effects(0).len(), 1, "only blkid ran");
}

#[tokio::test]
async fn a_pv_of_another_vg_is_refused() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    f.answer_pvs(&[(&class.devices[0], "data")]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(
        reason.contains("physical volume of VG \"data\""),
        "{reason}"
    );
    assert_eq!(f.effects(0), Vec::<String>::new());
}

#[tokio::test]
async fn wipe_policy_erases_signatures_before_pvcreate() {
    let f = Fixture::new();
    let mut class = f.class(&["nvme0n1"]);
    class.wipe = WipePolicy::Signatures;
    let d = class.devices[0].clone();
    f.answer_pvs(&[]);
    f.answer("blkid -p", "PTTYPE=gpt\n".to_owned());
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    assert_eq!(backend.ready().await, Ok(()));
    assert_eq!(
        f.effects(0)[..4],
        [
            format!("blkid -p -o export -- {}", d.display()),
            format!("wipefs -a -- {}", d.display()),
            format!("pvcreate {}", d.display()),
            format!("vgcreate iolane {}", d.display()),
        ]
    );
}

#[tokio::test]
async fn an_orphan_pv_is_reused_and_a_missing_device_refused() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    let d = class.devices[0].clone();
    f.answer_pvs(&[(&d, "")]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    LvmBackend::open(f.os.clone(), vec![class]).await;
    assert!(f.effects(0)[0].starts_with("vgcreate iolane "));

    let f = Fixture::new();
    let class = DeviceClass::with_defaults("default", vec![f.dir.path().join("dev/nvme9n1")]);
    f.answer_pvs(&[]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(reason.contains("nvme9n1 does not exist"), "{reason}");
    assert!(!reason.contains("wipe"), "{reason}");
}

#[tokio::test]
async fn an_existing_pool_is_adopted_untouched_and_untagged_volume_lvs_are_removed() {
    let f = Fixture::new();
    let stray = volume_id_for("stray");
    f.activate("iolane", &stray);
    let b = f
        .adopted(&[
            tagged("keep", 8 << 20),
            thin(&stray, 8 << 20, &[], true),
            thin("someone-elses", 8 << 20, &[], true),
        ])
        .await;
    let dev = f.dir.path().join("dev/iolane").join(&stray);
    assert_eq!(
        f.effects(0),
        vec![
            format!("blkdiscard -- {}", dev.display()),
            format!("lvremove -y iolane/{stray}"),
        ]
    );
    f.answer_lvs(&[pool(0.0, 0.0), tagged("keep", 8 << 20)]);
    let vols = b.list().await.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].name, "keep");
    assert_eq!(vols[0].capacity_bytes, 8 << 20);
    assert_eq!(vols[0].fs_type, Some(FsType::Ext4));
}

#[test]
fn granularity_is_the_lcm_of_extents() {
    assert_eq!(lcm(1, 4 << 20), 4 << 20);
    assert_eq!(lcm(4 << 20, 32 << 20), 32 << 20);
    assert_eq!(lcm(3, 4), 12);
}
