//! The campaign's invariants, checked while every client is parked at a step boundary:
//! the node against the model of what was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use iolane_tests::csi;
use iolane_tests::{
    Driver, POLL_DEADLINE, files_under, is_lvm, loops_for, loops_over_lvs, lvm_volume_lvs,
    mounts_under, pattern, poll, read_prefix,
};

use super::{DATA_LEN, Shared, TIER_KEY, Vol};

/// GetCapacity's available bytes (no parameters: the default class).
pub(super) async fn available(d: &mut Driver) -> Result<i64, String> {
    d.controller
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .map(|r| r.into_inner().available_capacity)
        .map_err(|s| format!("GetCapacity: {:?}: {}", s.code(), s.message()))
}

/// `major:minor` of the block device at `path`.
fn rdev(path: &Path) -> Option<String> {
    let st = nix::sys::stat::stat(path).ok()?;
    Some(format!(
        "{}:{}",
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev)
    ))
}

/// Loop devices of the tempdir: `(device number, backing file)` by device name.
fn loops(root: &Path) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        // Detached while open (autoclear): goes away at its last close; the end of the
        // campaign waits for that.
        if fs::read_to_string(e.path().join("loop/autoclear")).is_ok_and(|t| t.trim() == "1") {
            continue;
        }
        let backing = backing.trim_end_matches('\n').to_owned();
        let file = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
        if !Path::new(file).starts_with(root) {
            continue;
        }
        let dev = fs::read_to_string(e.path().join("dev"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        out.insert(name, (dev, backing));
    }
    out
}

fn image(root: &Path, id: &str) -> String {
    root.join("state/loop")
        .join(format!("{id}.img"))
        .display()
        .to_string()
}

/// Checks every invariant; records violations tagged with `when`.
pub(super) async fn round(d: &mut Driver, shared: &Shared, baseline: Option<i64>, when: &str) {
    let (vols, deleted): (Vec<(usize, Vol)>, BTreeSet<String>) = {
        let m = shared.model();
        (
            m.clients
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
                .collect(),
            m.deleted.clone(),
        )
    };
    let mut bad: Vec<String> = Vec::new();
    let live: BTreeMap<String, &Vol> = vols.iter().map(|(_, v)| (v.id.clone(), v)).collect();

    // ListVolumes: exactly the acknowledged volumes, with their sizes and tiers.
    match d
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
    {
        Err(s) => bad.push(format!("ListVolumes: {:?}: {}", s.code(), s.message())),
        Ok(r) => {
            let r = r.into_inner();
            let mut listed = BTreeSet::new();
            for e in r.entries {
                let v = e.volume.unwrap_or_default();
                listed.insert(v.volume_id.clone());
                match live.get(&v.volume_id) {
                    None if deleted.contains(&v.volume_id) => bad.push(format!(
                        "{} was acknowledged deleted but ListVolumes lists it",
                        v.volume_id
                    )),
                    None => bad.push(format!(
                        "ListVolumes lists {}, which no client holds",
                        v.volume_id
                    )),
                    Some(want) => {
                        if v.capacity_bytes != want.size {
                            bad.push(format!(
                                "{} ({}) is {} bytes, created with {}",
                                want.id, want.name, v.capacity_bytes, want.size
                            ));
                        }
                        let tier = v.volume_context.get(TIER_KEY).map(String::as_str);
                        if tier != want.tier {
                            bad.push(format!(
                                "{} ({}) has tier {tier:?}, created with {:?}",
                                want.id, want.name, want.tier
                            ));
                        }
                    }
                }
            }
            for id in live.keys() {
                if !listed.contains(id) {
                    bad.push(format!(
                        "{id} ({}) was acknowledged created but ListVolumes does not list it",
                        live[id].name
                    ));
                }
            }
        }
    }

    // The backend's own objects: an image or an LV per acknowledged volume, nothing else.
    let stored: BTreeSet<String> = d
        .backend_volumes()
        .iter()
        .map(|p| {
            let base = p.rsplit('/').next().unwrap_or(p);
            base.strip_suffix(".img").unwrap_or(base).to_owned()
        })
        .collect();
    let want: BTreeSet<String> = live.keys().cloned().collect();
    if stored != want {
        bad.push(format!(
            "backend volumes differ from the acknowledged ones: missing {:?}, extra {:?}",
            want.difference(&stored).collect::<Vec<_>>(),
            stored.difference(&want).collect::<Vec<_>>()
        ));
    }

    // Mounts: the staging path of each staged volume and the target of each published one,
    // once each.
    let root = &shared.root;
    let mut want_mounts: Vec<PathBuf> = Vec::new();
    for (k, v) in &vols {
        if v.staged {
            want_mounts.push(root.join("staging").join(&v.name));
        }
        if v.published {
            want_mounts.push(shared.target(*k, &v.name));
        }
    }
    want_mounts.sort();
    let all_mounts = mounts_under(root);
    let mut got_mounts: Vec<PathBuf> = all_mounts.iter().map(|m| m.mount_point.clone()).collect();
    got_mounts.sort();
    if got_mounts != want_mounts {
        bad.push(format!(
            "mounts differ: expected {want_mounts:?}, found {got_mounts:?}"
        ));
    }

    // Devices: on loop, one loop device per staged volume, over its image, and the one
    // its staging mount uses; on lvm, no loop device over a volume LV.
    let loops = loops(root);
    let lvs = if is_lvm() {
        lvm_volume_lvs(d.vgs())
    } else {
        Vec::new()
    };
    let mut staged_dev: BTreeMap<String, String> = BTreeMap::new();
    for (_, v) in &vols {
        let dev = if is_lvm() {
            lvs.iter()
                .find(|l| l.volume_id().as_deref() == Some(v.id.as_str()))
                .and_then(|l| l.device())
                .and_then(|p| rdev(&p))
        } else {
            let img = image(root, &v.id);
            let over: Vec<&String> = loops
                .iter()
                .filter(|(_, (_, b))| *b == img)
                .map(|(n, _)| n)
                .collect();
            let want_n = usize::from(v.staged);
            if over.len() != want_n {
                bad.push(format!(
                    "{} ({}, staged {}) has {} loop devices: {over:?}",
                    v.id,
                    v.name,
                    v.staged,
                    over.len()
                ));
            }
            over.first().map(|n| loops[*n].0.clone())
        };
        if v.staged {
            let at = root.join("staging").join(&v.name);
            let m = all_mounts.iter().rev().find(|m| m.mount_point == at);
            if let (Some(m), Some(dev)) = (m, &dev) {
                let here = format!("{}:{}", m.major, m.minor);
                if &here != dev {
                    bad.push(format!(
                        "{} ({}) is staged from {here}, but its device is {dev}",
                        v.id, v.name
                    ));
                }
                staged_dev.insert(v.id.clone(), dev.clone());
            }
        }
    }
    if is_lvm() {
        let over = loops_over_lvs(&lvs);
        if !over.is_empty() {
            bad.push(format!("loop devices over volume LVs: {over:?}"));
        }
    } else {
        let known: BTreeSet<String> = live.keys().map(|id| image(root, id)).collect();
        for (n, (_, b)) in &loops {
            if !known.contains(b) {
                bad.push(format!("loop device {n} over {b}, which no volume holds"));
            }
        }
    }

    // io.max: one line for a published volume with a tier, on its device; nothing else.
    for (k, uid) in shared.pod_uids.iter().enumerate() {
        let file = shared
            .cgroup_root
            .join("kubepods/burstable")
            .join(format!("pod{uid}"))
            .join("io.max");
        let text = fs::read_to_string(&file).unwrap_or_default();
        // A line whose four caps are all `max` is how a reset looks in a plain file; the
        // kernel drops such a line.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .skip(1)
                    .any(|kv| kv.split_once('=').is_none_or(|(_, v)| v != "max"))
            })
            .collect();
        let vol = vols.iter().find(|(c, _)| *c == k).map(|(_, v)| v);
        let want_dev = vol
            .filter(|v| v.published)
            .and_then(|v| staged_dev.get(&v.id));
        let ok = match want_dev {
            Some(dev) => {
                lines.len() == 1 && lines[0].split_whitespace().next() == Some(dev.as_str())
            }
            None => lines.is_empty(),
        };
        if !ok {
            bad.push(format!(
                "client {k} ({:?}): io.max holds {lines:?}, expected {}",
                vol.map(|v| (&v.name, v.published, v.tier)),
                want_dev.map_or("nothing".to_owned(), |d| format!("one line for {d}"))
            ));
        }
    }

    // Data written through a publication that is still published reads back.
    for (k, v) in &vols {
        if let (true, Some(seed)) = (v.published, v.data) {
            let file = shared.target(*k, &v.name).join("data");
            match read_prefix(&file, DATA_LEN) {
                Ok(b) if b == pattern(seed, DATA_LEN) => {}
                Ok(_) => bad.push(format!("{} reads back other data", file.display())),
                Err(e) => bad.push(format!("reading {}: {e}", file.display())),
            }
        }
    }

    // Admission: what is left plus what the volumes hold is what the empty pool offered.
    if let Some(base) = baseline {
        let held: i64 = vols.iter().map(|(_, v)| v.size).sum();
        match available(d).await {
            Ok(a) if a + held == base => {}
            Ok(a) => bad.push(format!(
                "admission: GetCapacity {a} + {held} held by {} volumes = {}, the empty pool offered {base}",
                vols.len(),
                a + held
            )),
            Err(e) => bad.push(e),
        }
    }

    for b in bad {
        shared.violation(format!("{when}: {b}"));
    }
}

/// At the end, with no volume left: nothing of the driver's remains under its state dir
/// but its bookkeeping, no mount, no loop device, no volume LV.
pub(super) async fn leaks(d: &Driver, shared: &Shared) {
    let left: Vec<PathBuf> = files_under(&d.state_dir())
        .into_iter()
        .filter(|p| {
            p.starts_with(d.state_dir().join("loop"))
                && p.extension().is_some_and(|e| e == "img" || e == "json")
        })
        .collect();
    if !left.is_empty() {
        shared.violation(format!("end: files left in the loop state dir: {left:?}"));
    }
    let m = mounts_under(&shared.root);
    if !m.is_empty() {
        shared.violation(format!(
            "end: mounts left: {:?}",
            m.iter().map(|m| &m.mount_point).collect::<Vec<_>>()
        ));
    }
    let root = shared.root.clone();
    if !poll(POLL_DEADLINE, || loops_for(&root).is_empty()).await {
        shared.violation(format!(
            "end: loop devices left: {:?}",
            loops_for(&shared.root)
        ));
    }
    if !d.backend_volumes().is_empty() {
        shared.violation(format!("end: volumes left: {:?}", d.backend_volumes()));
    }
}
