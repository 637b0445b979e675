//! Spares on dm-thin (class `spares = N`): a deleted ext4 or xfs volume's LV is kept,
//! discarded and formatted anew, and the next volume of its size and filesystem is made
//! from it with no `lvcreate` and no `mkfs` at NodeStage. That volume has its own ID and
//! filesystem UUID, shows nothing of the deleted volume (not in its files; for ext4, not
//! anywhere on its device), passes `fsck -n`, and a late DeleteVolume of the old ID leaves
//! it alone. A restart prepares a spare again before handing it out.

use super::*;

const MARK: &[u8] = b"iolane spares test: data of a deleted volume";
const SPARE_TAG: &str = "iolane.dev/spare=";
const NAME_TAG: &str = "iolane.dev/name=";

/// The LV holding the volume named `name` (found by its name tag, as the driver does).
fn lv_holding(vg: &str, name: &str) -> iolane_tests::LvInfo {
    let tag = format!("{NAME_TAG}{name}");
    lvm_volume_lvs(&[vg.to_owned()])
        .into_iter()
        .find(|l| l.tags.contains(&tag))
        .unwrap_or_else(|| panic!("no LV carries {tag}"))
}

/// The spares of `vg` formatted with `fs` (any filesystem: `""`).
fn spares(vg: &str, fs: &str) -> Vec<iolane_tests::LvInfo> {
    let tag = format!("{SPARE_TAG}{fs}");
    lvm_volume_lvs(&[vg.to_owned()])
        .into_iter()
        .filter(|l| l.tags.iter().any(|t| t.starts_with(&tag)))
        .collect()
}

fn dev(vg: &str, lv: &str) -> String {
    format!("/dev/{vg}/{lv}")
}

fn uuid(dev: &str) -> String {
    run("blkid", &["-p", "-o", "value", "-s", "UUID", dev])
        .trim()
        .to_owned()
}

fn fsck_clean(fs: &str, dev: &str) {
    let r = if fs == "xfs" {
        iolane_tests::try_run("xfs_repair", &["-n", dev])
    } else {
        iolane_tests::try_run("e2fsck", &["-f", "-n", dev])
    };
    assert!(r.is_ok(), "fsck -n of the {fs} filesystem on {dev}: {r:?}");
}

/// Whether `needle` occurs anywhere on `dev` (read in 4 MiB pieces that overlap by the
/// needle's length).
fn device_holds(dev: &str, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut f = std::fs::File::open(dev).expect("open the device");
    let mut buf = vec![0u8; 4 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).expect("read the device");
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().saturating_sub(needle.len());
        carry.drain(..keep);
    }
}

/// Total bytes of the filesystem mounted at `path`.
fn fs_bytes(path: &str) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() * st.fragment_size()
}

/// Waits until the driver's log says `n` spares were prepared.
async fn prepared(d: &Driver, n: usize) {
    let done = poll(REPORT_DEADLINE, || {
        d.log().matches("prepared a spare").count() >= n
    })
    .await;
    assert!(done, "{n} spares were not prepared in time:\n{}", d.log());
}

fn spare_class(devices: &[String], n: u32) -> LvmClass {
    let mut class = LvmClass::default_class(devices);
    class.extra = format!("spares = {n}\n");
    class
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_spares_make_volumes_with_own_ids_uuids_clean_fs_and_no_foreign_data() {
    require_lvm!();
    let mut d = Driver::start_with(Options {
        lvm_classes: vec![spare_class(&lvm_devices(), 2)],
        ..Default::default()
    })
    .await;
    let mut kept = 0;
    // Small volumes, so that reading a whole device stays cheap in the emulated VM.
    for (fs, size) in [("ext4", 128 * MIB), ("xfs", 320 * MIB)] {
        let cap = mount_cap(fs);
        // A first volume writes a mark and is deleted: its LV becomes a spare.
        let first_name = format!("spare-{fs}-first");
        let first = create(&mut d, &first_name, &cap, size).await;
        assert_eq!(first.volume_id, volume_id_for(&first_name));
        let first_lv = lv_holding(DEFAULT_VG, &first_name);
        let (s0, t0) = stage_publish(&mut d, &first.volume_id, &first_name, &cap).await;
        let first_fs_bytes = fs_bytes(&t0);
        write_synced(&Path::new(&t0).join("mark.bin"), &MARK.repeat(4096)).expect("write the mark");
        let first_uuid = uuid(&dev(DEFAULT_VG, &first_lv.name));
        unpublish_unstage(&mut d, &first.volume_id, &s0, &t0).await;
        delete(&mut d, &first.volume_id).await;
        kept += 1;
        prepared(&d, kept).await;
        let spare = spares(DEFAULT_VG, fs);
        assert_eq!(
            spare.iter().map(|l| &l.name).collect::<Vec<_>>(),
            vec![&first_lv.name],
            "the deleted volume's LV is the one {fs} spare"
        );
        assert!(
            !list(&mut d).await.contains_key(&first.volume_id),
            "ListVolumes does not list a spare"
        );

        // The next volume of that size and filesystem is made from it.
        let name = format!("spare-{fs}-second");
        let second = create(&mut d, &name, &cap, size).await;
        assert_eq!(second.volume_id, volume_id_for(&name));
        let lv = lv_holding(DEFAULT_VG, &name);
        assert_eq!(lv.name, first_lv.name, "{name} is made from the spare");
        assert!(spares(DEFAULT_VG, fs).is_empty());
        let mark = d.log().len();
        let (s1, t1) = stage_publish(&mut d, &second.volume_id, &name, &cap).await;
        assert!(
            !d.log()[mark..].contains("created filesystem"),
            "NodeStage of a volume made from a spare runs no mkfs"
        );
        let entries: Vec<String> = std::fs::read_dir(&t1)
            .expect("read the volume's root")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !entries.iter().any(|e| e == "mark.bin"),
            "{name} shows the deleted volume's files: {entries:?}"
        );
        // The spare's filesystem is the one NodeStage's mkfs makes on such a volume.
        assert_eq!(
            fs_bytes(&t1),
            first_fs_bytes,
            "{name}'s {fs} filesystem against the one NodeStage made on {first_name}"
        );
        write_synced(&Path::new(&t1).join("own.bin"), b"second").expect("write");
        let second_uuid = uuid(&dev(DEFAULT_VG, &lv.name));
        assert_ne!(
            second_uuid, first_uuid,
            "a volume made from a spare has its own UUID"
        );
        assert_eq!(second_uuid.len(), 36, "{second_uuid:?}");
        unpublish_unstage(&mut d, &second.volume_id, &s1, &t1).await;
        fsck_clean(fs, &dev(DEFAULT_VG, &lv.name));
        // The whole device read back, on the ext4 volume only: reading 320 MiB more under
        // emulation costs about a minute, and the spare was discarded the same way.
        if fs == "ext4" {
            assert!(
                !device_holds(&dev(DEFAULT_VG, &lv.name), MARK),
                "the deleted volume's mark is on {name}'s device"
            );
        }

        // A late DeleteVolume of the old ID finds nothing and leaves the new volume be.
        delete(&mut d, &first.volume_id).await;
        assert_eq!(lv_holding(DEFAULT_VG, &name).name, lv.name);
        assert!(list(&mut d).await.contains_key(&second.volume_id));
        let (s2, t2) = stage_publish(&mut d, &second.volume_id, &name, &cap).await;
        assert_eq!(
            std::fs::read(Path::new(&t2).join("own.bin")).expect("read back"),
            b"second"
        );
        unpublish_unstage(&mut d, &second.volume_id, &s2, &t2).await;
        delete(&mut d, &second.volume_id).await;
        kept += 1;
        prepared(&d, kept).await;
    }

    // Two spares now (ext4 and xfs, the class's count). After a restart they are prepared
    // again before a create may take one.
    assert_eq!(spares(DEFAULT_VG, "").len(), 2);
    d.restart().await;
    // The log goes on in the same file.
    prepared(&d, kept + 2).await;
    let cap = mount_cap("ext4");
    let v = create(&mut d, "spare-after-restart", &cap, 128 * MIB).await;
    let lv = lv_holding(DEFAULT_VG, "spare-after-restart");
    let (s, t) = stage_publish(&mut d, &v.volume_id, "spare-after-restart", &cap).await;
    unpublish_unstage(&mut d, &v.volume_id, &s, &t).await;
    fsck_clean("ext4", &dev(DEFAULT_VG, &lv.name));
    assert_eq!(spares(DEFAULT_VG, "xfs").len(), 1, "the xfs spare is left");
    assert!(spares(DEFAULT_VG, "ext4").is_empty());
    delete(&mut d, &v.volume_id).await;
    d.assert_no_leaks("spares").await;
}
