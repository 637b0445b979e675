//! The volume operations: create, delete, expand, attach, list, and a volume's condition.

use super::*;

#[tokio::test]
async fn create_is_one_lvcreate_with_every_tag() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let mark = f.runner.calls().len();
    let mut s = spec("pvc-1", 12 << 20);
    s.parameters.pvc_name = Some("data 0".to_owned());
    f.answer_lvs(&[pool(10.0, 5.0)]);
    let v = new(b.create(&s).await.unwrap());
    assert_eq!(v.capacity_bytes, 12 << 20);
    assert_eq!(v.parameters, s.parameters);
    assert_eq!(
        f.effects(mark),
        vec![format!(
            "lvcreate --type thin -V 12582912b --thinpool pool -n {} \
             --addtag iolane.dev/v=1 --addtag iolane.dev/name=pvc-1 \
             --addtag iolane.dev/required=12582912 --addtag iolane.dev/fs=ext4 \
             --addtag iolane.dev/p/csi.storage.k8s.io/pvc/name=data:200 iolane",
            s.id
        )]
    );
    // The index answers for it without a report while its device node is there...
    f.activate("iolane", &s.id);
    let mark = f.runner.calls().len();
    assert_eq!(b.get(&s.id).await.unwrap(), Some(v.clone()));
    assert_eq!(f.runner.calls().len(), mark);
    // ...and a repeat returns it as it is, without admission or lvcreate.
    assert_eq!(b.create(&s).await.unwrap(), Created::Existing(v.clone()));
    assert_eq!(f.runner.calls().len(), mark);
    // What the tags say reads back as the same volume.
    let row = thin(&s.id, 12 << 20, &tags::encode(&s).unwrap(), true);
    f.answer_lvs(&[pool(10.0, 5.0), row]);
    assert_eq!(b.list().await.unwrap(), vec![v]);
}

#[tokio::test]
async fn unknown_device_class_is_invalid_argument() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let mark = f.runner.calls().len();
    let mut s = spec("v", EXTENT);
    s.parameters.device_class = Some("fast".to_owned());
    for err in [
        b.create(&s).await.unwrap_err(),
        b.capacity(&s.parameters).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(r#"parameters["iolane.dev/device-class"]"#) && msg.contains("default"),
            "{msg}"
        );
    }
    assert_eq!(f.runner.calls().len(), mark);
    // Naming the class that exists is the same as naming none.
    s.parameters.device_class = Some("default".to_owned());
    f.answer_lvs(&[pool(0.0, 0.0)]);
    b.create(&s).await.unwrap();
}

#[tokio::test]
async fn delete_discards_before_removing_and_a_missing_volume_is_fine() {
    let f = Fixture::new();
    let id = volume_id_for("gone");
    let dev = f.activate("iolane", &id);
    let b = f.adopted(&[tagged("gone", 8 << 20)]).await;
    let mark = f.runner.calls().len();
    assert!(b.delete(&id).await.unwrap());
    // Found in the index: no report, only the discard and the removal.
    assert_eq!(
        f.runner.calls()[mark..],
        [
            format!("blkdiscard -- {}", dev.display()),
            format!("lvremove -y iolane/{id}"),
        ]
    );
    std::fs::remove_file(&dev).unwrap();
    let mark = f.runner.calls().len();
    assert!(!b.delete(&id).await.unwrap());
    assert_eq!(f.runner.calls().len(), mark);
}

#[tokio::test]
async fn an_lvremove_of_an_lv_already_gone_counts_as_removed() {
    let f = Fixture::new();
    let id = volume_id_for("twice");
    f.activate("iolane", &id);
    let b = f.adopted(&[tagged("twice", 8 << 20)]).await;
    f.runner.answer(
        "lvremove ",
        Output {
            status: Some(5),
            stdout: String::new(),
            stderr: format!("  Failed to find logical volume \"iolane/{id}\"\n"),
        },
    );
    f.answer_lvs(&[pool(0.0, 0.0)]);
    assert!(b.delete(&id).await.unwrap());
    // Still there after a failed lvremove: the error, and the volume stays indexed.
    let id2 = volume_id_for("stuck");
    f.activate("iolane", &id2);
    let b = f.adopted(&[tagged("stuck", 8 << 20)]).await;
    f.runner.answer(
        "lvremove ",
        Output {
            status: Some(5),
            stdout: String::new(),
            stderr: "  Logical volume iolane/x in use.\n".to_owned(),
        },
    );
    f.answer_lvs(&[pool(0.0, 0.0), tagged("stuck", 8 << 20)]);
    let err = b.delete(&id2).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    let mark = f.runner.calls().len();
    assert!(b.get(&id2).await.unwrap().is_some());
    assert_eq!(f.runner.calls().len(), mark);
}

#[tokio::test]
async fn delete_activates_an_inactive_volume_to_discard_it() {
    let f = Fixture::new();
    let s = spec("cold", 8 << 20);
    let b = f
        .adopted(&[thin(&s.id, 8 << 20, &tags::encode(&s).unwrap(), false)])
        .await;
    let mark = f.runner.calls().len();
    // Indexed as inactive: no device node is expected, so no report is needed.
    assert!(b.get(&s.id).await.unwrap().is_some());
    // The fake's lvchange makes no device node appear: the delete stops there, and
    // never removes what it could not discard.
    let err = b.delete(&s.id).await.unwrap_err();
    assert!(err.to_string().contains("device node is missing"), "{err}");
    assert_eq!(
        f.runner.calls()[mark..],
        [format!("lvchange -ay -K iolane/{}", s.id)]
    );
}

#[tokio::test]
async fn expand_extends_and_never_shrinks() {
    let f = Fixture::new();
    let id = volume_id_for("grow");
    f.activate("iolane", &id);
    let b = f.adopted(&[tagged("grow", 8 << 20)]).await;
    let mark = f.runner.calls().len();
    assert_eq!(b.expand(&id, 4 << 20).await.unwrap(), 8 << 20);
    assert_eq!(f.runner.calls().len(), mark);
    // Without the pool status in-process, admission reads one report.
    f.answer_lvs(&[pool(0.0, 0.0), tagged("grow", 8 << 20)]);
    assert_eq!(b.expand(&id, 16 << 20).await.unwrap(), 16 << 20);
    assert_eq!(
        f.effects(mark),
        vec![format!("lvextend -L 16777216b iolane/{id}")]
    );
    // The index took the new size.
    let mark = f.runner.calls().len();
    assert_eq!(b.expand(&id, 12 << 20).await.unwrap(), 16 << 20);
    assert_eq!(b.get(&id).await.unwrap().unwrap().capacity_bytes, 16 << 20);
    let err = b
        .expand(&volume_id_for("nope"), 16 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VolumeNotFound(_)), "{err}");
    assert_eq!(f.runner.calls().len(), mark);
}

#[tokio::test]
async fn attach_activates_only_when_the_device_is_missing() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let id = volume_id_for("dev");
    let mark = f.runner.calls().len();
    assert_eq!(b.attached(&id).await.unwrap(), None);
    assert!(b.devices(&id).await.unwrap().is_empty());
    let err = b.attach(&id).await.unwrap_err();
    assert!(matches!(err, Error::VolumeNotFound(_)), "{err}");
    let node = f.activate("iolane", &id);
    assert_eq!(b.attach(&id).await.unwrap(), node);
    assert_eq!(b.attached(&id).await.unwrap(), Some(node.clone()));
    assert_eq!(b.devices(&id).await.unwrap(), vec![node]);
    b.detach(&id).await.unwrap();
    assert_eq!(f.effects(mark), Vec::<String>::new());
}

#[tokio::test]
async fn broken_tags_are_an_error_for_get_and_skipped_by_list() {
    let f = Fixture::new();
    let id = volume_id_for("odd");
    let row = thin(&id, 8 << 20, &["iolane.dev/v=9".to_owned()], true);
    f.activate("iolane", &id);
    // Not indexed (its tags cannot be read), but its device node is there: get asks LVM.
    let b = f.adopted(std::slice::from_ref(&row)).await;
    f.answer_lvs(&[pool(0.0, 0.0), row.clone()]);
    let err = b.get(&id).await.unwrap_err();
    assert!(matches!(err, Error::Metadata { .. }), "{err}");
    f.answer_lvs(&[pool(0.0, 0.0), row]);
    assert!(b.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_full_pool_makes_its_volumes_abnormal() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let id = volume_id_for("v");
    f.answer_lvs(&[pool(42.0, 10.0), tagged("v", 8 << 20)]);
    assert_eq!(b.condition(&id).await.unwrap(), None);
    let mut full = pool(100.0, 10.0);
    full["lv_attr"] = json!("twi-aot-D-");
    f.answer_lvs(&[full, tagged("v", 8 << 20)]);
    let c = b.condition(&id).await.unwrap().unwrap();
    assert!(c.contains("out of data space (100.00% used)"), "{c}");
    let mut ro = pool(50.0, 99.0);
    ro["lv_attr"] = json!("twi-aot-M-");
    f.answer_lvs(&[ro, tagged("v", 8 << 20)]);
    let c = b.condition(&id).await.unwrap().unwrap();
    assert!(c.contains("metadata is read-only"), "{c}");
    f.answer_lvs(&[pool(100.0, 10.0)]);
    assert_eq!(b.condition(&id).await.unwrap(), None, "no such volume");
    // All volumes at once (iolane status) say the same, from one report.
    let mut full = pool(100.0, 10.0);
    full["lv_attr"] = json!("twi-aot-D-");
    f.answer_lvs(&[full, tagged("v", 8 << 20), tagged("w", 8 << 20)]);
    let all = b.conditions().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[&id].contains("out of data space"), "{all:?}");
    f.answer_lvs(&[pool(42.0, 10.0), tagged("v", 8 << 20)]);
    assert!(b.conditions().await.unwrap().is_empty());
}
