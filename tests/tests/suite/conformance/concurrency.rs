//! Concurrent identical CreateVolume calls make one volume.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_creates_make_one_volume() {
    require_root!();
    let mut d = Driver::start().await;
    let req = create_request("racy", vec![mount_cap("ext4")], 64 * MIB, 0);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut c = d.controller.clone();
            let req = req.clone();
            tokio::spawn(async move { c.create_volume(req).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.expect("join") {
            Ok(r) => {
                ids.insert(r.into_inner().volume.expect("no volume").volume_id);
            }
            Err(s) => assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent CreateVolume #{i}: {:?}: {}",
                s.code(),
                s.message()
            ),
        }
    }
    assert_eq!(ids.len(), 1, "concurrent creates: ids {ids:?}");
    assert_eq!(images(&d).len(), 1, "images on disk: {:?}", images(&d));
    let id = ids.into_iter().next().expect("one id");
    assert_eq!(list_ids(&mut d).await, vec![id.clone()]);

    // The same for node calls: racing stages and publishes leave one mount each.
    let cap = mount_cap("ext4");
    let staging = d.make_staging("racy");
    let target = d.target("racy");
    let stages: Vec<_> = (0..8)
        .map(|_| {
            let mut n = d.node.clone();
            let req = stage_request(&id, &staging, &cap);
            tokio::spawn(async move { n.node_stage_volume(req).await })
        })
        .collect();
    for call in stages {
        if let Err(s) = call.await.expect("join") {
            assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent NodeStageVolume: {}",
                s.message()
            );
        }
    }
    // Whoever was refused retries, as the CO would.
    stage(&mut d, &id, &staging, &cap).await;
    assert_eq!(
        mount_count(&staging),
        1,
        "racing NodeStageVolume stacked mounts"
    );
    assert_eq!(
        d.attached_devices().len(),
        1,
        "racing NodeStageVolume attached several devices: {:?}",
        d.attached_devices()
    );
    let publishes: Vec<_> = (0..8)
        .map(|_| {
            let mut n = d.node.clone();
            let req = publish_request(&id, &staging, &target, &cap, false);
            tokio::spawn(async move { n.node_publish_volume(req).await })
        })
        .collect();
    for call in publishes {
        if let Err(s) = call.await.expect("join") {
            assert_eq!(
                s.code(),
                Code::Aborted,
                "concurrent NodePublishVolume: {}",
                s.message()
            );
        }
    }
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    assert_eq!(
        mount_count(&target),
        1,
        "racing NodePublishVolume stacked mounts"
    );

    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after concurrent calls").await;
}
