//! The volume index: answers without reports, corrections when /dev disagrees, ListVolumes
//! rebuilding it, and a create finding an LV made meanwhile.

use super::*;

#[tokio::test]
async fn node_calls_answer_from_the_index_without_reports() {
    let f = Fixture::new();
    let id = volume_id_for("warm");
    let node = f.activate("iolane", &id);
    let b = f.adopted(&[tagged("warm", 8 << 20)]).await;
    let mark = f.runner.calls().len();
    let v = b.get(&id).await.unwrap().unwrap();
    assert_eq!((v.name.as_str(), v.capacity_bytes), ("warm", 8 << 20));
    assert_eq!(b.attach(&id).await.unwrap(), node);
    assert_eq!(b.attached(&id).await.unwrap(), Some(node.clone()));
    assert_eq!(b.devices(&id).await.unwrap(), vec![node]);
    // An ID that is neither indexed nor has a device node does not exist.
    assert_eq!(b.get(&volume_id_for("cold")).await.unwrap(), None);
    assert_eq!(f.runner.calls().len(), mark, "{:?}", f.runner.calls());
}

#[tokio::test]
async fn the_index_asks_lvm_when_the_device_nodes_disagree() {
    let f = Fixture::new();
    let gone = volume_id_for("gone");
    let dev = f.activate("iolane", &gone);
    let b = f.adopted(&[tagged("gone", 8 << 20)]).await;
    // Removed behind iolane's back: the node went away, one report confirms it.
    std::fs::remove_file(&dev).unwrap();
    let mark = f.runner.calls().len();
    f.answer_lvs(&[pool(0.0, 0.0)]);
    assert_eq!(b.get(&gone).await.unwrap(), None);
    assert_eq!(f.runner.calls().len(), mark + 1);
    // The entry is gone: asking again costs nothing.
    assert_eq!(b.get(&gone).await.unwrap(), None);
    assert_eq!(f.runner.calls().len(), mark + 1);
    // An LV made after start-up (the lvcreate of a killed iolane finishing late): its
    // node appears, one report indexes it.
    let late = spec("late", 8 << 20);
    f.activate("iolane", &late.id);
    f.answer_lvs(&[pool(0.0, 0.0), tagged("late", 8 << 20)]);
    assert_eq!(b.get(&late.id).await.unwrap().unwrap().name, "late");
    assert_eq!(b.get(&late.id).await.unwrap().unwrap().name, "late");
    assert_eq!(f.runner.calls().len(), mark + 2);
}

#[tokio::test]
async fn list_is_authoritative_and_rebuilds_the_index() {
    let f = Fixture::new();
    let a = volume_id_for("a");
    let a_dev = f.activate("iolane", &a);
    let fresh = volume_id_for("fresh");
    f.activate("iolane", &fresh);
    let b = f
        .adopted(&[tagged("a", 8 << 20), tagged("fresh", 8 << 20)])
        .await;
    // "a" was removed behind iolane's back (no LV, no node); "late" appeared; "fresh" is
    // not in the report but its node is there (a create that finished after the report).
    std::fs::remove_file(&a_dev).unwrap();
    let late = volume_id_for("late");
    f.answer_lvs(&[pool(0.0, 0.0), tagged("late", 4 << 20)]);
    let names: Vec<String> = b
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["late"]);
    let index = b.index();
    assert!(!index.volumes.contains_key(&a));
    assert!(index.volumes.contains_key(&fresh));
    assert_eq!(index.volumes[&late].volume.capacity_bytes, 4 << 20);
}

#[tokio::test]
async fn a_create_that_finds_the_lv_made_meanwhile_returns_it() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let s = spec("raced", 8 << 20);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.runner.answer(
        "lvcreate ",
        Output {
            status: Some(5),
            stdout: String::new(),
            stderr: format!(
                "  Logical Volume \"{}\" already exists in volume group \"iolane\"\n",
                s.id
            ),
        },
    );
    f.answer_lvs(&[pool(0.0, 0.0), tagged("raced", 8 << 20)]);
    let got = b.create(&s).await.unwrap();
    assert!(
        matches!(&got, Created::Existing(v) if v.name == "raced"),
        "{got:?}"
    );
    // A foreign LV of that name is refused, naming it.
    let s = spec("foreign", 8 << 20);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.runner.answer(
        "lvcreate ",
        Output {
            status: Some(5),
            stdout: String::new(),
            stderr: "  already exists\n".to_owned(),
        },
    );
    f.answer_lvs(&[pool(0.0, 0.0), thin(&s.id, 8 << 20, &[], true)]);
    let err = b.create(&s).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert!(err.to_string().contains("without iolane tags"), "{err}");
}
