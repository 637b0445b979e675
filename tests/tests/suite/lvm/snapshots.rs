//! Snapshots and clones on dm-thin: a clone of a snapshot reads the snapshot-time data
//! (also after its source is deleted), a clone of a volume can be larger (its filesystem
//! grows at NodeStage), and a deleted snapshot's blocks are not readable by the next
//! volume of the pool.

use super::stale_data::{OLD_BYTE, ZeroingOff, fill_old, probe_stale};
use super::*;

const FILE: &str = "data.bin";

async fn snapshot(d: &mut Driver, name: &str, source: &str) -> csi::Snapshot {
    let s = ok(
        d.controller
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.to_owned(),
                name: name.to_owned(),
                ..Default::default()
            })
            .await,
        &format!("CreateSnapshot {name:?} of {source}"),
    )
    .snapshot
    .expect("CreateSnapshot returned no snapshot");
    assert!(s.ready_to_use, "{s:?}");
    assert_eq!(s.source_volume_id, source);
    s
}

async fn delete_snapshot(d: &mut Driver, id: &str) {
    ok(
        d.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.to_owned(),
                ..Default::default()
            })
            .await,
        &format!("DeleteSnapshot {id}"),
    );
}

async fn list_snapshots(d: &mut Driver) -> Vec<csi::Snapshot> {
    ok(
        d.controller
            .list_snapshots(csi::ListSnapshotsRequest::default())
            .await,
        "ListSnapshots",
    )
    .entries
    .into_iter()
    .filter_map(|e| e.snapshot)
    .collect()
}

/// CreateVolume `name` from a snapshot or a volume.
async fn clone_from(
    d: &mut Driver,
    name: &str,
    cap: &csi::VolumeCapability,
    size: i64,
    source: csi::volume_content_source::Type,
) -> csi::Volume {
    let mut req = create_request(name, vec![cap.clone()], size, 0);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(source.clone()),
    });
    let v = ok(
        d.controller.create_volume(req).await,
        &format!("CreateVolume {name:?} from {source:?}"),
    )
    .volume
    .expect("CreateVolume returned no volume");
    assert_eq!(
        v.content_source.as_ref().and_then(|s| s.r#type.clone()),
        Some(source),
        "the response names the content source"
    );
    v
}

fn from_snapshot(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
        snapshot_id: id.to_owned(),
    })
}

fn from_volume(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
        volume_id: id.to_owned(),
    })
}

fn file_sha(dir: &str) -> String {
    let data = std::fs::read(Path::new(dir).join(FILE)).expect("read the data file");
    sha256(&data)
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_clone_of_a_snapshot_reads_snapshot_time_data_also_after_the_source_is_gone() {
    require_lvm!();
    let mut d = Driver::start().await;
    // xfs: the clone carries its source's filesystem UUID and is mounted beside it.
    let cap = mount_cap("xfs");
    let src = create(&mut d, "snap-src", &cap, 320 * MIB).await;
    let (src_staging, src_target) = stage_publish(&mut d, &src.volume_id, "snap-src", &cap).await;
    let then = pattern(1, 8 << 20);
    write_synced(&Path::new(&src_target).join(FILE), &then).expect("write the first data");

    let s = snapshot(&mut d, "snap-1", &src.volume_id).await;
    assert_eq!(s.size_bytes, src.capacity_bytes);
    // Idempotent by name; the same name of another source is ALREADY_EXISTS.
    assert_eq!(
        snapshot(&mut d, "snap-1", &src.volume_id).await.snapshot_id,
        s.snapshot_id
    );

    // Write more after the snapshot: the clone must not see it.
    let later = pattern(2, 8 << 20);
    write_synced(&Path::new(&src_target).join(FILE), &later).expect("write the later data");
    write_synced(&Path::new(&src_target).join("later.bin"), &later).expect("write a new file");

    let c1 = clone_from(
        &mut d,
        "snap-clone-1",
        &cap,
        320 * MIB,
        from_snapshot(&s.snapshot_id),
    )
    .await;
    let (c1_staging, c1_target) = stage_publish(&mut d, &c1.volume_id, "snap-clone-1", &cap).await;
    assert_eq!(
        file_sha(&c1_target),
        sha256(&then),
        "the clone reads the snapshot-time data"
    );
    assert!(
        !Path::new(&c1_target).join("later.bin").exists(),
        "a file written after the snapshot is in the clone"
    );
    assert_eq!(
        file_sha(&src_target),
        sha256(&later),
        "the source keeps its own data"
    );

    // Delete the source: the snapshot and the clone survive it.
    unpublish_unstage(&mut d, &src.volume_id, &src_staging, &src_target).await;
    delete(&mut d, &src.volume_id).await;
    let listed = list_snapshots(&mut d).await;
    assert!(
        listed
            .iter()
            .any(|x| x.snapshot_id == s.snapshot_id && x.source_volume_id == src.volume_id),
        "the snapshot is listed after its source was deleted: {listed:?}"
    );
    // Read the clone from its device again, not from the page cache: restage it.
    unpublish_unstage(&mut d, &c1.volume_id, &c1_staging, &c1_target).await;
    let (c1_staging, c1_target) = stage_publish(&mut d, &c1.volume_id, "snap-clone-1", &cap).await;
    assert_eq!(
        file_sha(&c1_target),
        sha256(&then),
        "the clone after its source was deleted"
    );
    // And a new clone of the snapshot of the deleted volume.
    let c2 = clone_from(
        &mut d,
        "snap-clone-2",
        &cap,
        320 * MIB,
        from_snapshot(&s.snapshot_id),
    )
    .await;
    let (c2_staging, c2_target) = stage_publish(&mut d, &c2.volume_id, "snap-clone-2", &cap).await;
    assert_eq!(
        file_sha(&c2_target),
        sha256(&then),
        "a clone made after the source was deleted"
    );

    for (v, staging, target) in [
        (&c1, &c1_staging, &c1_target),
        (&c2, &c2_staging, &c2_target),
    ] {
        unpublish_unstage(&mut d, &v.volume_id, staging, target).await;
        delete(&mut d, &v.volume_id).await;
    }
    delete_snapshot(&mut d, &s.snapshot_id).await;
    delete_snapshot(&mut d, &s.snapshot_id).await;
    assert!(list_snapshots(&mut d).await.is_empty(), "snapshots left");
    assert!(lvm_snapshot_lvs(d.vgs()).is_empty(), "snapshot LVs left");
    d.assert_no_leaks("after the snapshot clone test").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_clone_of_a_volume_into_a_bigger_one() {
    require_lvm!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let src = create(&mut d, "grow-src", &cap, 64 * MIB).await;
    let (src_staging, src_target) = stage_publish(&mut d, &src.volume_id, "grow-src", &cap).await;
    let data = pattern(3, 4 << 20);
    write_synced(&Path::new(&src_target).join(FILE), &data).expect("write the data");
    let src_total = match stats(&mut d, &src.volume_id, &src_target)
        .await
        .usage
        .first()
    {
        Some(u) => u.total,
        None => panic!("no usage for the source"),
    };

    let big = clone_from(
        &mut d,
        "grow-clone",
        &cap,
        256 * MIB,
        from_volume(&src.volume_id),
    )
    .await;
    assert!(big.capacity_bytes >= 256 * MIB, "{big:?}");
    let (staging, target) = stage_publish(&mut d, &big.volume_id, "grow-clone", &cap).await;
    assert_eq!(
        file_sha(&target),
        sha256(&data),
        "the clone reads its source's data"
    );
    let total = match stats(&mut d, &big.volume_id, &target).await.usage.first() {
        Some(u) => u.total,
        None => panic!("no usage for the clone"),
    };
    note(format!(
        "source filesystem {src_total} bytes, clone's {total} bytes"
    ));
    assert!(
        total > 3 * src_total,
        "the clone's filesystem did not grow at NodeStage: {total} bytes, its source's {src_total}"
    );
    // The space is usable: write more than the source could hold.
    let more = pattern(4, 80 << 20);
    write_synced(&Path::new(&target).join("more.bin"), &more)
        .expect("write beyond the source's size");

    unpublish_unstage(&mut d, &big.volume_id, &staging, &target).await;
    unpublish_unstage(&mut d, &src.volume_id, &src_staging, &src_target).await;
    delete(&mut d, &big.volume_id).await;
    delete(&mut d, &src.volume_id).await;
    d.assert_no_leaks("after the bigger clone test").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_deleted_snapshots_blocks_are_not_readable_by_a_new_volume() {
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
    let extent = usize::try_from(LVM_EXTENT).expect("fits");
    let pool_bytes = usize::try_from(pool.size).expect("fits");
    // The old volume and its snapshot hold distinct blocks: together most of the pool.
    let half = (pool_bytes * 2 / 5) / extent * extent;
    let params = class_params(SMALL_CLASS);
    let cap = block_cap();
    note(format!(
        "pool {pool_bytes} bytes, chunk {chunk}, attr {}; old volume {half} bytes",
        pool.attr
    ));
    // Zeroing off: only the driver's discard keeps the snapshot's bytes from the next
    // volume.
    let zeroing = pool.attr.as_bytes().get(7) == Some(&b'z');
    let _zero = ZeroingOff::new(&format!("{SMALL_VG}/pool"), zeroing);
    let old = create_with(
        &mut d,
        "snapdel-old",
        &cap,
        i64::try_from(half).expect("fits"),
        &params,
    )
    .await;
    let (staging, target) = stage_publish(&mut d, &old.volume_id, "snapdel-old", &cap).await;
    fill_old(Path::new(&target), half).expect("fill the old volume");
    let s = snapshot(&mut d, "snapdel-snap", &old.volume_id).await;
    // Overwrite the volume: its chunks are now its own, the old bytes only the snapshot's.
    {
        let f = open_direct(Path::new(&target), true).expect("open the old volume");
        let mut buf = AlignedBuf::new(1 << 20);
        buf.as_mut_slice().fill(0x11);
        for off in (0..half).step_by(1 << 20) {
            std::os::unix::fs::FileExt::write_all_at(&f, buf.as_slice(), off as u64)
                .expect("overwrite the old volume");
        }
        f.sync_all().expect("fsync the old volume");
    }
    unpublish_unstage(&mut d, &old.volume_id, &staging, &target).await;
    delete(&mut d, &old.volume_id).await;
    delete_snapshot(&mut d, &s.snapshot_id).await;
    assert!(
        lvm_snapshot_lvs(&[SMALL_VG.to_owned()]).is_empty(),
        "the snapshot LV is left"
    );

    // Nearly the whole pool: the new volume's chunks can only come from the freed ones.
    let size = (pool_bytes - 2 * extent) / extent * extent;
    let new = create_with(
        &mut d,
        "snapdel-new",
        &cap,
        i64::try_from(size).expect("fits"),
        &params,
    )
    .await;
    let (staging, target) = stage_publish(&mut d, &new.volume_id, "snapdel-new", &cap).await;
    let got = probe_stale(Path::new(&target), size, chunk).expect("probe the new volume");
    note(format!("after DeleteSnapshot, a new volume: {got:?}"));
    unpublish_unstage(&mut d, &new.volume_id, &staging, &target).await;
    delete(&mut d, &new.volume_id).await;
    d.assert_no_leaks("after the deleted-snapshot test").await;
    assert!(
        got.unwritten_nonzero.is_none() && got.stale == 0,
        "the new volume reads bytes it never wrote in {} of {} chunks ({} of them the snapshot's 0x{OLD_BYTE:02x}), first at {:?}",
        got.stale,
        got.chunks,
        got.old,
        got.first.or(got.unwritten_nonzero)
    );
}
