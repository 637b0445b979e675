//! Figures: a phase's samples and their summary (nearest-rank percentiles), the processes
//! the driver spawned per RPC, and the printed table.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::STEPS_DRIVER;

/// One cycle's step times, in seconds, in step order.
pub(crate) type Sample = Vec<f64>;

pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) steps: &'static [&'static str],
    pub(crate) samples: Vec<Sample>,
    pub(crate) wall: f64,
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub(crate) fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    json!({"n": v.len(), "p50": pct(&v, 50.0), "p99": pct(&v, 99.0), "mean": mean,
           "min": v.first().copied().unwrap_or(f64::NAN), "max": v.last().copied().unwrap_or(f64::NAN)})
}

impl Phase {
    pub(crate) fn summary(&self) -> Value {
        let cycles: Vec<f64> = self.samples.iter().map(|s| s.iter().sum()).collect();
        let mut steps = serde_json::Map::new();
        for (i, s) in self.steps.iter().enumerate() {
            steps.insert(
                (*s).to_owned(),
                stats(self.samples.iter().map(|x| x[i]).collect()),
            );
        }
        json!({
            "cycles": self.samples.len(),
            "wall_s": self.wall,
            "cycles_per_s": self.samples.len() as f64 / self.wall,
            "cycle_s": stats(cycles),
            "steps_s": steps,
        })
    }
}

pub(crate) fn program_of(argv: &str) -> String {
    argv.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches('"')
        .to_owned()
}

pub(crate) fn spawn_report(spawns: &[Vec<Vec<String>>]) -> Value {
    // spawns[cycle][rpc] = argv lines.
    let mut out = serde_json::Map::new();
    for (r, rpc) in STEPS_DRIVER.iter().enumerate() {
        let mut programs: BTreeMap<String, usize> = BTreeMap::new();
        let mut total = 0;
        for c in spawns {
            for a in &c[r] {
                *programs.entry(program_of(a)).or_default() += 1;
                total += 1;
            }
        }
        let n = spawns.len().max(1) as f64;
        let per: BTreeMap<String, f64> = programs
            .into_iter()
            .map(|(k, v)| (k, v as f64 / n))
            .collect();
        let example = spawns.first().map(|c| c[r].clone()).unwrap_or_default();
        out.insert(
            (*rpc).to_owned(),
            json!({"spawns_per_call": total as f64 / n, "by_program": per, "argv_first_cycle": example}),
        );
    }
    Value::Object(out)
}

pub(crate) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub(crate) fn print_table(phases: &[&Phase], report: &Value) {
    println!();
    println!(
        "{:<20} {:>7} {:>9} {:>9} {:>9} {:>10}",
        "phase", "cycles", "p50 s", "p99 s", "mean s", "cycles/s"
    );
    for p in phases {
        let s = &report["phases"][&p.name];
        println!(
            "{:<20} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>10.3}",
            p.name,
            s["cycles"],
            f(&s["cycle_s"]["p50"]),
            f(&s["cycle_s"]["p99"]),
            f(&s["cycle_s"]["mean"]),
            f(&s["cycles_per_s"])
        );
    }
    println!();
    println!("per step (p50 / p99, seconds):");
    for p in phases {
        let s = &report["phases"][&p.name]["steps_s"];
        let cells: Vec<String> = p
            .steps
            .iter()
            .map(|k| format!("{k} {:.3}/{:.3}", f(&s[*k]["p50"]), f(&s[*k]["p99"])))
            .collect();
        println!("  {:<18} {}", p.name, cells.join("  "));
    }
    println!();
    println!(
        "ratio driver/raw, cycle p50: sequential {:.2}x, concurrent {:.2}x",
        f(&report["ratio_p50"]["sequential"]),
        f(&report["ratio_p50"]["concurrent"])
    );
    println!(
        "ratio driver/raw, cycles/s:  sequential {:.2}x, concurrent {:.2}x",
        f(&report["ratio_throughput"]["sequential"]),
        f(&report["ratio_throughput"]["concurrent"])
    );
    println!();
    println!("driver process spawns per RPC (sequential phase, mean per call):");
    for rpc in STEPS_DRIVER {
        let s = &report["driver_spawns"][*rpc];
        println!(
            "  {:<14} {:>4.1}  {}",
            rpc,
            f(&s["spawns_per_call"]),
            s["by_program"]
        );
    }
}
