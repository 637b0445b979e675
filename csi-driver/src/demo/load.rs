//! The demo's IO: the calibration of the disk under the work directory, each volume made
//! ready for reads that reach that disk, and the load runs (`iolane bench` children in the
//! pods' cgroups) with the device controller's state sampled while they run.

use super::run::line_for;
#[allow(clippy::wildcard_imports)]
use super::*;

use iops_controller::priority::{Calibration, CalibrationStore, DeviceModel, DeviceState};

/// Seconds of the disk's measurement before the node starts.
const CALIBRATE_SECS: u64 = 3;
/// The part of a run that is not counted: its children's start-up, and the second issue 9
/// gives the controllers to react.
const UNCOUNTED: Duration = Duration::from_secs(1);
/// How often the device controller's state and the pods' `io.max` are sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// What a child command (`losetup`, `dd`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Measures the disk under the work directory for the priority controllers and stores the
/// result as its calibration in `state`'s `calibration/` (where the node reads a device's
/// capacity when it starts controlling it, as after `iolane bench --calibrate`): the
/// demo's own load, 4 KiB random reads at queue depth 32, on a written scratch file in
/// `tmp`, counted from +1 s, for reads and writes alike. Prints and returns the summary, or
/// `None` when it failed (said why: the controllers then start from `default_iops` and
/// correct it online).
///
/// Not `iolane bench --calibrate` itself: its four runs include 1 MiB sequential ones,
/// which on the test VM's throttled disk completed no IO in their 3 s; the demo's load is
/// random 4 KiB reads, whose rate is all its controller's model needs.
#[allow(clippy::print_stdout)]
pub(super) async fn calibrate(exe: &str, tmp: &Path, state: &Path, sys: &Path) -> Option<String> {
    match try_calibrate(exe, tmp, state, sys).await {
        Ok(line) => {
            println!("{line}");
            Some(line)
        }
        Err(e) => {
            println!(
                "measuring the disk failed ({e}); the controllers start from the node config's \
                 default_iops and correct it online"
            );
            None
        }
    }
}

async fn try_calibrate(
    exe: &str,
    tmp: &Path,
    state: &Path,
    sys: &Path,
) -> Result<String, DemoError> {
    let scratch = tmp.join("calibrate.img");
    let json = tmp.join("calibrate.json");
    let measured = async {
        fill(&scratch, "conv=fsync").await?;
        let (_, name, identity) = crate::bench::calibrate::device_of(&scratch, sys)
            .map_err(|e| step("the disk under the work directory", e))?;
        let r = bench(exe, &scratch, None, &json, CALIBRATE_SECS).await?;
        Ok::<_, DemoError>((name, identity, RunFigures::from(&r).iops))
    }
    .await;
    let _ = std::fs::remove_file(&scratch);
    let (name, identity, iops) = measured?;
    if !(iops.is_finite() && iops > 0.0) {
        return Err(step("measuring the disk", "no IO completed"));
    }
    let c = Calibration {
        identity,
        name,
        model: DeviceModel {
            read_iops: iops,
            write_iops: iops,
            read_bps: iops * 4096.0,
            write_bps: iops * 4096.0,
        },
        measured_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let path = CalibrationStore::in_state_dir(state)
        .save(&c)
        .map_err(|e| step(format!("storing the calibration in {}", state.display()), e))?;
    Ok(format!(
        "the disk's capacity, for the priority controllers: {} ({}), 4 KiB random reads at \
         queue depth 32 for {CALIBRATE_SECS} s on a scratch file there: {iops:.0} IOPS; stored \
         as its calibration in {} (the controllers read it when they start controlling the \
         device)",
        c.name,
        c.identity,
        path.display()
    ))
}

/// Makes `v`'s reads reach the disk: its loop device switched to direct IO (the backend
/// attaches it buffered, and a read served from the image's page cache never reaches the
/// disk), and the load's span written (a read of a hole never reaches it either).
#[allow(clippy::print_stdout)]
pub(super) async fn prepare(os: &Os, topology: &Topology, v: &DemoVolume) -> Result<(), DemoError> {
    let dev = v
        .device
        .ok_or_else(|| step("publish", "no device number"))?;
    let name = topology.name(dev).ok_or_else(|| {
        step(
            format!("the device {dev} of {}", v.name),
            "no name in sysfs",
        )
    })?;
    let node = os.roots().dev.join(&name);
    let dio = Cmd::new("losetup", COMMAND_TIMEOUT)
        .arg("--direct-io=on")
        .arg(&node);
    let out = SystemRunner.run(&dio).await?;
    let flag = os.roots().sys.join(format!("dev/block/{dev}/loop/dio"));
    let on = std::fs::read_to_string(&flag).is_ok_and(|t| t.trim() == "1");
    if out.status != Some(0) || !on {
        println!(
            "  {}: direct IO not available on {name} ({}): its reads may come from the page \
             cache, not the disk",
            v.name,
            out.stderr.trim()
        );
    }
    fill(&v.target, "oflag=direct").await
}

/// Writes the first [`SPAN_BYTES`] of `target` with `dd` (`flag`: how the data gets to
/// the disk).
async fn fill(target: &Path, flag: &str) -> Result<(), DemoError> {
    let dd = Cmd::new("dd", COMMAND_TIMEOUT)
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={}", SPAN_BYTES >> 20))
        .arg(flag)
        .arg("status=none");
    let out = SystemRunner.run(&dd).await?;
    if out.status != Some(0) {
        return Err(out.into_error(&dd).into());
    }
    Ok(())
}

/// What every load run needs.
pub(super) struct Load<'a> {
    pub exe: &'a str,
    pub enforcement: &'a Enforcement,
    pub os: &'a Os,
    /// Where the bench reports go.
    pub dir: PathBuf,
    pub secs: u64,
    /// All the demo's volumes, the streaming one first.
    pub volumes: &'a [DemoVolume],
}

impl Load<'_> {
    /// Runs a bench on each of `on` at once, sampling the device controller's state and
    /// every volume's `io.max` line from +1 s until the benches' duration is over; prints
    /// and returns the run's row.
    #[allow(clippy::print_stdout)]
    pub async fn run(&self, name: &str, on: &[DemoVolume]) -> Result<RunRow, DemoError> {
        println!("  {name}");
        let tag = name.replace([' ', '+', ','], "-");
        let benches = futures_util::future::try_join_all(on.iter().map(|v| {
            let json = self.dir.join(format!("{tag}-{}.json", v.name));
            async move { bench(self.exe, &v.target, Some(&v.cgroup), &json, self.secs).await }
        }));
        tokio::pin!(benches);
        let start = Instant::now();
        let load_for = Duration::from_secs(self.secs);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        let mut states: Vec<DeviceState> = Vec::new();
        let mut lines = Vec::new();
        let reports = loop {
            tokio::select! {
                r = &mut benches => break r?,
                _ = tick.tick() => {
                    let at = start.elapsed();
                    // While the benches load the device: not when they are done and the
                    // controllers see idle volumes.
                    if at >= UNCOUNTED && at < load_for {
                        states.extend(self.enforcement.priority_devices().await);
                        lines = self.io_max_lines();
                    }
                }
            }
        };
        let mut row = RunRow {
            name: name.to_owned(),
            streaming: None,
            batch: Vec::new(),
            controller: view(&states),
            io_max_at_end: lines,
        };
        for (v, r) in on.iter().zip(&reports) {
            let each: Vec<String> = r.per_second.iter().map(|s| s.iops().to_string()).collect();
            println!("    {:<10} IOPS per second: {}", v.name, each.join(" "));
            if v.tier == keys::STREAMING {
                row.streaming = Some(RunFigures::from(r));
            } else {
                row.batch.push(RunFigures::from(r));
            }
        }
        for (volume, line) in &row.io_max_at_end {
            println!(
                "    io.max of {volume:<10} near the run's end: {}",
                line.as_deref().unwrap_or("no line (max)")
            );
        }
        Ok(row)
    }

    /// Each volume's `io.max` line for its device now.
    fn io_max_lines(&self) -> Vec<(String, Option<String>)> {
        self.volumes
            .iter()
            .map(|v| {
                let line = v.device.and_then(|dev| {
                    let text = self.os.read_io_max(&v.cgroup).ok()?;
                    line_for(&text, dev)
                });
                (v.name.clone(), line)
            })
            .collect()
    }
}

/// The controller's state over a run's sampled passes (the device with the most
/// publications, the demo's only one).
fn view(states: &[DeviceState]) -> Option<ControllerView> {
    let pubs = |s: &DeviceState| s.publications.0 + s.publications.1;
    let device = states.iter().max_by_key(|s| pubs(s))?.name.clone();
    let mine: Vec<&DeviceState> = states.iter().filter(|s| s.name == device).collect();
    let last = mine.last()?;
    let budgets: Vec<f64> = mine.iter().map(|s| s.report.batch_budget).collect();
    Some(ControllerView {
        device,
        capacity_iops: last.report.capacity.read_iops,
        capacity_source: last.source.as_str().to_owned(),
        budget_mean: budgets.iter().sum::<f64>() / budgets.len() as f64,
        budget_min: budgets.iter().copied().fold(f64::INFINITY, f64::min),
        budget_max: budgets.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        passes: mine.len(),
    })
}

/// Runs `iolane bench` (random 4 KiB reads, queue depth 32) on the first [`SPAN_BYTES`] of
/// `target`, inside `cgroup` when given, as a child process (the bench moves its whole
/// process into the cgroup), and reads its JSON report.
async fn bench(
    exe: &str,
    target: &Path,
    cgroup: Option<&Path>,
    json: &Path,
    secs: u64,
) -> Result<BenchReport, DemoError> {
    let mut cmd = Cmd::program_path(exe.to_owned(), Duration::from_secs(secs) + BENCH_SLACK)
        .arg("--log")
        .arg("warn")
        .arg("bench")
        .arg("--target")
        .arg(target)
        .arg("--pattern")
        .arg("randread")
        .arg("--duration")
        .arg(secs.to_string())
        .arg("--size-limit")
        .arg(SPAN_BYTES.to_string())
        .arg("--json")
        .arg(json);
    if let Some(cgroup) = cgroup {
        cmd = cmd.arg("--cgroup").arg(cgroup);
    }
    let out = SystemRunner.run(&cmd).await?;
    if out.status != Some(0) {
        return Err(out.into_error(&cmd).into());
    }
    let text = std::fs::read_to_string(json).map_err(|e| crate::os::Error::io("read", json, e))?;
    serde_json::from_str(&text).map_err(|e| step(format!("reading {}", json.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iops_controller::priority::{CapacitySource, DeviceModel, DeviceReport};

    fn state(name: &str, budget: f64, iops: f64, pubs: (usize, usize)) -> DeviceState {
        DeviceState {
            name: name.to_owned(),
            report: DeviceReport {
                capacity: DeviceModel::uniform_iops(iops),
                capacity_scale: 1.0,
                streaming_use: 0.9,
                batch_use: 0.05,
                streaming_active: true,
                streaming_backlogged: true,
                batch_budget: budget,
                saturated: true,
            },
            source: CapacitySource::Calibrated,
            publications: pubs,
        }
    }

    #[test]
    fn the_controller_view_of_a_run() {
        assert_eq!(view(&[]), None);
        let v = view(&[
            state("nvme0n1", 0.05, 400.0, (1, 4)),
            state("sda", 1.25, 9000.0, (0, 1)),
            state("nvme0n1", 0.05, 410.0, (1, 4)),
            state("nvme0n1", 0.08, 420.0, (1, 4)),
        ])
        .unwrap();
        assert_eq!(v.device, "nvme0n1");
        assert_eq!(v.passes, 3);
        assert!((v.budget_mean - 0.06).abs() < 1e-9, "{v:?}");
        assert_eq!((v.budget_min, v.budget_max), (0.05, 0.08));
        assert_eq!(
            (v.capacity_iops, v.capacity_source.as_str()),
            (420.0, "calibrated")
        );
    }
}
