//! The lvm backend against a recording command runner: the argvs it builds, in order,
//! and what it refuses to run.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::os::command::{Output, RecordingRunner};
use crate::os::{FsType, Roots};
use crate::volume::CapacityRange;

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
        let class = self.class(&["nvme0n1"]);
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

impl PoolStatus for ScriptedStatus {
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

#[tokio::test]
async fn blank_devices_become_a_vg_and_a_thin_pool() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1", "nvme1n1"]);
    let (a, b) = (class.devices[0].clone(), class.devices[1].clone());
    f.answer_pvs(&[]);
    for d in [&a, &b] {
        // blkid exits 2 when it finds no signature.
        f.runner.answer(
            &format!("blkid -p -o export -- {}", d.display()),
            Output {
                status: Some(2),
                ..Output::default()
            },
        );
    }
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    assert_eq!(backend.ready().await, Ok(()));
    assert_eq!(backend.granularity(), EXTENT);
    assert_eq!(
        f.runner.calls(),
        vec![
            "pvs --reportformat json --units b --nosuffix -o pv_name,vg_name".to_owned(),
            format!("blkid -p -o export -- {}", a.display()),
            format!("blkid -p -o export -- {}", b.display()),
            format!("pvcreate {}", a.display()),
            format!("pvcreate {}", b.display()),
            format!("vgcreate iolane {} {}", a.display(), b.display()),
            "lvcreate -T -l 95%VG --chunksize 64k --zero y --errorwhenfull y iolane/pool"
                .to_owned(),
            format!(
                "lvs --reportformat json --units b --nosuffix -o {} iolane",
                report::LV_FIELDS.join(",")
            ),
            format!(
                "lvs --reportformat json --units b --nosuffix -o {} iolane",
                report::LV_FIELDS.join(",")
            ),
        ]
    );
}

#[tokio::test]
async fn a_device_with_a_signature_is_refused_and_nothing_is_changed() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1", "nvme1n1"]);
    let second = class.devices[1].clone();
    f.answer_pvs(&[]);
    // The first device is blank, the second holds a filesystem.
    f.runner.answer(
        "blkid -p",
        Output {
            status: Some(2),
            ..Output::default()
        },
    );
    f.answer(
        &format!("blkid -p -o export -- {}", second.display()),
        "DEVNAME=x\nTYPE=xfs\nUSAGE=filesystem\n".to_owned(),
    );
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let calls = f.runner.calls();
    assert!(
        calls.iter().all(|c| !c.starts_with("pvcreate")
            && !c.starts_with("vgcreate")
            && !c.starts_with("lvcreate")
            && !c.starts_with("wipefs")),
        "{calls:#?}"
    );
    let reason = backend.ready().await.unwrap_err();
    assert!(
        reason.contains(&second.display().to_string())
            && reason.contains("xfs")
            && reason.contains("wipe = \"signatures\""),
        "{reason}"
    );
    // The process keeps serving: volume calls say the class is not ready.
    let err = backend.create(&spec("v", 8 << 20)).await.unwrap_err();
    assert!(matches!(err, Error::NotReady(_)), "{err}");
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_lvm_label_that_pvs_does_not_list_is_a_foreign_signature() {
    // What blkid printed for a real PV (fixture), on a device LVM does not report (e.g.
    // filtered out by the host's lvm.conf): not ours to take.
    let blkid = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvm/blkid-lvm2-pv.stdout"),
    )
    .unwrap();
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    f.answer_pvs(&[]);
    f.answer("blkid -p", blkid);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(reason.contains("a signature (LVM2_member)"), "{reason}");
    assert_eq!(f.effects(0).len(), 1, "only blkid ran");
}

#[tokio::test]
async fn a_pv_of_another_vg_is_refused() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    f.answer_pvs(&[(&class.devices[0], "data")]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(
        reason.contains("physical volume of VG \"data\""),
        "{reason}"
    );
    assert_eq!(f.effects(0), Vec::<String>::new());
}

#[tokio::test]
async fn wipe_policy_erases_signatures_before_pvcreate() {
    let f = Fixture::new();
    let mut class = f.class(&["nvme0n1"]);
    class.wipe = WipePolicy::Signatures;
    let d = class.devices[0].clone();
    f.answer_pvs(&[]);
    f.answer("blkid -p", "PTTYPE=gpt\n".to_owned());
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    assert_eq!(backend.ready().await, Ok(()));
    assert_eq!(
        f.effects(0)[..4],
        [
            format!("blkid -p -o export -- {}", d.display()),
            format!("wipefs -a -- {}", d.display()),
            format!("pvcreate {}", d.display()),
            format!("vgcreate iolane {}", d.display()),
        ]
    );
}

#[tokio::test]
async fn an_orphan_pv_is_reused_and_a_missing_device_refused() {
    let f = Fixture::new();
    let class = f.class(&["nvme0n1"]);
    let d = class.devices[0].clone();
    f.answer_pvs(&[(&d, "")]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    f.answer_lvs(&[pool(0.0, 0.0)]);
    LvmBackend::open(f.os.clone(), vec![class]).await;
    assert!(f.effects(0)[0].starts_with("vgcreate iolane "));

    let f = Fixture::new();
    let class = DeviceClass::with_defaults("default", vec![f.dir.path().join("dev/nvme9n1")]);
    f.answer_pvs(&[]);
    let backend = LvmBackend::open(f.os.clone(), vec![class]).await;
    let reason = backend.ready().await.unwrap_err();
    assert!(reason.contains("nvme9n1 does not exist"), "{reason}");
    assert!(!reason.contains("wipe"), "{reason}");
}

#[tokio::test]
async fn an_existing_pool_is_adopted_untouched_and_untagged_volume_lvs_are_removed() {
    let f = Fixture::new();
    let stray = volume_id_for("stray");
    f.activate("iolane", &stray);
    let b = f
        .adopted(&[
            tagged("keep", 8 << 20),
            thin(&stray, 8 << 20, &[], true),
            thin("someone-elses", 8 << 20, &[], true),
        ])
        .await;
    let dev = f.dir.path().join("dev/iolane").join(&stray);
    assert_eq!(
        f.effects(0),
        vec![
            format!("blkdiscard -- {}", dev.display()),
            format!("lvremove -y iolane/{stray}"),
        ]
    );
    f.answer_lvs(&[pool(0.0, 0.0), tagged("keep", 8 << 20)]);
    let vols = b.list().await.unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].name, "keep");
    assert_eq!(vols[0].capacity_bytes, 8 << 20);
    assert_eq!(vols[0].fs_type, Some(FsType::Ext4));
}

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
async fn admission_refuses_past_the_ratio_and_the_watermarks() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let mark = f.runner.calls().len();
    // Ratio 4 x 1 GiB of pool data = 4 GiB; 3 GiB are provisioned already.
    let used = tagged("big", 3 << 30);
    f.answer_lvs(&[pool(1.0, 1.0), used.clone()]);
    let cap = b.capacity(&Parameters::default()).await.unwrap();
    assert_eq!(cap.available, 1 << 30);
    f.answer_lvs(&[pool(1.0, 1.0), used.clone()]);
    let err = b
        .create(&spec("more", (1 << 30) + EXTENT))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert!(err.to_string().contains("overprovision ratio 4"), "{err}");

    f.answer_lvs(&[pool(90.5, 1.0)]);
    let err = b.create(&spec("small", EXTENT)).await.unwrap_err();
    assert!(
        err.to_string().contains("data usage is 90.50%") && err.to_string().contains("90%"),
        "{err}"
    );
    f.answer_lvs(&[pool(10.0, 80.0)]);
    let err = b.create(&spec("small", EXTENT)).await.unwrap_err();
    assert!(
        err.to_string().contains("metadata usage is 80.00%"),
        "{err}"
    );
    f.answer_lvs(&[pool(10.0, 80.0)]);
    assert_eq!(
        b.capacity(&Parameters::default()).await.unwrap().available,
        0
    );
    assert_eq!(f.effects(mark), Vec::<String>::new());
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
async fn with_the_pool_status_in_process_a_create_is_one_lvcreate() {
    let f = Fixture::new();
    // 1 GiB of pool data x ratio 4; 2 GiB of iolane volumes and 1 GiB of someone else's.
    let mut b = f
        .adopted(&[
            tagged("old", 2 << 30),
            thin("someone-elses", 1 << 30, &[], true),
        ])
        .await;
    let rw = dm_fixture("dmsetup-status-with-thin.txt", "iolane-pool-tpool");
    let full = dm_fixture("dmsetup-status-small-full.txt", "");
    ScriptedStatus::install(&mut b, &[&rw, &rw, &rw, &full, &rw]);
    let mark = f.runner.calls().len();
    let s = spec("new", 512 << 20);
    let v = new(b.create(&s).await.unwrap());
    assert_eq!(v.capacity_bytes, 512 << 20);
    let calls = f.runner.calls()[mark..].to_vec();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("lvcreate --type thin -V 536870912b"),
        "{calls:?}"
    );
    // 3.5 GiB provisioned now (the new volume counts): 512 MiB are left.
    let err = b
        .create(&spec("more", (512 << 20) + EXTENT))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert!(
        err.to_string().contains("3758096384 bytes are provisioned"),
        "{err}"
    );
    // A create in flight (admitted, lvcreate running) counts like a volume.
    b.index()
        .reserved
        .insert(volume_id_for("flying"), (0, 256 << 20));
    let err = b.create(&spec("less", 512 << 20)).await.unwrap_err();
    assert!(
        err.to_string().contains("4026531840 bytes are provisioned"),
        "{err}"
    );
    b.index().reserved.clear();
    // The pool's own figures from the kernel: out of data space is past the watermark.
    let err = b.create(&spec("small", EXTENT)).await.unwrap_err();
    assert!(err.to_string().contains("data usage is 100.00%"), "{err}");
    // A deleted volume gives its bytes back to admission at once.
    f.activate("iolane", &v.id);
    assert!(b.delete(&v.id).await.unwrap());
    std::fs::remove_file(f.dir.path().join("dev/iolane").join(&v.id)).unwrap();
    new(b.create(&spec("more", (512 << 20) + EXTENT)).await.unwrap());
    assert!(
        !f.runner.calls()[mark..]
            .iter()
            .any(|c| c.starts_with("lvs ")),
        "{:?}",
        f.runner.calls()
    );
    // Once the status cannot be read, admission falls back to one report.
    f.answer_lvs(&[pool(95.0, 1.0)]);
    let err = b.create(&spec("last", EXTENT)).await.unwrap_err();
    assert!(err.to_string().contains("data usage is 95.00%"), "{err}");
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

#[test]
fn granularity_is_the_lcm_of_extents() {
    assert_eq!(lcm(1, 4 << 20), 4 << 20);
    assert_eq!(lcm(4 << 20, 32 << 20), 32 << 20);
    assert_eq!(lcm(3, 4), 12);
}
