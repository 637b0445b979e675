//! SIGKILL of the driver in the middle of a stream of creates: after a restart, every
//! call either made exactly one volume or none, and nothing is half-made.

use super::*;

/// Processes named `lvcreate` (a killed driver's orphans finish on their own).
fn lvcreate_running() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "lvcreate").then_some(pid)
        })
        .collect()
}

/// One CreateVolume of the stream and how it ended.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    result: Option<Result<String, String>>,
}

#[tokio::test(flavor = "multi_thread")]
async fn lvm_sigkill_during_creates_leaves_consistent_state() {
    require_lvm!();
    let mut d = Driver::start().await;
    let cap = block_cap();
    let size = LVM_EXTENT;
    let mut wrong: Vec<String> = Vec::new();
    let mut all_names: BTreeSet<String> = BTreeSet::new();
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    // Kill at different points of an lvcreate: at once, a little later, later still.
    for (round, delay_ms) in [(0u32, 0u64), (1, 400), (2, 1500)] {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for stream in 0..2 {
            let calls = calls.clone();
            let mut ctl = d.controller.clone();
            let cap = cap.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("stream-{round}-{stream}-{i}");
                    let idx = {
                        let mut c = calls.lock().expect("lock");
                        c.push(Call {
                            name: name.clone(),
                            result: None,
                        });
                        c.len() - 1
                    };
                    let r = ctl
                        .create_volume(create_request(&name, vec![cap.clone()], size, 0))
                        .await
                        .map(|r| {
                            r.into_inner()
                                .volume
                                .map(|v| v.volume_id)
                                .unwrap_or_default()
                        })
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                    let failed = r.is_err();
                    calls.lock().expect("lock")[idx].result = Some(r);
                    if failed {
                        break;
                    }
                }
            }));
        }
        // Some creates done, and more under way: then SIGKILL.
        let c2 = calls.clone();
        let busy = poll(Duration::from_secs(300), move || {
            let c = c2.lock().expect("lock");
            let done = c.iter().filter(|x| matches!(x.result, Some(Ok(_)))).count();
            let pending = c.iter().filter(|x| x.result.is_none()).count();
            done >= 2 && pending >= 1
        })
        .await;
        assert!(
            busy,
            "round {round}: the create stream did not get going: {:?}",
            calls.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        d.kill();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a create stream did not end after the driver was killed")
                .expect("join");
        }
        let calls = calls.lock().expect("lock").clone();
        let mut interrupted = Vec::new();
        for c in &calls {
            all_names.insert(c.name.clone());
            match &c.result {
                Some(Ok(id)) => {
                    assert_eq!(id, &volume_id_for(&c.name), "CreateVolume {} id", c.name);
                    created.insert(c.name.clone(), id.clone());
                }
                _ => interrupted.push(c.name.clone()),
            }
        }
        note(format!(
            "round {round}: killed {delay_ms} ms after the stream was busy; {} creates returned OK, interrupted: {interrupted:?}; lvcreate still running: {:?}",
            calls.len() - interrupted.len(),
            lvcreate_running()
        ));

        d.restart().await;
        let listed = list(&mut d).await;
        for (name, id) in &created {
            if !listed.contains_key(id) {
                wrong.push(format!(
                    "round {round}: {name} ({id}) returned OK before the kill but ListVolumes after the restart does not list it"
                ));
            }
        }
        let known: BTreeSet<String> = all_names.iter().map(|n| volume_id_for(n)).collect();
        for id in listed.keys() {
            if !known.contains(id) {
                wrong.push(format!(
                    "round {round}: ListVolumes lists {id}, which no call created"
                ));
            }
        }
        // The CO retries the interrupted calls: each returns its volume, the same each time.
        for name in &interrupted {
            let want = volume_id_for(name);
            let req = create_request(name, vec![cap.clone()], size, 0);
            let mut got = Vec::new();
            for attempt in 0..2 {
                match d.controller.create_volume(req.clone()).await {
                    Ok(r) => got.push(
                        r.into_inner()
                            .volume
                            .map(|v| v.volume_id)
                            .unwrap_or_default(),
                    ),
                    Err(s) => {
                        wrong.push(format!(
                            "round {round}: repeating the interrupted CreateVolume {name} after the restart (attempt {attempt}): {:?}: {}",
                            s.code(),
                            s.message()
                        ));
                        // As the CO would, retry after a moment.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            for id in &got {
                if id != &want {
                    wrong.push(format!(
                        "round {round}: the repeated CreateVolume {name} returned {id}, expected {want}"
                    ));
                }
            }
            if let Some(prev) = listed.get(&want) {
                note(format!(
                    "round {round}: {name} was already listed after the restart ({prev} bytes)"
                ));
            }
            created.insert(name.clone(), want);
        }
    }

    // The killed drivers' lvcreate processes finish on their own; then LVM and the driver
    // agree: every iol-* LV is a tagged volume that ListVolumes lists, and the reverse.
    let settled = poll(Duration::from_secs(120), || lvcreate_running().is_empty()).await;
    assert!(
        settled,
        "lvcreate processes still running: {:?}",
        lvcreate_running()
    );
    d.restart().await;
    let listed = list(&mut d).await;
    let lvs = lvm_volume_lvs(d.vgs());
    let lv_names: BTreeSet<String> = lvs.iter().map(|l| l.name.clone()).collect();
    let listed_ids: BTreeSet<String> = listed.keys().cloned().collect();
    let want_ids: BTreeSet<String> = created.values().cloned().collect();
    for lv in &lvs {
        if !lv.tags.iter().any(|t| t.starts_with("iolane.dev/name=")) {
            wrong.push(format!(
                "LV {}/{} has no iolane name tag: {:?}",
                lv.vg, lv.name, lv.tags
            ));
        }
    }
    if lv_names != listed_ids {
        wrong.push(format!(
            "iol-* LVs and ListVolumes differ: only LVs {:?}, only listed {:?}",
            lv_names.difference(&listed_ids).collect::<Vec<_>>(),
            listed_ids.difference(&lv_names).collect::<Vec<_>>()
        ));
    }
    if listed_ids != want_ids {
        wrong.push(format!(
            "ListVolumes is not exactly the created volumes: missing {:?}, extra {:?}",
            want_ids.difference(&listed_ids).collect::<Vec<_>>(),
            listed_ids.difference(&want_ids).collect::<Vec<_>>()
        ));
    }
    note(format!("{} volumes after 3 SIGKILLs", listed.len()));
    for id in listed.keys() {
        delete(&mut d, id).await;
    }
    assert!(
        d.backend_volumes().is_empty(),
        "LVs left: {:?}",
        d.backend_volumes()
    );
    assert!(
        wrong.is_empty(),
        "SIGKILL during creates:\n{}",
        wrong.join("\n")
    );
}
