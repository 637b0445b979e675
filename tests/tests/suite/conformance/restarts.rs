//! Driver restarts: after SIGKILL volumes and mounts are kept; SIGTERM exits cleanly and
//! the restarted driver finds the volumes again.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn restart_after_sigkill_keeps_volumes_and_mounts() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let mut vols = Vec::new();
    for name in ["r-a", "r-b", "r-c"] {
        vols.push(create(&mut d, name, &cap, 32 * MIB).await);
    }
    let id = vols[0].volume_id.clone();
    let staging = d.make_staging("r-a");
    let target = d.target("r-a");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let data = pattern(42, DATA_LEN);
    let file = Path::new(&target).join("survives.bin");
    write_synced(&file, &data).expect("write before the crash");
    let before = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes before the crash",
    );

    d.kill();
    d.restart().await;

    let after = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes after the restart",
    );
    let key = |r: &csi::ListVolumesResponse| {
        let mut v: Vec<(String, i64)> = r
            .entries
            .iter()
            .filter_map(|e| {
                e.volume
                    .as_ref()
                    .map(|v| (v.volume_id.clone(), v.capacity_bytes))
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        key(&after),
        key(&before),
        "volumes changed across SIGKILL and restart"
    );
    assert_eq!(after.entries.len(), 3);
    assert_eq!(
        read_prefix(&file, DATA_LEN).expect("read after the restart"),
        data
    );

    // The CO retries stage and publish after a restart: still the same single mounts.
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    assert_eq!(mount_count(&staging), 1);
    assert_eq!(mount_count(&target), 1);
    assert_stats(&mut d, &id, &target, Kind::Fs("ext4"), 32 * MIB).await;

    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    for v in &vols {
        delete(&mut d, &v.volume_id).await;
    }
    assert!(
        d.backend_state().is_empty(),
        "files left: {:?}",
        d.backend_state()
    );
    d.assert_no_leaks("after the restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly_and_restart_finds_volumes() {
    require_root!();
    let mut d = Driver::start().await;
    let v = create(&mut d, "term", &mount_cap(""), 32 * MIB).await;
    d.stop().await;
    assert!(d.pid().is_none());
    d.restart().await;
    assert_eq!(list_ids(&mut d).await, vec![v.volume_id.clone()]);
    delete(&mut d, &v.volume_id).await;
    // A stale socket from a killed driver is replaced on start.
    d.kill();
    assert!(d.socket().exists(), "SIGKILL cannot remove the socket");
    d.restart().await;
    assert!(list_ids(&mut d).await.is_empty());
    d.stop().await;
    assert!(d.backend_state().is_empty());
}
