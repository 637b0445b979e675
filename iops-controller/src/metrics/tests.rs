//! The enforcement metrics' text after real reconcile passes (fake cgroupfs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::apply::{CgroupFs, FakeCgroupFs};
use crate::cgroup::PodUid;
use crate::device::DeviceNumber;
use crate::reconcile::Publication;
use crate::tier::Limits;

const UID_A: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11";
const UID_B: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a12";
const UID_C: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a13";

fn publication(volume: &str, uid: &str, minor: u32, tier: &str, limits: Limits) -> Publication {
    Publication {
        volume_id: volume.to_owned(),
        target_path: PathBuf::from(format!(
            "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/{volume}/mount"
        )),
        pod_uid: PodUid::parse(uid).unwrap(),
        device: DeviceNumber { major: 254, minor },
        tier: tier.to_owned(),
        limits,
    }
}

fn pod(root: &Path, fs: &FakeCgroupFs, uid: &str) -> PathBuf {
    let cg = root.join(format!("kubepods/burstable/pod{uid}"));
    std::fs::create_dir_all(&cg).unwrap();
    fs.add_cgroup(&cg);
    cg
}

fn batch() -> Limits {
    Limits {
        read_bps: Limit::per_sec(209_715_200),
        write_bps: Limit::per_sec(209_715_200),
        read_iops: Limit::per_sec(2000),
        write_iops: Limit::per_sec(2000),
    }
}

/// Enforcement's metrics registered alone in a registry.
struct Metrics {
    enforcement: EnforcementMetrics,
    registry: Registry,
}

impl Metrics {
    fn new() -> Metrics {
        let enforcement = EnforcementMetrics::new();
        let mut registry = Registry::default();
        enforcement.register(&mut registry);
        Metrics {
            enforcement,
            registry,
        }
    }

    fn observe(&self, report: &PassReport, reconciler: &Reconciler) {
        self.enforcement.observe(report, reconciler);
    }

    fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The text without the duration gauge's value, which no test can predict.
fn render_stable(m: &Metrics) -> String {
    m.render()
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("iolane_reconcile_last_pass_duration_seconds ") {
                "iolane_reconcile_last_pass_duration_seconds <measured>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn fresh_metrics() {
    let m = Metrics::new();
    assert_eq!(
        m.render().unwrap(),
        "# HELP iolane_reconcile_passes Reconcile passes run.\n\
         # TYPE iolane_reconcile_passes counter\n\
         iolane_reconcile_passes_total 0\n\
         # HELP iolane_reconcile_applies io.max lines written for the first time, after a tier \
         change or after a restart.\n\
         # TYPE iolane_reconcile_applies counter\n\
         iolane_reconcile_applies_total 0\n\
         # HELP iolane_reconcile_repairs io.max lines rewritten because they had changed behind \
         iolane's back.\n\
         # TYPE iolane_reconcile_repairs counter\n\
         iolane_reconcile_repairs_total 0\n\
         # HELP iolane_reconcile_pending Publications found without a pod cgroup or io \
         controller, summed over passes.\n\
         # TYPE iolane_reconcile_pending counter\n\
         iolane_reconcile_pending_total 0\n\
         # HELP iolane_reconcile_gone Publications found with their pod cgroup gone, summed over \
         passes.\n\
         # TYPE iolane_reconcile_gone counter\n\
         iolane_reconcile_gone_total 0\n\
         # HELP iolane_reconcile_errors Reconcile failures (io.max or io.stat), summed over \
         passes.\n\
         # TYPE iolane_reconcile_errors counter\n\
         iolane_reconcile_errors_total 0\n\
         # HELP iolane_reconcile_last_pass_duration_seconds How long the last reconcile pass \
         took.\n\
         # TYPE iolane_reconcile_last_pass_duration_seconds gauge\n\
         # UNIT iolane_reconcile_last_pass_duration_seconds seconds\n\
         iolane_reconcile_last_pass_duration_seconds 0.0\n\
         # HELP iolane_volume_io_limit Cap in force on a published volume, per second (IOs for \
         riops/wiops, bytes for rbps/wbps); no series for a key at max.\n\
         # TYPE iolane_volume_io_limit gauge\n\
         # HELP iolane_volume_read_ios Read IOs the pod issued to the volume (io.stat rios).\n\
         # TYPE iolane_volume_read_ios counter\n\
         # HELP iolane_volume_write_ios Write IOs the pod issued to the volume (io.stat wios).\n\
         # TYPE iolane_volume_write_ios counter\n\
         # HELP iolane_volume_read_bytes Bytes the pod read from the volume (io.stat rbytes).\n\
         # TYPE iolane_volume_read_bytes counter\n\
         # UNIT iolane_volume_read_bytes bytes\n\
         # HELP iolane_volume_write_bytes Bytes the pod wrote to the volume (io.stat wbytes).\n\
         # TYPE iolane_volume_write_bytes counter\n\
         # UNIT iolane_volume_write_bytes bytes\n\
         # EOF\n"
    );
}

#[test]
fn passes_feed_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FakeCgroupFs::new();
    let cg_a = pod(dir.path(), &fs, UID_A);
    let cg_c = pod(dir.path(), &fs, UID_C);
    let a = publication("vol-a", UID_A, 3, "batch", batch());
    // Pod B has no cgroup yet.
    let b = publication("vol-b", UID_B, 4, "batch", batch());
    // Reads capped, writes not; no IO yet, so no io.stat series.
    let c = publication(
        "vol-c",
        UID_C,
        5,
        "readcap",
        Limits {
            read_iops: Limit::per_sec(500),
            ..Limits::UNLIMITED
        },
    );
    fs.set_io_stat(
        &cg_a,
        "254:3 rbytes=1048576 wbytes=8388608 rios=256 wios=8 dbytes=0 dios=0\n\
         259:0 rbytes=40960 wbytes=0 rios=10 wios=0 dbytes=0 dios=0\n",
    );
    let mut r = Reconciler::new();
    let m = Metrics::new();
    let desired = vec![a.clone(), b.clone(), c.clone()];
    let report = r.pass(desired.clone(), dir.path(), &fs);
    m.observe(&report, &r);
    // Pod C's cap is changed behind our back, then repaired.
    fs.write_io_max(&cg_c, "254:5 rbps=max wbps=max riops=max wiops=max")
        .unwrap();
    let report = r.pass(desired, dir.path(), &fs);
    m.observe(&report, &r);

    let text = render_stable(&m);
    let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        body,
        [
            "iolane_reconcile_passes_total 2",
            "iolane_reconcile_applies_total 2",
            "iolane_reconcile_repairs_total 1",
            "iolane_reconcile_pending_total 2",
            "iolane_reconcile_gone_total 0",
            "iolane_reconcile_errors_total 0",
            "iolane_reconcile_last_pass_duration_seconds <measured>",
            &format!(
                "iolane_volume_io_limit{{volume=\"vol-a\",pod_uid=\"{UID_A}\",tier=\"batch\",key=\"riops\"}} 2000"
            ),
            &format!(
                "iolane_volume_io_limit{{volume=\"vol-a\",pod_uid=\"{UID_A}\",tier=\"batch\",key=\"wiops\"}} 2000"
            ),
            &format!(
                "iolane_volume_io_limit{{volume=\"vol-a\",pod_uid=\"{UID_A}\",tier=\"batch\",key=\"rbps\"}} 209715200"
            ),
            &format!(
                "iolane_volume_io_limit{{volume=\"vol-a\",pod_uid=\"{UID_A}\",tier=\"batch\",key=\"wbps\"}} 209715200"
            ),
            &format!(
                "iolane_volume_io_limit{{volume=\"vol-c\",pod_uid=\"{UID_C}\",tier=\"readcap\",key=\"riops\"}} 500"
            ),
            &format!("iolane_volume_read_ios_total{{volume=\"vol-a\",pod_uid=\"{UID_A}\"}} 256"),
            &format!("iolane_volume_write_ios_total{{volume=\"vol-a\",pod_uid=\"{UID_A}\"}} 8"),
            &format!(
                "iolane_volume_read_bytes_total{{volume=\"vol-a\",pod_uid=\"{UID_A}\"}} 1048576"
            ),
            &format!(
                "iolane_volume_write_bytes_total{{volume=\"vol-a\",pod_uid=\"{UID_A}\"}} 8388608"
            ),
        ]
    );

    // Pod A's volume unpublished, pod C gone: their series go.
    std::fs::remove_dir_all(&cg_c).unwrap();
    fs.remove_cgroup(&cg_c);
    let report = r.pass(vec![b, c], dir.path(), &fs);
    m.observe(&report, &r);
    let text = render_stable(&m);
    assert!(!text.contains("iolane_volume_io_limit{"), "{text}");
    assert!(!text.contains("iolane_volume_read_ios_total{"), "{text}");
    assert!(text.contains("iolane_reconcile_gone_total 1\n"), "{text}");
    assert!(text.contains("iolane_reconcile_passes_total 3\n"), "{text}");
}

#[test]
fn the_duration_gauge_holds_the_last_pass() {
    let m = Metrics::new();
    let r = Reconciler::new();
    let report = PassReport {
        duration: Duration::from_millis(1500),
        ..PassReport::default()
    };
    m.observe(&report, &r);
    assert!(
        m.render()
            .unwrap()
            .contains("\niolane_reconcile_last_pass_duration_seconds 1.5\n")
    );
}
