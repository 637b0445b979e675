//! The demo's results: each load run's figures and what the device's priority controller
//! had in force, the table, and the verdict on whether streaming's priority held and the
//! device's capacity was conserved.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Streaming next to batch keeps at least this share of its solo rate (issue 9).
pub const STREAMING_KEPT: f64 = 0.90;
/// Batch alone (streaming idle) gets at least this share of the device (issue 9).
pub const WORK_CONSERVED: f64 = 0.85;
/// Batch next to a saturating streaming job gets its floor within this fraction (issue 9).
pub const FLOOR_SLACK: f64 = 0.20;

/// One bench's figures. The rate leaves out the first second (the children's start-up,
/// and the second issue 9 gives the controllers to react).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFigures {
    pub iops: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The IOPS of each second of the run, the first one included.
    pub per_second: Vec<u64>,
}

impl From<&BenchReport> for RunFigures {
    fn from(r: &BenchReport) -> Self {
        let counted = r.per_second.get(1..).unwrap_or_default();
        let iops = if counted.is_empty() {
            r.mean_iops
        } else {
            counted.iter().map(|s| s.iops() as f64).sum::<f64>() / counted.len() as f64
        };
        RunFigures {
            iops,
            p50_us: r.latency.p50_us,
            p99_us: r.latency.p99_us,
            per_second: r.per_second.iter().map(IntervalStats::iops).collect(),
        }
    }
}

/// What the controller of the demo's device had in force during a run, from the passes
/// after its first second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerView {
    /// The physical device's kernel name.
    pub device: String,
    /// The read IOPS the controller's model gave the device at the run's end (its
    /// starting capacity times the online correction).
    pub capacity_iops: f64,
    /// Where its starting capacity came from (`calibrated`, `config`, `default`).
    pub capacity_source: String,
    /// The batch class budget, as a fraction of the device: mean, least and most.
    pub budget_mean: f64,
    pub budget_min: f64,
    pub budget_max: f64,
    /// Passes seen.
    pub passes: usize,
}

/// One load run: what ran and what it got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub name: String,
    /// The streaming volume's figures, when it ran.
    pub streaming: Option<RunFigures>,
    /// Each batch volume's figures, when they ran.
    pub batch: Vec<RunFigures>,
    /// `None` when the controllers reported no device during the run.
    pub controller: Option<ControllerView>,
    /// Each volume's `io.max` line at the last sample before the run's end (the
    /// controllers' writes in force while the load ran).
    pub io_max_at_end: Vec<(String, Option<String>)>,
}

impl RunRow {
    /// The batch class's IOPS, when it ran.
    pub fn batch_iops(&self) -> Option<f64> {
        (!self.batch.is_empty()).then(|| self.batch.iter().map(|f| f.iops).sum())
    }
}

/// The whole result, also written as JSON with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoReport {
    pub duration_secs: u64,
    /// How the controllers got the device's capacity.
    pub calibration: Option<String>,
    pub floor: f64,
    pub runs: Vec<RunRow>,
    pub judgement: Judgement,
    /// `io.max` lines left for the demo's devices after unpublish (should be none).
    pub lines_after_unpublish: Vec<String>,
}

/// The three lines of issue 9 the demo checks, with the figures behind them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// Streaming's rate next to batch over its rate alone.
    pub streaming_kept: f64,
    /// The batch class next to streaming, as a fraction of the device.
    pub batch_next_to_streaming: f64,
    /// The batch class alone, as a fraction of the device.
    pub batch_alone: f64,
    pub priority_held: bool,
    pub floor_held: bool,
    pub work_conserved: bool,
    /// All three, and the controllers saw the device.
    pub held: bool,
    pub verdict: String,
}

/// Judges the three runs (streaming alone, all together, batch alone). The device's rate
/// is what streaming got alone: one job at queue depth 32 saturates an IO-bound device.
pub fn judge(alone: &RunRow, together: &RunRow, batch_alone: &RunRow, floor: f64) -> Judgement {
    let solo = alone.streaming.as_ref().map_or(0.0, |f| f.iops);
    let ratio = |v: f64| if solo > 0.0 { v / solo } else { 0.0 };
    let next = together.streaming.as_ref().map_or(0.0, |f| f.iops);
    let streaming_kept = ratio(next);
    let batch_next = together.batch_iops().unwrap_or(0.0);
    let batch_next_to_streaming = ratio(batch_next);
    let batch_solo = batch_alone.batch_iops().unwrap_or(0.0);
    let batch_alone_share = ratio(batch_solo);
    let priority_held = streaming_kept >= STREAMING_KEPT;
    let floor_min = floor * (1.0 - FLOOR_SLACK);
    let floor_held = batch_next_to_streaming >= floor_min;
    let work_conserved = batch_alone_share >= WORK_CONSERVED;
    let seen = together.controller.is_some() && batch_alone.controller.is_some();
    let held = priority_held && floor_held && work_conserved && seen && solo > 0.0;
    let n = together.batch.len();
    let mut v = String::new();
    if solo <= 0.0 {
        v.push_str("streaming completed no IO alone, so there is nothing to compare; ");
    }
    let _ = write!(
        v,
        "streaming next to {n} batch volume{}: {next:.0} IOPS, {streaming_kept:.2} of its \
         {solo:.0} alone ({} {STREAMING_KEPT:.2}); ",
        if n == 1 { "" } else { "s" },
        if priority_held {
            "priority held, at least"
        } else {
            "priority NOT held, below"
        },
    );
    let _ = write!(
        v,
        "batch next to streaming: {batch_next:.0} IOPS, {batch_next_to_streaming:.2} of the \
         device ({} its floor {floor:.2} less {:.0} %); ",
        if floor_held {
            "not starved: at least"
        } else {
            "STARVED: below"
        },
        FLOOR_SLACK * 100.0
    );
    let _ = write!(
        v,
        "batch alone while streaming idles: {batch_solo:.0} IOPS, {batch_alone_share:.2} of the \
         device ({} {WORK_CONSERVED:.2}); ",
        if work_conserved {
            "work conserving: at least"
        } else {
            "NOT work conserving: below"
        },
    );
    if !seen {
        v.push_str(
            "the priority controllers reported no device during a run (their warnings are in \
             the log); ",
        );
    }
    v.push_str(if held {
        "the priority held"
    } else {
        "the priority did NOT hold"
    });
    Judgement {
        streaming_kept,
        batch_next_to_streaming,
        batch_alone: batch_alone_share,
        priority_held,
        floor_held,
        work_conserved,
        held,
        verdict: v,
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}ms", v / 1000.0)
    } else {
        format!("{v:.0}us")
    }
}

/// The result table, one row per run; the device's rate is streaming's rate alone.
pub fn table(runs: &[RunRow]) -> String {
    let solo = runs
        .first()
        .and_then(|r| r.streaming.as_ref())
        .map_or(0.0, |f| f.iops);
    let share = |v: f64| {
        if solo > 0.0 {
            format!("{:.2}", v / solo)
        } else {
            "-".to_owned()
        }
    };
    let dash = || "-".to_owned();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<26} {:>9} {:>7} {:>17} {:>24} {:>12} {:>10} {:>16}",
        "run",
        "streaming",
        "of solo",
        "p50/p99 streaming",
        "batch (per volume)",
        "batch/device",
        "budget",
        "capacity"
    );
    for r in runs {
        let batch = r.batch_iops().map_or_else(dash, |b| {
            let each: Vec<String> = r.batch.iter().map(|f| format!("{:.0}", f.iops)).collect();
            format!("{b:.0} ({})", each.join("/"))
        });
        let budget = r.controller.as_ref().map_or_else(dash, |c| {
            if c.budget_max - c.budget_min < 0.005 {
                format!("{:.2}", c.budget_mean)
            } else {
                format!("{:.2}-{:.2}", c.budget_min, c.budget_max)
            }
        });
        let capacity = r.controller.as_ref().map_or_else(dash, |c| {
            format!("{:.0} {}", c.capacity_iops, c.capacity_source)
        });
        let _ = writeln!(
            t,
            "{:<26} {:>9} {:>7} {:>17} {:>24} {:>12} {:>10} {:>16}",
            r.name,
            r.streaming
                .as_ref()
                .map_or_else(dash, |f| format!("{:.0}", f.iops)),
            r.streaming.as_ref().map_or_else(dash, |f| share(f.iops)),
            r.streaming.as_ref().map_or_else(dash, |f| format!(
                "{}/{}",
                us(f.p50_us),
                us(f.p99_us)
            )),
            batch,
            r.batch_iops().map_or_else(dash, share),
            budget,
            capacity,
        );
    }
    t
}

/// What the table's columns mean.
pub const LEGEND: &str = "\
  streaming, batch: IOPS from +1 s to the run's end; of solo: streaming's rate over its rate
  alone; batch/device: the batch class over the device's rate (streaming's alone); budget:
  the batch class budget the device's controller had in force (a fraction of the device;
  1.25 = all of it plus a probe, while streaming idles), over its passes from +1 s;
  capacity: the controller's read IOPS model at the run's end (the measured rate times
  its online correction) and where it started from";

#[cfg(test)]
mod tests {
    use super::*;

    fn f(iops: f64) -> RunFigures {
        RunFigures {
            iops,
            p50_us: 100.0,
            p99_us: 25_000.0,
            per_second: Vec::new(),
        }
    }

    fn view(budget: f64) -> Option<ControllerView> {
        Some(ControllerView {
            device: "nvme0n1".to_owned(),
            capacity_iops: 400.0,
            capacity_source: "calibrated".to_owned(),
            budget_mean: budget,
            budget_min: budget,
            budget_max: budget,
            passes: 40,
        })
    }

    fn run(name: &str, streaming: Option<f64>, batch: &[f64], budget: f64) -> RunRow {
        RunRow {
            name: name.to_owned(),
            streaming: streaming.map(f),
            batch: batch.iter().copied().map(f).collect(),
            controller: view(budget),
            io_max_at_end: Vec::new(),
        }
    }

    #[test]
    fn judging_the_priority() {
        let alone = run("streaming alone", Some(400.0), &[], 1.25);
        let together = run("all", Some(372.0), &[6.0, 6.0, 5.0, 7.0], 0.05);
        let batch = run("batch alone", None, &[99.0, 98.0, 100.0, 97.0], 1.25);
        let j = judge(&alone, &together, &batch, 0.05);
        assert!(j.held, "{}", j.verdict);
        assert!((j.streaming_kept - 0.93).abs() < 1e-9);
        assert!((j.batch_next_to_streaming - 0.06).abs() < 1e-9);
        assert!(j.verdict.ends_with("the priority held"), "{}", j.verdict);
        // Static caps as issue 9 found them: streaming squeezed.
        let squeezed = run("all", Some(80.0), &[80.0, 80.0, 80.0, 80.0], 1.25);
        let j = judge(&alone, &squeezed, &batch, 0.05);
        assert!(!j.priority_held && !j.held && j.verdict.contains("NOT held"));
        // Batch starved next to streaming: below the floor less its slack (0.04 here).
        let starved = run("all", Some(390.0), &[3.0, 3.0, 3.0, 3.0], 0.05);
        let j = judge(&alone, &starved, &batch, 0.05);
        assert!(!j.floor_held && !j.held && j.verdict.contains("STARVED"));
        // A static cap holding batch alone to a fraction of an idle device.
        let capped = run("batch alone", None, &[9.0, 9.0, 9.0, 9.0], 1.25);
        let j = judge(&alone, &together, &capped, 0.05);
        assert!(!j.work_conserved && !j.held && j.verdict.contains("NOT work"));
        // The controllers never saw the device.
        let unseen = RunRow {
            controller: None,
            ..together.clone()
        };
        let j = judge(&alone, &unseen, &batch, 0.05);
        assert!(
            !j.held && j.verdict.contains("reported no device"),
            "{}",
            j.verdict
        );
        // Nothing alone: nothing to compare, not a pass.
        let none = run("streaming alone", Some(0.0), &[], 1.25);
        assert!(!judge(&none, &together, &batch, 0.05).held);
    }

    #[test]
    fn the_table_has_a_row_per_run() {
        let mut together = run(
            "streaming + 4 batch",
            Some(372.0),
            &[6.0, 6.0, 5.0, 7.0],
            0.05,
        );
        if let Some(c) = together.controller.as_mut() {
            c.budget_max = 0.07;
        }
        let t = table(&[
            run("streaming alone", Some(400.0), &[], 1.25),
            together,
            run(
                "4 batch, streaming idle",
                None,
                &[99.0, 98.0, 100.0, 97.0],
                1.25,
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[1].contains("1.00") && lines[1].contains("25.0ms"),
            "{t}"
        );
        assert!(
            lines[2].contains("0.93")
                && lines[2].contains("24 (6/6/5/7)")
                && lines[2].contains("0.06")
                && lines[2].contains("0.05-0.07")
                && lines[2].contains("400 calibrated"),
            "{t}"
        );
        assert!(
            lines[3].contains("394 (99/98/100/97)") && lines[3].contains("0.98"),
            "{t}"
        );
    }

    #[test]
    fn a_run_is_counted_from_its_second_second() {
        let mut r: BenchReport = serde_json::from_str(SAMPLE).unwrap();
        let at = |iops| crate::bench::IntervalStats {
            read_iops: iops,
            write_iops: 0,
            read_bps: 0,
            write_bps: 0,
        };
        r.per_second = vec![at(100), at(400), at(380)];
        assert!((RunFigures::from(&r).iops - 390.0).abs() < 1e-9);
        r.per_second = vec![at(100)];
        assert!((RunFigures::from(&r).iops - r.mean_iops).abs() < 1e-9);
    }

    const SAMPLE: &str = r#"{"target":"/dev/loop0","pattern":{"kind":"randread"},"block_size":4096,
        "queue_depth":32,"direct":true,"span_bytes":1048576,"cgroup":null,"duration_secs":3,
        "per_second":[],"read_ios":880,"write_ios":0,"read_bytes":0,"write_bytes":0,
        "total_ios":880,"total_bytes":0,"mean_iops":293.3,"mean_read_iops":293.3,
        "mean_write_iops":0.0,
        "latency":{"ios":880,"mean_us":1.0,"p50_us":1.0,"p99_us":2.0,"max_us":3.0},
        "read_latency":{"ios":880,"mean_us":1.0,"p50_us":1.0,"p99_us":2.0,"max_us":3.0},
        "write_latency":{"ios":0,"mean_us":0.0,"p50_us":0.0,"p99_us":0.0,"max_us":0.0}}"#;
}
