//! The `iolane status` client: fetches a node's `GET /status` snapshot and renders the
//! table an operator reads (pools, then each volume with its publications and live IO
//! rates between two snapshots).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Counters, NodeStatus};

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

/// `iolane status`: two snapshots `--interval` apart, printed as the table (or the later
/// one as JSON). The report is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
pub async fn run(args: &crate::config::StatusArgs) -> Result<(), Box<dyn std::error::Error>> {
    let before = fetch(args.address).await?;
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(args.interval)).await;
    let after = fetch(args.address).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&after)?);
    } else {
        print!("{}", render(&before, &after, start.elapsed().as_secs_f64()));
    }
    Ok(())
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
    if !after.devices.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:<10} {:>6} {:>10} {:>9} {:>7} {:>6} {:>9}",
            "DEVICE",
            "CAPACITY",
            "FROM",
            "SCALE",
            "STREAMING",
            "BATCH",
            "BUDGET",
            "SATUR",
            "VOLUMES"
        );
        for d in &after.devices {
            let _ = writeln!(
                out,
                "{:<16} {:>7.0} IOPS {:<10} {:>6.2} {:>10} {:>9.2} {:>7.2} {:>6} {:>3} s/{} b",
                d.name,
                d.capacity_read_iops,
                if d.capacity_source.is_empty() {
                    "-"
                } else {
                    d.capacity_source.as_str()
                },
                d.capacity_scale,
                format!(
                    "{:.2}{}",
                    d.streaming_use,
                    if d.streaming_active { " act" } else { "" }
                ),
                d.batch_use,
                d.batch_budget,
                if d.saturated { "yes" } else { "no" },
                d.streaming_publications,
                d.batch_publications,
            );
        }
        let _ = writeln!(
            out,
            "  (use and budget are fractions of the device's capacity, last period)"
        );
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "{:<36} {:<20} {:>9} {:<8} {:<10} caps (tier)",
        "VOLUME", "NAME", "SIZE", "CLASS", "TIER"
    );
    let earlier: BTreeMap<(&str, &Path), Option<Counters>> = before
        .volumes
        .iter()
        .flat_map(|v| {
            v.publications
                .iter()
                .map(move |p| ((v.id.as_str(), p.target.as_path()), p.stats))
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
                .get(&(v.id.as_str(), p.target.as_path()))
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
                p.io_max
                    .as_ref()
                    .map_or_else(|| "(cgroup not found)".to_owned(), ToString::to_string)
            );
            let _ = writeln!(out, "        {live}  at {}", p.target.display());
        }
    }
    if after.volumes.is_empty() {
        let _ = writeln!(out, "(no volumes)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DeviceStatus, PoolStatus, PublicationSnapshot, VolumeStatus};
    use iops_controller::{DeviceNumber, Limit, Limits, Outcome, PodUid};

    fn capped() -> Limits {
        Limits {
            read_iops: Limit::per_sec(200),
            write_iops: Limit::per_sec(200),
            ..Limits::UNLIMITED
        }
    }

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
        let publication = |stats| PublicationSnapshot {
            target: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount".into(),
            pod_uid: PodUid::parse("0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b").unwrap(),
            device: DeviceNumber {
                major: 254,
                minor: 3,
            },
            cgroup: Some("/sys/fs/cgroup/kubepods/pod0b6e7f9a".into()),
            io_max: Some(capped()),
            outcome: Outcome::InSync,
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
                caps: capped(),
                condition: None,
                publications: vec![publication(stats)],
            }],
            devices: vec![DeviceStatus {
                name: "nvme0n1".to_owned(),
                capacity_read_iops: 400_000.0,
                capacity_write_iops: 100_000.0,
                capacity_scale: 1.0,
                capacity_source: "calibrated".to_owned(),
                streaming_use: 0.62,
                batch_use: 0.05,
                streaming_active: true,
                batch_budget: 0.28,
                saturated: false,
                streaming_publications: 1,
                batch_publications: 4,
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
        let device = text
            .lines()
            .find(|l| l.starts_with("nvme0n1"))
            .unwrap_or_else(|| panic!("no device line:\n{text}"));
        for want in [
            "400000 IOPS",
            "calibrated",
            "0.62 act",
            "0.05",
            "0.28",
            "1 s/4 b",
        ] {
            assert!(device.contains(want), "{want:?} not in {device:?}");
        }
        // A snapshot round-trips through its JSON form.
        let s = snapshot(None);
        let back: NodeStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(render(&s, &s, 1.0).contains("no IO counters yet"));
    }
}
