//! `iolane status`: what a node holds now, for an operator at the node.
//!
//! The node serves a JSON snapshot at `GET /status` on its metrics address (volumes, their
//! tiers and caps, pools, and per publication the pod, its cgroup, the `io.max` caps in
//! place and the `io.stat` counters). `iolane status` fetches it twice, `--interval`
//! apart, and prints one line per volume with the IOPS and bandwidth between the two.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The snapshot `GET /status` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    /// `loop` or `lvm`.
    pub backend: String,
    pub pools: Vec<PoolStatus>,
    pub volumes: Vec<VolumeStatus>,
}

/// One thin pool (lvm device class) or the loop backend's state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Device class name (`loop` for the loop backend).
    pub name: String,
    /// Where it lives: `vg/pool`, or the state directory.
    pub location: String,
    pub size_bytes: u64,
    pub data_percent: f64,
    /// `None` where there is no metadata (loop backend).
    pub metadata_percent: Option<f64>,
    /// Sum of the volumes' virtual sizes.
    pub provisioned_bytes: u64,
    /// `None` when healthy, otherwise why not.
    pub problem: Option<String>,
}

/// One volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub id: String,
    pub name: String,
    pub capacity_bytes: u64,
    /// The device class (lvm) it was created in; `None` for the loop backend.
    pub device_class: Option<String>,
    pub tier: String,
    /// The caps its tier gives it now (`io.max` form: `rbps=.. wbps=.. riops=.. wiops=..`).
    pub caps: String,
    /// An abnormal volume condition (e.g. its pool is full).
    pub condition: Option<String>,
    pub publications: Vec<PublicationStatus>,
}

/// One publication of a volume to a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublicationStatus {
    pub target: String,
    pub pod_uid: String,
    /// The volume's device, `MAJ:MIN`, that the caps are keyed on.
    pub device: String,
    /// The pod's cgroup, once found.
    pub cgroup: Option<String>,
    /// The caps in the pod's `io.max` now, read for this snapshot.
    pub io_max: Option<String>,
    /// The last reconcile outcome (`InSync`, `Applied`, `Pending(NoCgroup)`, ...).
    pub outcome: String,
    /// The pod's `io.stat` counters for the device, read for this snapshot.
    pub stats: Option<Counters>,
}

/// `io.stat` counters of one device in one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rios: u64,
    pub wios: u64,
    pub rbytes: u64,
    pub wbytes: u64,
}

/// Errors of `iolane status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "GET http://{addr}/status: {reason} (is `iolane node` running with --metrics-address {addr}?)"
    )]
    Fetch { addr: SocketAddr, reason: String },
}

/// Fetches `GET /status` from a node's metrics address (HTTP/1.0, loopback or pod IP).
pub async fn fetch(addr: SocketAddr) -> Result<NodeStatus, StatusError> {
    let err = |reason: String| StatusError::Fetch { addr, reason };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /status HTTP/1.0\r\nHost: iolane\r\nAccept: application/json\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| err("no answer within 10 s".to_owned()))?
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(raw).map_err(|_| err("the answer is not UTF-8".to_owned()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("the answer has no HTTP header".to_owned()))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(err(format!("answered {status_line:?}: {}", body.trim())));
    }
    serde_json::from_str(body).map_err(|e| err(format!("not a status snapshot: {e}")))
}

/// Rates between two counter readings `secs` apart: read IOPS, write IOPS, read and write
/// bytes/s. `None` when either reading is missing or the counters went backwards (a new
/// pod or device).
pub fn rates(before: Option<Counters>, after: Option<Counters>, secs: f64) -> Option<[f64; 4]> {
    let (b, a) = (before?, after?);
    if secs <= 0.0
        || a.rios < b.rios
        || a.wios < b.wios
        || a.rbytes < b.rbytes
        || a.wbytes < b.wbytes
    {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let per_sec = |x: u64, y: u64| (y - x) as f64 / secs;
    Some([
        per_sec(b.rios, a.rios),
        per_sec(b.wios, a.wios),
        per_sec(b.rbytes, a.rbytes),
        per_sec(b.wbytes, a.wbytes),
    ])
}

fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The table `iolane status` prints: pools, then one block per volume with a line per
/// publication, IO rates from `before` to `after`.
pub fn render(before: &NodeStatus, after: &NodeStatus, secs: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {}  backend {}", after.node_id, after.backend);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<24} {:>10} {:>7} {:>7} {:>10}  problem",
        "POOL", "LOCATION", "SIZE", "DATA%", "META%", "PROVISION"
    );
    for p in &after.pools {
        #[allow(clippy::cast_precision_loss)]
        let ratio = if p.size_bytes == 0 {
            0.0
        } else {
            p.provisioned_bytes as f64 / p.size_bytes as f64
        };
        #[allow(clippy::cast_precision_loss)]
        let size = human_bytes(p.size_bytes as f64);
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:>10} {:>7.2} {:>7} {:>9.2}x  {}",
            p.name,
            p.location,
            size,
            p.data_percent,
            p.metadata_percent
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.2}")),
            ratio,
            p.problem.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<36} {:<20} {:>9} {:<8} {:<10} caps (tier)",
        "VOLUME", "NAME", "SIZE", "CLASS", "TIER"
    );
    let earlier: BTreeMap<(&str, &str), Option<Counters>> = before
        .volumes
        .iter()
        .flat_map(|v| {
            v.publications
                .iter()
                .map(move |p| ((v.id.as_str(), p.target.as_str()), p.stats))
        })
        .collect();
    for v in &after.volumes {
        let mut name = v.name.clone();
        if name.len() > 20 {
            name.truncate(19);
            name.push('~');
        }
        #[allow(clippy::cast_precision_loss)]
        let size = human_bytes(v.capacity_bytes as f64);
        let _ = writeln!(
            out,
            "{:<36} {:<20} {:>9} {:<8} {:<10} {}",
            v.id,
            name,
            size,
            v.device_class.as_deref().unwrap_or("-"),
            v.tier,
            v.caps
        );
        if let Some(c) = &v.condition {
            let _ = writeln!(out, "    condition: {c}");
        }
        for p in &v.publications {
            let before = earlier
                .get(&(v.id.as_str(), p.target.as_str()))
                .copied()
                .flatten();
            let live = match rates(before, p.stats, secs) {
                Some([r, w, rb, wb]) => format!(
                    "{r:.0} r/s {w:.0} w/s {}/s read {}/s written",
                    human_bytes(rb),
                    human_bytes(wb)
                ),
                None => "no IO counters yet".to_owned(),
            };
            let _ = writeln!(
                out,
                "    pod {} dev {} [{}] io.max: {}",
                p.pod_uid,
                p.device,
                p.outcome,
                p.io_max.as_deref().unwrap_or("(cgroup not found)")
            );
            let _ = writeln!(out, "        {live}  at {}", p.target);
        }
    }
    if after.volumes.is_empty() {
        let _ = writeln!(out, "(no volumes)");
    }
    out
}

/// Pool gauges on `/metrics`, labelled `device_class` and `location`, refreshed by the
/// node's reconcile loop: `iolane_pool_data_percent`, `iolane_pool_metadata_percent`
/// (lvm only), `iolane_pool_size_bytes`, `iolane_pool_provisioned_bytes`.
#[derive(Debug, Default, Clone)]
pub struct PoolGauges {
    data: PoolFamily,
    metadata: PoolFamily,
    size: PoolFamily,
    provisioned: PoolFamily,
}

type PoolFamily = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
>;

impl PoolGauges {
    /// Registers the four gauges.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "iolane_pool_data_percent",
            "Thin pool data usage (loop backend: the state directory's filesystem), percent",
            self.data.clone(),
        );
        registry.register(
            "iolane_pool_metadata_percent",
            "Thin pool metadata usage, percent",
            self.metadata.clone(),
        );
        registry.register(
            "iolane_pool_size_bytes",
            "Size of the pool's data (loop backend: of the filesystem)",
            self.size.clone(),
        );
        registry.register(
            "iolane_pool_provisioned_bytes",
            "Sum of the virtual sizes of the pool's volumes",
            self.provisioned.clone(),
        );
    }

    /// Sets every gauge from `pools`, dropping series of pools no longer reported.
    #[allow(clippy::cast_precision_loss)]
    pub fn update(&self, pools: &[PoolStatus]) {
        for f in [&self.data, &self.metadata, &self.size, &self.provisioned] {
            f.clear();
        }
        for p in pools {
            let labels = vec![
                ("device_class".to_owned(), p.name.clone()),
                ("location".to_owned(), p.location.clone()),
            ];
            self.data.get_or_create(&labels).set(p.data_percent);
            if let Some(m) = p.metadata_percent {
                self.metadata.get_or_create(&labels).set(m);
            }
            self.size.get_or_create(&labels).set(p.size_bytes as f64);
            self.provisioned
                .get_or_create(&labels)
                .set(p.provisioned_bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_gauges_follow_the_pools() {
        let gauges = PoolGauges::default();
        let mut registry = prometheus_client::registry::Registry::default();
        gauges.register(&mut registry);
        let pool = |name: &str, data| PoolStatus {
            name: name.to_owned(),
            location: format!("vg/{name}"),
            size_bytes: 1 << 30,
            data_percent: data,
            metadata_percent: Some(1.5),
            provisioned_bytes: 2 << 30,
            problem: None,
        };
        gauges.update(&[pool("a", 12.5), pool("b", 50.0)]);
        gauges.update(&[pool("a", 13.0)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"iolane_pool_data_percent{device_class="a",location="vg/a"} 13.0"#),
            "{text}"
        );
        assert!(!text.contains(r#"device_class="b""#), "{text}");
        assert!(text.contains("iolane_pool_provisioned_bytes"), "{text}");
    }

    use super::*;

    fn counters(rios: u64, wios: u64) -> Counters {
        Counters {
            rios,
            wios,
            rbytes: rios * 4096,
            wbytes: wios * 4096,
        }
    }

    #[test]
    fn rates_need_two_readings_that_only_grow() {
        let r = rates(Some(counters(100, 10)), Some(counters(300, 30)), 2.0).unwrap();
        assert_eq!(r, [100.0, 10.0, 409_600.0, 40_960.0]);
        assert_eq!(rates(None, Some(counters(1, 1)), 1.0), None);
        assert_eq!(rates(Some(counters(5, 1)), Some(counters(1, 1)), 1.0), None);
        assert_eq!(rates(Some(counters(1, 1)), Some(counters(1, 1)), 0.0), None);
    }

    #[test]
    fn render_shows_pools_tiers_caps_and_live_iops() {
        let publication = |stats| PublicationStatus {
            target: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount".to_owned(),
            pod_uid: "0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b".to_owned(),
            device: "254:3".to_owned(),
            cgroup: Some("/sys/fs/cgroup/kubepods/pod0b6e7f9a".to_owned()),
            io_max: Some("rbps=max wbps=max riops=200 wiops=200".to_owned()),
            outcome: "InSync".to_owned(),
            stats,
        };
        let snapshot = |stats| NodeStatus {
            node_id: "n1".to_owned(),
            backend: "lvm".to_owned(),
            pools: vec![PoolStatus {
                name: "nvme".to_owned(),
                location: "iolane/pool".to_owned(),
                size_bytes: 10 << 30,
                data_percent: 12.5,
                metadata_percent: Some(3.25),
                provisioned_bytes: 20 << 30,
                problem: None,
            }],
            volumes: vec![VolumeStatus {
                id: "iol-0123".to_owned(),
                name: "pvc-1".to_owned(),
                capacity_bytes: 1 << 30,
                device_class: Some("nvme".to_owned()),
                tier: "batch".to_owned(),
                caps: "rbps=max wbps=max riops=200 wiops=200".to_owned(),
                condition: None,
                publications: vec![publication(stats)],
            }],
        };
        let text = render(
            &snapshot(Some(counters(1000, 0))),
            &snapshot(Some(counters(1200, 0))),
            1.0,
        );
        assert!(text.contains("iolane/pool"), "{text}");
        assert!(text.contains("12.50"), "{text}");
        assert!(text.contains("2.00x"), "{text}");
        assert!(text.contains("iol-0123"), "{text}");
        assert!(text.contains("batch"), "{text}");
        assert!(text.contains("riops=200"), "{text}");
        assert!(text.contains("200 r/s 0 w/s"), "{text}");
        // A snapshot round-trips through its JSON form.
        let s = snapshot(None);
        let back: NodeStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(render(&s, &s, 1.0).contains("no IO counters yet"));
    }
}
