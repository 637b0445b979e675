//! Snapshots and clones: the argvs, idempotency, what is refused, and what the index and
//! listings make of snapshot LVs.

use super::*;
use crate::backend::CreatedSnapshot;
use crate::volume::{ContentSource, SnapshotSpec, snapshot_id_for};

fn snap_spec(name: &str, source: &str) -> SnapshotSpec {
    SnapshotSpec {
        id: snapshot_id_for(name),
        name: name.to_owned(),
        source_volume_id: volume_id_for(source),
        created_ns: 1_700_000_000_000_000_005,
    }
}

fn snap_row(s: &SnapshotSpec, size: u64) -> serde_json::Value {
    let t = tags::encode_snapshot(s, size, Some(FsType::Ext4)).unwrap();
    thin(&s.id, size, &t, false)
}

#[tokio::test]
async fn a_snapshot_is_one_tagged_lvcreate_and_a_repeat_finds_it() {
    let f = Fixture::new();
    let src = tagged("src", 8 << 20);
    let b = f.adopted(std::slice::from_ref(&src)).await;
    let s = snap_spec("snap-1", "src");
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(10.0, 5.0), src.clone()]);
    f.answer_lvs(&[pool(10.0, 5.0), src.clone()]);
    let made = match b.create_snapshot(&s).await.unwrap() {
        CreatedSnapshot::New(x) => x,
        CreatedSnapshot::Existing(x) => panic!("{} existed", x.id),
    };
    assert_eq!(made.size_bytes, 8 << 20);
    assert_eq!(made.source_volume_id, volume_id_for("src"));
    assert_eq!(made.fs_type, Some(FsType::Ext4));
    assert_eq!(
        f.effects(mark),
        vec![format!(
            "lvcreate --snapshot --setactivationskip y --activate n -n {} \
             --addtag iolane.dev/v=1 --addtag iolane.dev/snap=snap-1 \
             --addtag iolane.dev/source={} --addtag iolane.dev/created=1700000000000000005 \
             --addtag iolane.dev/size=8388608 --addtag iolane.dev/fs=ext4 iolane/{}",
            s.id,
            volume_id_for("src"),
            volume_id_for("src")
        )]
    );
    // Admission counts it from now on, like a volume.
    assert!(b.index().known(&s.id));
    // A repeat reads it back from its tags; nothing is created.
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(10.0, 5.0), src.clone(), snap_row(&s, 8 << 20)]);
    assert_eq!(
        b.create_snapshot(&s).await.unwrap(),
        CreatedSnapshot::Existing(made.clone())
    );
    assert!(f.effects(mark).is_empty());
    // Listed as a snapshot, never as a volume.
    f.answer_lvs(&[pool(10.0, 5.0), src.clone(), snap_row(&s, 8 << 20)]);
    assert_eq!(b.list_snapshots().await.unwrap(), vec![made.clone()]);
    f.answer_lvs(&[pool(10.0, 5.0), src, snap_row(&s, 8 << 20)]);
    let vols = b.list().await.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].id, volume_id_for("src"));
    assert!(b.index().snapshots.contains_key(&s.id));
}

#[tokio::test]
async fn a_snapshot_of_a_missing_volume_is_not_found_and_runs_nothing() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(0.0, 0.0)]);
    let err = b
        .create_snapshot(&snap_spec("s", "nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VolumeNotFound(_)), "{err}");
    assert!(f.effects(mark).is_empty());
}

#[tokio::test]
async fn deleting_a_snapshot_activates_discards_and_removes_it() {
    let f = Fixture::new();
    let s = snap_spec("s", "src");
    let b = f.adopted(&[snap_row(&s, 8 << 20)]).await;
    assert!(b.index().known(&s.id), "start-up indexes snapshots");
    let dev = f.activate("iolane", &s.id);
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(0.0, 0.0), snap_row(&s, 8 << 20)]);
    assert!(b.delete_snapshot(&s.id).await.unwrap());
    assert_eq!(
        f.effects(mark),
        vec![
            format!("lvchange -ay -K iolane/{}", s.id),
            format!("blkdiscard -- {}", dev.display()),
            format!("lvremove -y iolane/{}", s.id),
        ]
    );
    assert!(!b.index().known(&s.id));
    // Gone, or never one of ours: nothing to do.
    f.answer_lvs(&[pool(0.0, 0.0)]);
    assert!(!b.delete_snapshot(&s.id).await.unwrap());
    let mark = f.runner.calls().len();
    assert!(!b.delete_snapshot(&volume_id_for("v")).await.unwrap());
    assert_eq!(f.runner.calls().len(), mark, "a volume ID is no snapshot");
}

#[tokio::test]
async fn a_bigger_clone_of_a_snapshot_is_an_active_thin_snapshot_then_lvextend() {
    let f = Fixture::new();
    let s = snap_spec("s", "src");
    let b = f.adopted(&[snap_row(&s, 8 << 20)]).await;
    let mut c = spec("clone", 16 << 20);
    c.source = Some(ContentSource::Snapshot(s.id.clone()));
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(0.0, 0.0), snap_row(&s, 8 << 20)]);
    f.answer_lvs(&[pool(0.0, 0.0), snap_row(&s, 8 << 20)]);
    let v = new(b.create(&c).await.unwrap());
    assert_eq!(v.capacity_bytes, 16 << 20);
    assert_eq!(v.source, c.source);
    assert_eq!(
        f.effects(mark),
        vec![
            format!(
                "lvcreate --snapshot --setactivationskip n --activate y -n {} \
                 --addtag iolane.dev/v=1 --addtag iolane.dev/name=clone \
                 --addtag iolane.dev/required=16777216 --addtag iolane.dev/fs=ext4 \
                 --addtag iolane.dev/src=snapshot/{} iolane/{}",
                c.id, s.id, s.id
            ),
            format!("lvextend -L 16777216b iolane/{}", c.id),
        ]
    );
    // A clone smaller than its source is refused, and a missing source is NOT_FOUND.
    let mut small = spec("small", 4 << 20);
    small.source = c.source.clone();
    f.answer_lvs(&[pool(0.0, 0.0), snap_row(&s, 8 << 20)]);
    let err = b.create(&small).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err}");
    let mut orphan = spec("orphan", 8 << 20);
    orphan.source = Some(ContentSource::Snapshot(snapshot_id_for("gone")));
    f.answer_lvs(&[pool(0.0, 0.0), snap_row(&s, 8 << 20)]);
    let err = b.create(&orphan).await.unwrap_err();
    assert!(matches!(err, Error::SnapshotNotFound(_)), "{err}");
    let mut from_volume = spec("from-volume", 8 << 20);
    from_volume.source = Some(ContentSource::Volume(s.id.clone()));
    f.answer_lvs(&[pool(0.0, 0.0), snap_row(&s, 8 << 20)]);
    let err = b.create(&from_volume).await.unwrap_err();
    assert!(
        matches!(err, Error::VolumeNotFound(_)),
        "a snapshot is no volume: {err}"
    );
}
