//! The demo's results: each run's figures, the per-volume table, and the verdict on
//! whether the tiers held.

#[allow(clippy::wildcard_imports)]
use super::*;

/// One bench run's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunFigures {
    pub iops: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl From<&BenchReport> for RunFigures {
    fn from(r: &BenchReport) -> Self {
        RunFigures {
            iops: r.mean_iops,
            p50_us: r.latency.p50_us,
            p99_us: r.latency.p99_us,
        }
    }
}

/// One volume's row of the result table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeRow {
    pub name: String,
    pub volume_id: String,
    pub tier: String,
    pub device: String,
    pub pod_uid: String,
    pub cgroup: PathBuf,
    /// The `io.max` line for the volume's device after publish; `None` when the pod's
    /// `io.max` has none (no cap).
    pub io_max_line: Option<String>,
    /// The read IOPS cap in that line (`None` = `max`): the load is random reads.
    pub limit_iops: Option<u64>,
    pub alone: Option<RunFigures>,
    pub together: RunFigures,
    /// `together.iops / limit_iops`.
    pub ratio: Option<f64>,
}

/// The whole result, also written as JSON with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoReport {
    pub duration_secs: u64,
    pub tolerance: f64,
    pub volumes: Vec<VolumeRow>,
    pub batch_held: bool,
    pub streaming_uncapped: bool,
    pub tiers_held: bool,
    pub verdict: String,
    /// `io.max` lines left for the demo's devices after unpublish (should be none).
    pub lines_after_unpublish: Vec<String>,
}

/// Whether the tiers held, and the sentence that says so.
pub fn judge(streaming: &VolumeRow, batch: &VolumeRow) -> (bool, bool, String) {
    let Some(limit) = batch.limit_iops else {
        return (
            false,
            false,
            format!(
                "tiers did NOT hold: the batch volume's pod has no read IOPS cap in io.max ({})",
                batch.io_max_line.as_deref().unwrap_or("no line")
            ),
        );
    };
    let limit = limit as f64;
    let batch_held = batch.together.iops <= limit * (1.0 + TOLERANCE);
    let uncapped_line = streaming.limit_iops.is_none();
    let above = streaming.together.iops > limit * (1.0 + TOLERANCE);
    let alone = streaming.alone.map_or(0.0, |a| a.iops);
    let streaming_uncapped = uncapped_line && above;
    let mut v = String::new();
    let _ = write!(
        v,
        "batch: {:.0} IOPS for a limit of {limit:.0} ({:.2}x, {} {:.0}%); ",
        batch.together.iops,
        batch.together.iops / limit,
        if batch_held {
            "held within"
        } else {
            "ABOVE the limit by more than"
        },
        TOLERANCE * 100.0
    );
    if !uncapped_line {
        let _ = write!(
            v,
            "streaming: CAPPED by io.max ({}); ",
            streaming.io_max_line.as_deref().unwrap_or("")
        );
    } else if above {
        let _ = write!(
            v,
            "streaming: uncapped, {:.0} IOPS next to batch ({:.0} alone, {:.1}x the batch limit); ",
            streaming.together.iops,
            alone,
            streaming.together.iops / limit
        );
    } else {
        let _ = write!(
            v,
            "streaming: no cap in io.max, but {:.0} IOPS ({:.0} alone) is not above the batch \
             limit, so this machine cannot show the difference (try --batch-iops {:.0}); ",
            streaming.together.iops,
            alone,
            (alone / 4.0).max(1.0)
        );
    }
    let held = batch_held && streaming_uncapped;
    v.push_str(if held {
        "the tiers held"
    } else {
        "the tiers did NOT hold"
    });
    (batch_held, streaming_uncapped, v)
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}ms", v / 1000.0)
    } else {
        format!("{v:.0}us")
    }
}

/// The result table, one row per volume.
pub fn table(rows: &[VolumeRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<10} {:<10} {:>12} {:>10} {:>10} {:>12} {:>17} {:>17}",
        "volume",
        "tier",
        "limit (IOPS)",
        "alone",
        "together",
        "together/lim",
        "p50/p99 alone",
        "p50/p99 together"
    );
    for r in rows {
        let dash = || "-".to_owned();
        let _ = writeln!(
            t,
            "{:<10} {:<10} {:>12} {:>10} {:>10.0} {:>12} {:>17} {:>17}",
            r.name,
            r.tier,
            r.limit_iops
                .map_or_else(|| "max".to_owned(), |l| l.to_string()),
            r.alone.map_or_else(dash, |a| format!("{:.0}", a.iops)),
            r.together.iops,
            r.ratio.map_or_else(dash, |x| format!("{x:.3}")),
            r.alone
                .map_or_else(dash, |a| format!("{}/{}", us(a.p50_us), us(a.p99_us))),
            format!("{}/{}", us(r.together.p50_us), us(r.together.p99_us)),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tier: &str, limit: Option<u64>, alone: Option<f64>, together: f64) -> VolumeRow {
        let f = |iops| RunFigures {
            iops,
            p50_us: 100.0,
            p99_us: 25_000.0,
        };
        VolumeRow {
            name: tier.to_owned(),
            volume_id: "iol-x".to_owned(),
            tier: tier.to_owned(),
            device: "7:0".to_owned(),
            pod_uid: "u".to_owned(),
            cgroup: PathBuf::from("/c"),
            io_max_line: limit.map(|l| format!("7:0 rbps=max wbps=max riops={l} wiops={l}")),
            limit_iops: limit,
            alone: alone.map(f),
            together: f(together),
            ratio: limit.map(|l| together / l as f64),
        }
    }

    #[test]
    fn judging_the_tiers() {
        let s = row("streaming", None, Some(3400.0), 3000.0);
        let (b, u, v) = judge(&s, &row("batch", Some(200), None, 199.0));
        assert!(b && u, "{v}");
        assert!(v.ends_with("the tiers held"), "{v}");
        // Batch above its limit beyond the tolerance.
        let (b, _, v) = judge(&s, &row("batch", Some(200), None, 260.0));
        assert!(!b && v.contains("ABOVE"), "{v}");
        // Streaming capped in io.max.
        let capped = row("streaming", Some(200), Some(200.0), 200.0);
        let (_, u, v) = judge(&capped, &row("batch", Some(200), None, 199.0));
        assert!(!u && v.contains("CAPPED"), "{v}");
        // A machine too slow to go above the batch limit at all.
        let slow = row("streaming", None, Some(150.0), 120.0);
        let (b, u, v) = judge(&slow, &row("batch", Some(2000), None, 100.0));
        assert!(b && !u && v.contains("--batch-iops"), "{v}");
        // No cap written for batch.
        let (b, _, v) = judge(&s, &row("batch", None, None, 3000.0));
        assert!(!b && v.contains("no read IOPS cap"), "{v}");
    }

    #[test]
    fn the_table_has_a_row_per_volume() {
        let t = table(&[
            row("streaming", None, Some(3400.0), 3012.4),
            row("batch", Some(200), None, 198.6),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].contains("max") && lines[1].contains("3400") && lines[1].contains("3012"));
        assert!(
            lines[2].contains("200") && lines[2].contains("0.993") && lines[2].contains("25.0ms")
        );
    }
}
