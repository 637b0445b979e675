//! The lvm backend against a recording command runner: the argvs it builds, in order,
//! and what it refuses to run. This file holds the fixture and the scripted LVM rows;
//! the tests are in one module per area of the backend.

mod admission;
mod index;
mod setup;
mod snapshots;
mod spares;
mod volumes;

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::os::command::{Output, RecordingRunner};
use crate::os::{FsType, Roots};
use crate::volume::{CapacityRange, volume_id_for};

const EXTENT: u64 = 4 << 20;
const POOL_BYTES: u64 = 1 << 30;

struct Fixture {
    dir: tempfile::TempDir,
    runner: Arc<RecordingRunner>,
    os: Os,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            proc: dir.path().join("proc"),
            sys: dir.path().join("sys"),
            dev: dir.path().join("dev"),
        };
        std::fs::create_dir_all(&roots.dev).unwrap();
        let runner = Arc::new(RecordingRunner::default());
        let os = Os::new(runner.clone(), roots);
        Fixture { dir, runner, os }
    }

    /// A stand-in for a block device: a file under the fake `/dev`.
    fn device(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("dev").join(name);
        std::fs::write(&p, b"").unwrap();
        p
    }

    /// Makes `/dev/<vg>/<lv>` appear, as activation does.
    fn activate(&self, vg: &str, lv: &str) -> PathBuf {
        let d = self.dir.path().join("dev").join(vg);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(lv);
        std::fs::write(&p, b"").unwrap();
        p
    }

    fn class(&self, devices: &[&str]) -> DeviceClass {
        DeviceClass::with_defaults("default", devices.iter().map(|d| self.device(d)).collect())
    }

    fn answer(&self, prefix: &str, stdout: String) {
        self.runner.answer(
            prefix,
            Output {
                status: Some(0),
                stdout,
                stderr: String::new(),
            },
        );
    }

    fn answer_lvs(&self, rows: &[serde_json::Value]) {
        self.answer("lvs ", json!({"report": [{"lv": rows}]}).to_string());
    }

    fn answer_pvs(&self, rows: &[(&Path, &str)]) {
        let rows: Vec<_> = rows
            .iter()
            .map(|(p, vg)| json!({"pv_name": p.display().to_string(), "vg_name": vg}))
            .collect();
        self.answer("pvs ", json!({"report": [{"pv": rows}]}).to_string());
    }

    /// Scripts the start-up of a class whose pool already exists (adoption, then sweep).
    async fn adopted(&self, extra: &[serde_json::Value]) -> LvmBackend {
        self.adopted_class(self.class(&["nvme0n1"]), extra).await
    }

    /// [`Fixture::adopted`] with the class given.
    async fn adopted_class(&self, class: DeviceClass, extra: &[serde_json::Value]) -> LvmBackend {
        self.answer_pvs(&[(&class.devices[0], "iolane")]);
        self.answer_lvs(&[pool(0.0, 0.0)]);
        let mut rows = vec![pool(0.0, 0.0)];
        rows.extend_from_slice(extra);
        self.answer_lvs(&rows);
        let b = LvmBackend::open(self.os.clone(), vec![class]).await;
        assert_eq!(b.ready().await, Ok(()));
        b
    }

    /// Commands run since the last call, with the report calls left out.
    fn effects(&self, from: usize) -> Vec<String> {
        self.runner.calls()[from..]
            .iter()
            .filter(|c| !c.starts_with("lvs ") && !c.starts_with("pvs "))
            .cloned()
            .collect()
    }
}

fn pool(data: f64, meta: f64) -> serde_json::Value {
    json!({
        "lv_name": "pool", "vg_name": "iolane", "lv_attr": "twi-aotz--",
        "pool_lv": "", "lv_size": POOL_BYTES.to_string(),
        "data_percent": format!("{data:.2}"), "metadata_percent": format!("{meta:.2}"),
        "lv_tags": "", "vg_extent_size": EXTENT.to_string(), "lv_when_full": "error",
    })
}

fn thin(name: &str, size: u64, tags: &[String], active: bool) -> serde_json::Value {
    json!({
        "lv_name": name, "vg_name": "iolane",
        "lv_attr": if active { "Vwi-a-tz--" } else { "Vwi---tz--" },
        "pool_lv": "pool", "lv_size": size.to_string(),
        "data_percent": "0.00", "metadata_percent": "", "lv_tags": tags.join(","),
        "vg_extent_size": EXTENT.to_string(), "lv_when_full": "",
    })
}

fn spec(name: &str, size: u64) -> CreateSpec {
    CreateSpec {
        id: volume_id_for(name),
        name: name.to_owned(),
        range: CapacityRange {
            required: size,
            limit: 0,
        },
        size,
        fs_type: Some(FsType::Ext4),
        parameters: Parameters::default(),
        tier: None,
        source: None,
    }
}

fn new(c: Created) -> Volume {
    match c {
        Created::New(v) => v,
        Created::Existing(v) => panic!("{} existed already", v.id),
    }
}

/// A scripted thin-pool status: one answer per call, in order; an error once they run out.
#[derive(Debug, Default)]
struct ScriptedStatus(std::sync::Mutex<Vec<String>>);

impl ScriptedStatus {
    fn install(b: &mut LvmBackend, lines: &[&str]) -> Arc<Self> {
        let s = Arc::new(ScriptedStatus(std::sync::Mutex::new(
            lines.iter().rev().map(|l| (*l).to_owned()).collect(),
        )));
        b.pool_status = s.clone();
        s
    }
}

impl ThinPoolReader for ScriptedStatus {
    fn thin_pool_status(&self, vg: &str, pool: &str) -> os::Result<ThinPoolStatus> {
        assert_eq!((vg, pool), ("iolane", "pool"));
        match self.0.lock().unwrap().pop() {
            Some(line) => os::dm::parse_thin_pool_status(&line),
            None => Err(os::Error::io(
                "open",
                Path::new("/dev/mapper/control"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
        }
    }
}

/// The status line of a fixture of `dmsetup status` (real output, `tests/fixtures/dm`).
fn dm_fixture(file: &str, device: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dm")
        .join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{device}: ")))
        .map_or_else(|| text.trim().to_owned(), str::to_owned)
        .splitn(4, ' ')
        .nth(3)
        .unwrap()
        .to_owned()
}

fn tagged(name: &str, size: u64) -> serde_json::Value {
    let s = spec(name, size);
    thin(&s.id, size, &tags::encode(&s).unwrap(), true)
}
