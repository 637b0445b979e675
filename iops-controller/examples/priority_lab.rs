//! The priority lab's controller (issue 9): runs `iops_controller::priority`'s control law
//! against a real kernel, for `tests/vm/priority-guest.sh` inside the test VM. Not part of
//! the node: the node will feed the same law from its reconciler.
//!
//! Every `--period-ms` it reads each volume's `/sys/block/dm-N/stat` (completed IOs,
//! sectors, in flight) and the physical device's stat (weighted time in queue), makes one
//! pass of a `DeviceController` and writes each batch pod's `io.max` line keyed on the
//! volume's own device. It stops when `--stop FILE` exists, lifting every cap it wrote.
//!
//! ```text
//! priority_lab --capacity IOPS --device nvme0n1 --streaming dm-4 \
//!     --batch CGROUP_DIR:dm-5 ... --log FILE --stop FILE [--period-ms 100] [--floor F]
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iops_controller::priority::{
    Counters, DeviceController, DeviceModel, DeviceSample, Params, PublicationSample,
};
use iops_controller::{Limits, Priority};

struct Volume {
    dm: String,
    dev: String,
    cgroup: Option<PathBuf>,
    class: Priority,
}

/// `/sys/block/<name>/stat`: reads, read sectors, writes, write sectors, in flight,
/// weighted ms (fields 1, 3, 5, 7, 9, 11).
fn stat(name: &str) -> Result<[u64; 6], String> {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/stat"))
        .map_err(|e| format!("read {name} stat: {e}"))?;
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|t| t.parse().map_err(|e| format!("{name} stat {t:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if f.len() < 11 {
        return Err(format!("{name} stat has {} fields", f.len()));
    }
    Ok([f[0], f[2], f[4], f[6], f[8], f[10]])
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut capacity = None;
    let mut device = None;
    let mut volumes = Vec::new();
    let mut log_path = None;
    let mut stop = None;
    let mut period = Duration::from_millis(100);
    let mut params = Params::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} wants a value"));
        let number = |v: String| v.parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
        match flag.as_str() {
            "--capacity" => capacity = Some(number(value()?)?),
            "--device" => device = Some(value()?),
            "--floor" => params.floor = number(value()?)?,
            "--period-ms" => period = Duration::from_millis(number(value()?)? as u64),
            "--log" => log_path = Some(PathBuf::from(value()?)),
            "--stop" => stop = Some(PathBuf::from(value()?)),
            "--streaming" | "--batch" => {
                let v = value()?;
                let (cgroup, dm) = match v.rsplit_once(':') {
                    Some((cg, dm)) => (Some(PathBuf::from(cg)), dm.to_owned()),
                    None => (None, v.clone()),
                };
                let dev = std::fs::read_to_string(format!("/sys/block/{dm}/dev"))
                    .map_err(|e| format!("{dm}: {e}"))?
                    .trim()
                    .to_owned();
                let class = if flag == "--batch" {
                    Priority::Batch
                } else {
                    Priority::Streaming
                };
                volumes.push(Volume {
                    dm,
                    dev,
                    cgroup,
                    class,
                });
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let capacity = capacity.ok_or("--capacity is required")?;
    let device = device.ok_or("--device is required")?;
    let stop = stop.ok_or("--stop is required")?;
    let log_path = log_path.ok_or("--log is required")?;
    let mut log = std::fs::File::create(&log_path).map_err(|e| format!("{log_path:?}: {e}"))?;
    let mut ctl = DeviceController::new(DeviceModel::uniform_iops(capacity), params)
        .map_err(|e| e.to_string())?;
    let write_max = |v: &Volume, limits: &Limits| -> Result<(), String> {
        let Some(cg) = &v.cgroup else { return Ok(()) };
        std::fs::write(cg.join("io.max"), format!("{} {limits}\n", v.dev))
            .map_err(|e| format!("write {cg:?}/io.max: {e}"))
    };
    let start = Instant::now();
    let mut written: Vec<Option<Limits>> = vec![None; volumes.len()];
    let mut next = Instant::now();
    let mut pass_time = Duration::ZERO;
    let mut passes = 0u32;
    while !Path::new(&stop).exists() {
        next += period;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            // Behind (a stalled VM): no burst of catch-up passes.
            None => next = Instant::now(),
        }
        let t0 = Instant::now();
        let mut samples = Vec::with_capacity(volumes.len());
        for (i, v) in volumes.iter().enumerate() {
            let s = stat(&v.dm)?;
            samples.push(PublicationSample {
                key: i,
                class: v.class,
                counters: Counters {
                    rios: s[0],
                    rbytes: s[1] * 512,
                    wios: s[2],
                    wbytes: s[3] * 512,
                },
                in_flight: Some(s[4]),
                queue_ms: Some(s[5]),
                ceiling: Limits::UNLIMITED,
            });
        }
        let d = stat(&device)?;
        let dev = DeviceSample {
            ios: d[0] + d[2],
            weighted_ms: d[5],
        };
        let decision = ctl.pass(start.elapsed(), &samples, Some(dev));
        pass_time += t0.elapsed();
        passes += 1;
        let mut line = String::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        let r = decision.report;
        let _ = write!(
            line,
            "{:.3} scale={:.2} stream={:.2} batch={:.2} budget={:.2} active={} backlog={} sat={}",
            now.as_secs_f64(),
            r.capacity_scale,
            r.streaming_use,
            r.batch_use,
            r.batch_budget,
            r.streaming_active,
            r.streaming_backlogged,
            r.saturated
        );
        for (key, limits) in &decision.limits {
            let v = &volumes[*key];
            if v.class == Priority::Batch {
                let _ = write!(line, " {}={}", v.dm, limits.read_iops);
                if written[*key] != Some(*limits) {
                    write_max(v, limits)?;
                    written[*key] = Some(*limits);
                }
            }
        }
        writeln!(log, "{line}").map_err(|e| e.to_string())?;
    }
    for v in &volumes {
        write_max(v, &Limits::UNLIMITED)?;
    }
    writeln!(
        log,
        "passes={passes} mean_pass_us={:.1}",
        pass_time.as_secs_f64() * 1e6 / f64::from(passes.max(1))
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "priority_lab: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
