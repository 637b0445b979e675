//! `iolane bench --calibrate`: measures the capacity of the physical device under a
//! target (a volume on it, a loop device whose backing file is on it, or a file on its
//! filesystem) and stores it in the node's state directory, keyed on the device's identity
//! ([`iops_controller::priority::calibration`]), where the node's priority controllers
//! read it as the device's starting capacity.
//!
//! Four runs of `duration` each on the target: 1 MiB sequential writes and 4 KiB random
//! writes, then 1 MiB sequential reads and 4 KiB random reads (writes first: a thin LV
//! reads its unwritten blocks without touching the disk); the random runs at the given
//! queue depth (the IOPS rates), the sequential ones at queue depth 8 or less (the
//! bandwidths); the runs after the sequential write stay within the span it wrote. **The writes destroy the target's contents**: calibrate a
//! scratch volume or file, never one with data.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use iops_controller::DeviceNumber;
use iops_controller::priority::calibration::{Calibration, CalibrationStore};
use iops_controller::priority::{DeviceModel, Topology};

use super::{BenchReport, BenchSpec, Pattern, run};

/// Bytes per IO of the bandwidth runs.
pub const BANDWIDTH_BLOCK: u32 = 1 << 20;
/// Largest queue depth of the bandwidth runs.
pub const BANDWIDTH_QUEUE_DEPTH: u32 = 8;

/// What to calibrate and where to store it.
#[derive(Debug, Clone)]
pub struct CalibrateSpec {
    pub target: PathBuf,
    pub queue_depth: u32,
    pub duration: Duration,
    pub size_limit: Option<u64>,
    /// The node's state directory (its `calibration/` holds the result).
    pub state_dir: PathBuf,
    /// sysfs (`/sys`).
    pub sys: PathBuf,
}

/// The physical device under `target` (sysfs under `sys`): its number, kernel name and
/// identity. A target over several physical devices is refused (calibrate each one).
pub fn device_of(target: &Path, sys: &Path) -> Result<(DeviceNumber, String, String), String> {
    let meta = std::fs::metadata(target).map_err(|e| format!("{}: {e}", target.display()))?;
    let dev = if meta.file_type().is_block_device() {
        DeviceNumber::from_rdev(meta.rdev())
    } else if meta.is_file() {
        DeviceNumber::from_rdev(meta.dev())
    } else {
        return Err(format!(
            "{}: not a block device or regular file",
            target.display()
        ));
    };
    let topology = Topology::new(
        sys.to_owned(),
        iops_controller::priority::topology::real_device_of(),
    );
    let set = topology
        .physical(dev)
        .map_err(|e| format!("physical device under {} ({dev}): {e}", target.display()))?;
    let [leaf] = set[..] else {
        return Err(format!(
            "{} ({dev}) spans {} physical devices: calibrate a target on one of them",
            target.display(),
            set.len()
        ));
    };
    let name = topology.name(leaf).unwrap_or_else(|| leaf.to_string());
    let identity = topology
        .identity(leaf)
        .ok_or_else(|| format!("{name} ({leaf}): no identity in sysfs"))?;
    Ok((leaf, name, identity))
}

/// The four rates of a calibration from its runs (each run's mean over its duration).
pub fn model_from(
    randread: &BenchReport,
    randwrite: &BenchReport,
    read: &BenchReport,
    write: &BenchReport,
) -> Result<DeviceModel, String> {
    let per_sec = |v: u64, r: &BenchReport| v as f64 / r.duration_secs.max(1) as f64;
    let model = DeviceModel {
        read_iops: per_sec(randread.read_ios, randread),
        write_iops: per_sec(randwrite.write_ios, randwrite),
        read_bps: per_sec(read.read_bytes, read),
        write_bps: per_sec(write.write_bytes, write),
    };
    for (what, v) in [
        ("read IOPS", model.read_iops),
        ("write IOPS", model.write_iops),
        ("read bandwidth", model.read_bps),
        ("write bandwidth", model.write_bps),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{what}: no IO completed"));
        }
    }
    Ok(model)
}

/// Runs the calibration, stores it, and returns it with the file it went to.
#[allow(clippy::print_stdout)]
pub fn calibrate(
    spec: &CalibrateSpec,
) -> Result<(Calibration, PathBuf), Box<dyn std::error::Error>> {
    let (dev, name, identity) = device_of(&spec.target, &spec.sys)?;
    println!(
        "iolane bench --calibrate: {} is on {name} ({dev}, {identity}); 4 runs of {} s, the \
         writes destroy the target's contents",
        spec.target.display(),
        spec.duration.as_secs()
    );
    let one = |pattern: Pattern,
               block: u32,
               qd: u32,
               span: Option<u64>|
     -> Result<BenchReport, Box<dyn std::error::Error>> {
        let mut s = BenchSpec::new(&spec.target, pattern, spec.duration);
        s.block_size = block;
        s.queue_depth = qd;
        s.size_limit = span.map(|l| l - l % u64::from(block));
        s.validate()?;
        let r = run(&s)?;
        println!(
            "  {pattern} bs {block} qd {qd}: {:.0} IOPS, {:.1} MiB/s",
            r.mean_iops,
            r.total_bytes as f64 / r.duration_secs.max(1) as f64 / f64::from(1u32 << 20)
        );
        Ok(r)
    };
    let qd = spec.queue_depth;
    let bw_qd = qd.min(BANDWIDTH_QUEUE_DEPTH);
    // Writes first: a thin LV reads its unwritten blocks without touching the disk, so
    // the reads must find the span written (the sequential write covers it).
    // The runs after it stay within what it wrote (a large target is not covered in
    // one run of `duration`).
    let write = one(Pattern::SeqWrite, BANDWIDTH_BLOCK, bw_qd, spec.size_limit)?;
    let written = write.write_bytes.min(write.span_bytes);
    let block = u64::from(BANDWIDTH_BLOCK);
    if written < block {
        return Err(format!(
            "the sequential write run wrote {written} bytes: too few to calibrate"
        )
        .into());
    }
    let span = Some(written - written % block);
    let randwrite = one(Pattern::RandWrite, 4096, qd, span)?;
    let read = one(Pattern::SeqRead, BANDWIDTH_BLOCK, bw_qd, span)?;
    let randread = one(Pattern::RandRead, 4096, qd, span)?;
    let model = model_from(&randread, &randwrite, &read, &write)?;
    let c = Calibration {
        identity,
        name,
        model,
        measured_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let path = CalibrationStore::in_state_dir(&spec.state_dir)
        .save(&c)
        .map_err(|e| {
            format!(
                "storing the calibration in {}: {e}",
                spec.state_dir.display()
            )
        })?;
    println!(
        "calibrated {} ({}): read {:.0} IOPS, write {:.0} IOPS, read {:.1} MiB/s, write {:.1} \
         MiB/s; stored in {} (the node reads it when it starts controlling the device; a \
         [priority.devices] entry in the node config overrides it)",
        c.name,
        c.identity,
        model.read_iops,
        model.write_iops,
        model.read_bps / f64::from(1u32 << 20),
        model.write_bps / f64::from(1u32 << 20),
        path.display()
    );
    Ok((c, path))
}
