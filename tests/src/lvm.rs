//! The harness's own view of the test VGs (lvm mode): the `lvs` report ([`LvInfo`]), the
//! loop devices over volume LVs, and [`lvm_sweep`], which removes what a test left. Not
//! driver calls: the driver under test may be dead or wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{LV_PREFIX, SNAPSHOT_PREFIX, command, detach_loop, unmount_devices, volume_id_for};

/// One row of the harness's own `lvs` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub vg: String,
    pub name: String,
    pub attr: String,
    pub size: u64,
    /// Thin pool of a thin LV, empty otherwise.
    pub pool: String,
    pub tags: Vec<String>,
    /// `/dev/mapper/...`.
    pub dm_path: String,
    /// Kernel device number, `None` when the LV is not active.
    pub kernel: Option<(u32, u32)>,
    pub data_percent: String,
    pub when_full: String,
    /// Chunk size of a thin pool (0 for other LVs).
    pub chunk_size: u64,
}

impl LvInfo {
    /// The kernel's node (`/dev/dm-N`) of an active LV.
    pub fn device(&self) -> Option<PathBuf> {
        self.kernel?;
        fs::canonicalize(&self.dm_path).ok()
    }

    /// Whether this is a spare of a class with `spares` (tag `iolane.dev/spare=`).
    pub fn is_spare(&self) -> bool {
        self.tags.iter().any(|t| t.starts_with("iolane.dev/spare="))
    }

    /// The ID of the volume an `iol-*` LV holds: the hash of its name tag (the LV's own
    /// name unless it was a spare when the volume was made); an LV without a readable name
    /// tag counts as its own name; a spare holds none.
    pub fn volume_id(&self) -> Option<String> {
        if self.is_spare() {
            return None;
        }
        let name = self
            .tags
            .iter()
            .find_map(|t| t.strip_prefix("iolane.dev/name="))
            .and_then(unescape_tag);
        Some(name.map_or_else(|| self.name.clone(), |n| volume_id_for(&n)))
    }
}

/// The driver's tag escaping undone (`:` and two hex digits for a byte); `None` if malformed.
fn unescape_tag(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Fields of [`lvm_lvs`].
const HARNESS_LV_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,pool_lv,lv_tags,lv_dm_path,lv_kernel_major,lv_kernel_minor,data_percent,lv_when_full,chunk_size";

/// Every LV of `vgs` (a missing VG has none), from one `lvs --reportformat json`.
pub fn lvm_lvs(vgs: &[String]) -> Vec<LvInfo> {
    if vgs.is_empty() {
        return Vec::new();
    }
    let out = command("lvs")
        .args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            HARNESS_LV_FIELDS,
        ])
        .args(vgs)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run lvs");
    // A missing VG is exit 5 with an empty, valid report on stdout: the report decides.
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lvs printed no JSON ({e}), exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let rows = json["report"][0]["lv"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
    rows.iter()
        .map(|r| {
            let major: i64 = text(r, "lv_kernel_major").parse().unwrap_or(-1);
            let minor: i64 = text(r, "lv_kernel_minor").parse().unwrap_or(-1);
            LvInfo {
                vg: text(r, "vg_name"),
                name: text(r, "lv_name"),
                attr: text(r, "lv_attr"),
                size: text(r, "lv_size").parse().unwrap_or(0),
                pool: text(r, "pool_lv"),
                tags: text(r, "lv_tags")
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
                dm_path: text(r, "lv_dm_path"),
                kernel: match (u32::try_from(major), u32::try_from(minor)) {
                    (Ok(a), Ok(b)) => Some((a, b)),
                    _ => None,
                },
                data_percent: text(r, "data_percent"),
                when_full: text(r, "lv_when_full"),
                chunk_size: text(r, "chunk_size").parse().unwrap_or(0),
            }
        })
        .collect()
}

/// The `iol-*` LVs of `vgs`: the volumes, tagged or not.
pub fn lvm_volume_lvs(vgs: &[String]) -> Vec<LvInfo> {
    lvm_lvs(vgs)
        .into_iter()
        .filter(|l| l.name.starts_with(LV_PREFIX))
        .collect()
}

/// Loop devices whose backing file is the device of one of `lvs` (read-only block
/// publications).
pub fn loops_over_lvs(lvs: &[LvInfo]) -> Vec<PathBuf> {
    let devices: Vec<PathBuf> = lvs.iter().filter_map(LvInfo::device).collect();
    if devices.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let text = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let file = PathBuf::from(text.trim_end_matches('\n'));
            let file = fs::canonicalize(&file).unwrap_or(file);
            devices
                .contains(&file)
                .then(|| Path::new("/dev").join(&name))
        })
        .collect();
    out.sort();
    out
}

/// Unmounts and detaches the loop devices over `lvs`; returns what it did.
pub(crate) fn detach_loops_over(lvs: &[LvInfo]) -> Vec<String> {
    let loops = loops_over_lvs(lvs);
    let mut done = unmount_devices(&loops);
    done.extend(loops.iter().map(|dev| detach_loop(dev)));
    done
}

/// The `iolsnap-*` LVs of `vgs`: the snapshots.
pub fn lvm_snapshot_lvs(vgs: &[String]) -> Vec<LvInfo> {
    lvm_lvs(vgs)
        .into_iter()
        .filter(|l| l.name.starts_with(SNAPSHOT_PREFIX))
        .collect()
}

/// Removes every `iol-*` and `iolsnap-*` LV of `vgs` (after unmounting and detaching
/// whatever uses it), so the next test starts from empty VGs; returns what it did. Not a
/// driver call: the driver under test may be dead or wrong.
pub fn lvm_sweep(vgs: &[String]) -> Vec<String> {
    let mut lvs = lvm_volume_lvs(vgs);
    lvs.extend(lvm_snapshot_lvs(vgs));
    if lvs.is_empty() {
        return Vec::new();
    }
    let mut done = detach_loops_over(&lvs);
    let devices: Vec<PathBuf> = lvs.iter().filter_map(LvInfo::device).collect();
    done.extend(unmount_devices(&devices));
    for lv in &lvs {
        let out = command("lvremove")
            .arg("-y")
            .arg(format!("{}/{}", lv.vg, lv.name))
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                done.push(format!("removed LV {}/{}", lv.vg, lv.name));
            }
            Ok(o) => done.push(format!(
                "lvremove {}/{} failed ({}): {}",
                lv.vg,
                lv.name,
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => done.push(format!("lvremove {}/{} failed: {e}", lv.vg, lv.name)),
        }
    }
    done
}
