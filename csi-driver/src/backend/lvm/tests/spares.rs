//! Spares: a deleted filesystem volume's LV kept, prepared and taken by the next volume of
//! its size and filesystem; the volume ID never moves with the LV.

use super::*;
use crate::backend::lvm::spares::State;

const SIZE: u64 = 12 << 20;

/// A class that keeps up to `n` spares.
async fn with_spares(f: &Fixture, n: u32, extra: &[serde_json::Value]) -> LvmBackend {
    let mut class = f.class(&["nvme0n1"]);
    class.spares = n;
    f.adopted_class(class, extra).await
}

/// Lets the spawned preparation tasks run until no spare is being prepared or removed.
async fn settle(b: &LvmBackend) {
    for _ in 0..1000 {
        let busy = b
            .index()
            .spares
            .values()
            .any(|s| matches!(s.state, State::Preparing | State::Removing));
        if !busy {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("spares still busy: {:?}", b.index().spares);
}

fn spare_row(lv: &str, size: u64) -> serde_json::Value {
    thin(
        lv,
        size,
        &[
            "iolane.dev/v=1".to_owned(),
            "iolane.dev/spare=ext4".to_owned(),
        ],
        true,
    )
}

#[tokio::test]
async fn a_deleted_volume_becomes_a_spare_and_the_next_volume_of_its_size_takes_it() {
    let f = Fixture::new();
    let b = with_spares(&f, 2, &[]).await;
    let a = spec("a", SIZE);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    new(b.create(&a).await.unwrap());
    let node = f.activate("iolane", &a.id);
    let dev = node.display().to_string();

    // Delete: one lvchange swaps the volume's tags for the spare tag; the preparation
    // (discard, mkfs) runs after the call.
    let mark = f.runner.calls().len();
    assert!(b.delete(&a.id).await.unwrap());
    assert_eq!(
        f.effects(mark),
        vec![format!(
            "lvchange --deltag iolane.dev/name=a --deltag iolane.dev/required={SIZE} \
                 --deltag iolane.dev/fs=ext4 --addtag iolane.dev/spare=ext4 iolane/{}",
            a.id
        )]
    );
    settle(&b).await;
    let mark = f.runner.calls().len() - 2;
    assert_eq!(
        f.effects(mark),
        vec![
            format!("blkdiscard -- {dev}"),
            format!(
                "mkfs.ext4 -q -m 0 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 -- {dev}"
            ),
        ]
    );
    // The old ID is gone, without a report, though its LV is there.
    let mark = f.runner.calls().len();
    assert_eq!(b.get(&a.id).await.unwrap(), None);
    assert!(!b.delete(&a.id).await.unwrap());
    assert_eq!(b.attached(&a.id).await.unwrap(), None);
    assert_eq!(f.runner.calls().len(), mark);

    // The next volume of that size and filesystem takes the spare: one lvchange, no
    // lvcreate; its ID is its own, its device the spare's.
    let c = spec("c", SIZE);
    let v = new(b.create(&c).await.unwrap());
    assert_eq!(v.id, volume_id_for("c"));
    assert_eq!(v.capacity_bytes, SIZE);
    assert_eq!(
        f.effects(mark),
        vec![format!(
            "lvchange --deltag iolane.dev/spare=ext4 --addtag iolane.dev/name=c \
             --addtag iolane.dev/required={SIZE} --addtag iolane.dev/fs=ext4 iolane/{}",
            a.id
        )]
    );
    assert_eq!(b.get(&c.id).await.unwrap(), Some(v.clone()));
    assert_eq!(b.attached(&c.id).await.unwrap(), Some(node.clone()));
    // A late retry of the old volume's delete finds nothing, and touches nothing.
    let mark = f.runner.calls().len();
    assert!(!b.delete(&a.id).await.unwrap());
    assert_eq!(f.runner.calls().len(), mark);

    // No spare left: another volume is a new LV named by its ID.
    let d = spec("d", SIZE);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    new(b.create(&d).await.unwrap());
    assert!(
        f.effects(mark)[0].contains(&format!(
            "lvcreate --type thin -V {SIZE}b --thinpool pool -n {} ",
            d.id
        )),
        "{:?}",
        f.effects(mark)
    );
    // A volume of another size or filesystem never takes a spare.
    assert!(b.delete(&c.id).await.unwrap());
    settle(&b).await;
    let mut xfs = spec("x", SIZE);
    xfs.fs_type = Some(FsType::Xfs);
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(0.0, 0.0)]);
    new(b.create(&xfs).await.unwrap());
    f.answer_lvs(&[pool(0.0, 0.0)]);
    new(b.create(&spec("big", 2 * SIZE)).await.unwrap());
    let made = f.effects(mark);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.iter().all(|c| c.starts_with("lvcreate ")), "{made:?}");

    // A new volume under a used name, while the LV of that name is a spare that is not
    // prepared yet, gets an LV of a fresh name.
    b.index().spares.get_mut(&a.id).unwrap().state = State::Dirty;
    let again = spec("a", SIZE);
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(0.0, 0.0)]);
    let v = new(b.create(&again).await.unwrap());
    assert_eq!(v.id, a.id);
    let made = f.effects(mark);
    let lv = made[0]
        .split(" -n ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert!(
        lv.starts_with("iol-") && lv.len() == a.id.len() && lv != a.id,
        "{made:?}"
    );
}

#[tokio::test]
async fn a_class_without_spares_removes_what_it_deletes() {
    let f = Fixture::new();
    let id = volume_id_for("v");
    let node = f.activate("iolane", &id);
    let b = with_spares(&f, 1, &[tagged("v", SIZE), spare_row("iol-00", SIZE)]).await;
    f.activate("iolane", "iol-00");
    settle(&b).await;
    // The one spare fills the class: the delete removes the volume as before.
    let mark = f.runner.calls().len();
    assert!(b.delete(&id).await.unwrap());
    assert_eq!(
        f.effects(mark),
        vec![
            format!("blkdiscard -- {}", node.display()),
            format!("lvremove -y iolane/{id}"),
        ]
    );
}

#[tokio::test]
async fn at_start_up_spares_are_prepared_again_and_extra_or_unreadable_ones_removed() {
    let f = Fixture::new();
    let moved = "iol-0123";
    let mut odd = spare_row("iol-0002", SIZE);
    odd["lv_tags"] = json!("iolane.dev/v=1,iolane.dev/spare=zfs");
    // A volume made from a spare: its LV keeps the spare's name.
    let c = spec("c", SIZE);
    let held = thin(moved, SIZE, &tags::encode(&c).unwrap(), true);
    for lv in [moved, "iol-0000", "iol-0001", "iol-0002"] {
        f.activate("iolane", lv);
    }
    let b = with_spares(
        &f,
        1,
        &[
            held,
            spare_row("iol-0000", SIZE),
            spare_row("iol-0001", SIZE),
            odd,
        ],
    )
    .await;
    settle(&b).await;
    let mut effects = f.effects(0);
    effects.retain(|c| c.starts_with("mkfs") || c.starts_with("lvremove"));
    effects.sort();
    assert_eq!(
        effects,
        vec![
            "lvremove -y iolane/iol-0001".to_owned(),
            "lvremove -y iolane/iol-0002".to_owned(),
            format!(
                "mkfs.ext4 -q -m 0 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 -- {}",
                f.dir.path().join("dev/iolane/iol-0000").display()
            ),
        ]
    );
    // The volume is found by the hash of its name, on the LV that holds it.
    let mark = f.runner.calls().len();
    let v = b.get(&c.id).await.unwrap().unwrap();
    assert_eq!((v.id.as_str(), v.name.as_str()), (c.id.as_str(), "c"));
    assert_eq!(
        b.attached(&c.id).await.unwrap(),
        Some(f.dir.path().join("dev/iolane").join(moved))
    );
    assert_eq!(f.runner.calls().len(), mark);
    // ListVolumes lists it, and no spare.
    f.answer_lvs(&[
        pool(0.0, 0.0),
        thin(moved, SIZE, &tags::encode(&c).unwrap(), true),
        spare_row("iol-0000", SIZE),
    ]);
    let listed: Vec<String> = b.list().await.unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(listed, vec![c.id.clone()]);
    assert_eq!(b.index().spares["iol-0000"].state, State::Clean);
}

#[tokio::test]
async fn a_create_that_does_not_fit_removes_spares_until_it_does() {
    let f = Fixture::new();
    // 1 GiB of pool data at the default 4x: 4 GiB provisionable, 3 GiB of it spares.
    let spare = |lv: &str| spare_row(lv, 3 << 29);
    f.activate("iolane", "iol-0000");
    f.activate("iolane", "iol-0001");
    let b = with_spares(&f, 2, &[spare("iol-0000"), spare("iol-0001")]).await;
    settle(&b).await;
    let mark = f.runner.calls().len();
    // Admission reads one report (no pool status in-process here): the spares' 3 GiB
    // leave 1 GiB, so the first is removed; the next report admits the volume.
    f.answer_lvs(&[pool(0.0, 0.0), spare("iol-0000"), spare("iol-0001")]);
    f.answer_lvs(&[pool(0.0, 0.0), spare("iol-0001")]);
    let s = spec("v", 2 << 30);
    new(b.create(&s).await.unwrap());
    let effects = f.effects(mark);
    assert_eq!(effects[1], "lvremove -y iolane/iol-0000", "{effects:?}");
    assert!(effects[2].starts_with("lvcreate "), "{effects:?}");
    assert_eq!(effects.len(), 3, "{effects:?}");
    assert!(b.index().spares.contains_key("iol-0001"));
    // GetCapacity counts a spare's bytes as free.
    f.answer_lvs(&[pool(0.0, 0.0), spare("iol-0001"), tagged("v", 2 << 30)]);
    let cap = b.capacity(&s.parameters).await.unwrap();
    assert_eq!(cap.available, 2 << 30, "{cap:?}");
}

#[tokio::test]
async fn a_create_waits_for_a_spare_of_its_kind_being_prepared_rather_than_make_an_lv() {
    let f = Fixture::new();
    let b = with_spares(&f, 1, &[]).await;
    let a = spec("a", SIZE);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    new(b.create(&a).await.unwrap());
    f.activate("iolane", &a.id);
    assert!(b.delete(&a.id).await.unwrap());
    // The preparation has not run yet (this runtime has one thread and no await since).
    assert_eq!(b.index().spares[&a.id].state, State::Preparing);
    let mark = f.runner.calls().len();
    let c = spec("c", SIZE);
    let v = new(b.create(&c).await.unwrap());
    assert_eq!(v.id, c.id);
    let effects = f.effects(mark);
    assert!(effects[0].starts_with("blkdiscard ") && effects[1].starts_with("mkfs.ext4 "));
    assert!(
        effects[2].starts_with("lvchange --deltag iolane.dev/spare=ext4 "),
        "{effects:?}"
    );
    assert_eq!(effects.len(), 3, "{effects:?}");
}
