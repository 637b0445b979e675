//! Host tests: real io_uring IO on regular files and, as root, on a loop device. They
//! assert behaviour (IOs happened, every second is present, writes landed, percentiles
//! ordered, JSON round-trips), never timing; the reports are printed for the record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use tempfile::TempDir;

use super::*;

const MIB: u64 = 1 << 20;

/// A temporary directory on a filesystem that supports `O_DIRECT`: the system temp dir
/// unless it refuses (tmpfs on older kernels), else one beside the test binary (in the
/// cargo target dir, on a disk filesystem).
fn direct_io_dir() -> TempDir {
    let candidates = [
        std::env::temp_dir(),
        std::env::current_exe()
            .expect("test binary path")
            .parent()
            .expect("test binary directory")
            .to_owned(),
    ];
    for base in candidates {
        let dir = tempfile::Builder::new()
            .prefix("iolane-loadgen-")
            .tempdir_in(&base)
            .expect("create tempdir");
        let probe = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(OFlag::O_DIRECT.bits())
            .open(dir.path().join("probe"));
        match probe {
            Ok(_) => return dir,
            Err(e) => println!("{}: no O_DIRECT ({e}), trying the next", base.display()),
        }
    }
    panic!("no directory supports O_DIRECT");
}

/// A file of `size` bytes whose every byte is 0x5a (so reads have real data to return).
fn data_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let file = File::create(&path).expect("create target file");
    let chunk = vec![0x5a_u8; MIB as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB) as usize;
        file.write_all_at(&chunk[..n], at)
            .expect("fill target file");
        at += n as u64;
    }
    file.sync_all().expect("sync target file");
    path
}

fn spec(target: &Path, pattern: Pattern, secs: u64) -> BenchSpec {
    BenchSpec::new(target, pattern, Duration::from_secs(secs))
}

/// What every successful report must satisfy.
fn check_report(report: &BenchReport, spec: &BenchSpec) {
    assert_eq!(report.pattern, spec.pattern);
    assert_eq!(report.duration_secs, spec.duration.as_secs());
    assert_eq!(
        report.per_second.len() as u64,
        spec.duration.as_secs(),
        "one interval per second"
    );
    for (second, interval) in report.per_second.iter().enumerate() {
        assert!(
            interval.iops() > 0,
            "second {second} completed no IO: {report:#?}"
        );
        let bs = u64::from(spec.block_size);
        assert_eq!(interval.read_bps, interval.read_iops * bs);
        assert_eq!(interval.write_bps, interval.write_iops * bs);
    }
    assert!(report.total_ios > 0);
    assert_eq!(report.total_ios, report.read_ios + report.write_ios);
    assert_eq!(
        report.total_bytes,
        report.total_ios * u64::from(spec.block_size)
    );
    assert_eq!(
        report.total_ios,
        report
            .per_second
            .iter()
            .map(IntervalStats::iops)
            .sum::<u64>()
    );
    assert_eq!(report.latency.ios, report.total_ios);
    assert_eq!(report.read_latency.ios, report.read_ios);
    assert_eq!(report.write_latency.ios, report.write_ios);
    if !spec.pattern.reads() {
        assert_eq!(report.read_ios, 0);
    }
    if !spec.pattern.writes() {
        assert_eq!(report.write_ios, 0);
    }
    for lat in [&report.latency, &report.read_latency, &report.write_latency] {
        if lat.ios > 0 {
            assert!(lat.p50_us > 0.0, "{lat:?}");
            assert!(
                lat.p50_us <= lat.p99_us && lat.p99_us <= lat.max_us,
                "{lat:?}"
            );
            assert!(lat.mean_us <= lat.max_us, "{lat:?}");
        }
    }
    // JSON round-trips exactly, with the documented field names.
    let json = serde_json::to_string(report).expect("serialize report");
    let back: BenchReport = serde_json::from_str(&json).expect("parse report");
    assert_eq!(&back, report);
    let value: serde_json::Value = serde_json::from_str(&json).expect("parse as value");
    for key in ["per_second", "total_ios", "mean_iops", "latency"] {
        assert!(value.get(key).is_some(), "{key} missing from {json}");
    }
    assert!(value["latency"]["p99_us"].is_f64());
    // The table has one line per second, numbered from 1.
    let text = report.to_string();
    for second in 1..=report.per_second.len() {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(&second.to_string())),
            "no line for second {second} in\n{text}"
        );
    }
    assert!(text.contains("p99 us"));
}

/// Reads block `index` of `path` (buffered) and checks it holds what the generator writes.
fn assert_block_written(path: &Path, index: u64, block_size: u32) {
    let offset = index * u64::from(block_size);
    let mut got = vec![0u8; block_size as usize];
    File::open(path)
        .expect("open for read-back")
        .read_exact_at(&mut got, offset)
        .expect("read back");
    assert!(got.iter().any(|&b| b != 0), "block {index} is all zeros");
    let mut want = vec![0u8; block_size as usize];
    write_pattern(offset, &mut want);
    assert!(got == want, "block {index} does not hold the write pattern");
}

#[test]
fn validate_rejects_bad_fields_naming_them() {
    let good = spec(Path::new("/dev/null"), Pattern::RandRead, 1);
    assert_eq!(good.validate(), Ok(()));
    type Mutation = fn(&mut BenchSpec);
    let cases: Vec<(&str, Mutation)> = vec![
        ("block_size", |s| s.block_size = 1000),
        ("block_size", |s| s.block_size = 0),
        ("block_size", |s| s.block_size = 32 << 20),
        ("queue_depth", |s| s.queue_depth = 0),
        ("queue_depth", |s| s.queue_depth = 257),
        ("duration", |s| s.duration = Duration::ZERO),
        ("duration", |s| s.duration = Duration::from_millis(1500)),
        ("pattern.read_pct", |s| {
            s.pattern = Pattern::RandRw { read_pct: 101 }
        }),
        ("size_limit", |s| s.size_limit = Some(4097)),
        ("size_limit", |s| s.size_limit = Some(0)),
        ("target", |s| s.target = PathBuf::new()),
        ("cgroup", |s| s.cgroup = Some(PathBuf::new())),
        ("interval", |s| s.interval = Duration::from_millis(5)),
        ("interval", |s| s.interval = Duration::from_millis(300)),
        ("interval", |s| s.interval = Duration::from_millis(2000)),
        ("interval", |s| s.interval = Duration::from_micros(100_500)),
        ("latency_from", |s| s.latency_from = s.duration),
    ];
    for (field, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        let err = bad.validate().expect_err(field);
        assert_eq!(err.field(), field);
        assert!(err.to_string().starts_with(field), "{err}");
        // run() refuses it before touching anything.
        let err = run(&bad).expect_err(field);
        assert!(matches!(err, BenchError::Spec(_)), "{err:?}");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn pattern_text_round_trips() {
    for (text, pattern) in [
        ("randread", Pattern::RandRead),
        ("randwrite", Pattern::RandWrite),
        ("read", Pattern::SeqRead),
        ("write", Pattern::SeqWrite),
        ("randrw:70", Pattern::RandRw { read_pct: 70 }),
    ] {
        assert_eq!(text.parse::<Pattern>(), Ok(pattern));
        assert_eq!(pattern.to_string(), text);
    }
    assert_eq!("seqwrite".parse::<Pattern>(), Ok(Pattern::SeqWrite));
    assert_eq!(
        "randrw".parse::<Pattern>(),
        Ok(Pattern::RandRw { read_pct: 50 })
    );
    for bad in ["", "randrw:101", "randrw:x", "trim"] {
        let err = bad.parse::<Pattern>().expect_err(bad);
        assert_eq!(err.field(), "pattern");
    }
}

#[test]
fn randread_on_a_file() {
    let dir = direct_io_dir();
    let target = data_file(dir.path(), "target", 16 * MIB);
    let spec = spec(&target, Pattern::RandRead, 2);
    let report = run(&spec).expect("bench");
    print!("{report}");
    check_report(&report, &spec);
    assert_eq!(report.span_bytes, 16 * MIB);
}

/// `latency_from` leaves the first IOs out of the latencies, not out of the rates.
#[test]
fn latency_from_leaves_the_start_out_of_the_percentiles_only() {
    let dir = direct_io_dir();
    let target = data_file(dir.path(), "lat.img", 4 * MIB);
    let mut s = spec(&target, Pattern::RandRead, 2);
    s.latency_from = Duration::from_secs(1);
    let report = run(&s).expect("bench");
    assert_eq!(report.latency_from_ms, 1000);
    assert!(report.total_ios > 0 && report.per_second.iter().all(|i| i.iops() > 0));
    assert!(report.latency.ios > 0, "{report:#?}");
    assert!(
        report.latency.ios < report.total_ios,
        "the first second's IOs are in the latencies: {} of {}",
        report.latency.ios,
        report.total_ios
    );
}

#[test]
fn per_interval_samples_at_100_ms_add_up_to_the_seconds() {
    let dir = direct_io_dir();
    let target = data_file(dir.path(), "target", 16 * MIB);
    let mut spec = spec(&target, Pattern::RandRead, 2);
    spec.interval = Duration::from_millis(100);
    let report = run(&spec).expect("bench");
    print!("{report}");
    check_report(&report, &spec);
    assert_eq!(report.interval_ms, 100);
    assert_eq!(report.intervals.len(), 20, "two seconds of 100 ms");
    // Each second is the sum of its ten intervals.
    for (second, s) in report.per_second.iter().enumerate() {
        let tenth = &report.intervals[second * 10..second * 10 + 10];
        assert_eq!(s.iops(), tenth.iter().map(IntervalStats::iops).sum::<u64>());
    }
    let iops = report.interval_iops();
    assert_eq!(iops[0], report.intervals[0].iops() as f64 * 10.0);
    let text = report.to_string();
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some("2000")),
        "no line for the interval ending at 2000 ms in\n{text}"
    );
    // The default keeps the JSON as it was: no `intervals`.
    let plain = run(&self::spec(&target, Pattern::RandRead, 1)).expect("bench");
    assert!(plain.intervals.is_empty());
    let json = serde_json::to_value(&plain).unwrap();
    assert!(json.get("intervals").is_none(), "{json}");
    assert_eq!(json["interval_ms"], 1000);
}

#[test]
fn seqwrite_on_a_file_lands_the_pattern() {
    let dir = direct_io_dir();
    let target = data_file(dir.path(), "target", 8 * MIB);
    let mut spec = spec(&target, Pattern::SeqWrite, 2);
    spec.size_limit = Some(4 * MIB);
    spec.queue_depth = 8;
    let report = run(&spec).expect("bench");
    print!("{report}");
    check_report(&report, &spec);
    assert_eq!(report.span_bytes, 4 * MIB);
    assert!(report.write_ios >= 2);
    assert_block_written(&target, 0, spec.block_size);
    assert_block_written(&target, 1, spec.block_size);
    // Past size_limit nothing was touched.
    let mut past = vec![0u8; 4096];
    File::open(&target)
        .expect("open")
        .read_exact_at(&mut past, 4 * MIB)
        .expect("read past the span");
    assert!(past.iter().all(|&b| b == 0x5a), "wrote past size_limit");
}

#[test]
fn randrw_on_a_file_does_both() {
    let dir = direct_io_dir();
    let target = data_file(dir.path(), "target", 8 * MIB);
    let mut spec = spec(&target, Pattern::RandRw { read_pct: 50 }, 1);
    spec.block_size = 8192;
    spec.queue_depth = 4;
    let report = run(&spec).expect("bench");
    check_report(&report, &spec);
    assert!(report.read_ios > 0 && report.write_ios > 0, "{report:?}");
}

#[test]
fn errors_name_the_path() {
    let dir = direct_io_dir();
    let missing = dir.path().join("missing");
    let err = run(&spec(&missing, Pattern::RandRead, 1)).expect_err("missing target");
    assert!(matches!(err, BenchError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );

    let err = run(&spec(dir.path(), Pattern::RandRead, 1)).expect_err("directory target");
    assert!(
        matches!(err, BenchError::NotFileOrBlockDevice { .. }),
        "{err:?}"
    );

    let small = data_file(dir.path(), "small", 1024);
    let err = run(&spec(&small, Pattern::RandRead, 1)).expect_err("tiny target");
    assert!(
        matches!(err, BenchError::TooSmall { size: 1024, .. }),
        "{err:?}"
    );

    let mut too_far = spec(&small, Pattern::RandRead, 1);
    too_far.size_limit = Some(MIB);
    let err = run(&too_far).expect_err("size_limit past the end");
    assert!(err.to_string().starts_with("size_limit"), "{err}");

    let target = data_file(dir.path(), "target", MIB);
    let mut lost = spec(&target, Pattern::RandRead, 1);
    let cgroup = dir.path().join("no-such-cgroup");
    lost.cgroup = Some(cgroup.clone());
    let err = run(&lost).expect_err("missing cgroup");
    assert!(matches!(err, BenchError::JoinCgroup { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*cgroup.to_string_lossy()),
        "{err}"
    );
}

/// The cgroup move writes this process's id to `cgroup.procs`; checked on a tempdir
/// stand-in (a real move would take the whole test process along).
#[test]
fn cgroup_join_writes_the_pid_to_cgroup_procs() {
    let dir = direct_io_dir();
    let target = data_file(dir.path(), "target", MIB);
    let cgroup = dir.path().join("pod-cgroup");
    std::fs::create_dir(&cgroup).expect("mkdir");
    std::fs::write(cgroup.join("cgroup.procs"), "").expect("create cgroup.procs");
    let mut spec = spec(&target, Pattern::RandRead, 1);
    spec.cgroup = Some(cgroup.clone());
    spec.queue_depth = 1;
    let report = run(&spec).expect("bench");
    check_report(&report, &spec);
    assert_eq!(report.cgroup.as_deref(), Some(cgroup.as_path()));
    let written = std::fs::read_to_string(cgroup.join("cgroup.procs")).expect("read back");
    assert_eq!(written, format!("{}\n", std::process::id()));
}

/// `losetup` with `args`; its stdout, trimmed.
#[allow(
    clippy::disallowed_methods,
    reason = "test-only loop device setup; iops-controller has no command runner"
)]
fn losetup(args: &[&str]) -> String {
    let out = std::process::Command::new("losetup")
        .args(args)
        .output()
        .expect("run losetup");
    assert!(
        out.status.success(),
        "losetup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loop device attached to a file; detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(backing: &Path) -> Self {
        let backing = backing.to_str().expect("utf-8 path");
        LoopDevice(PathBuf::from(losetup(&["--find", "--show", backing])))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        losetup(&["--detach", self.0.to_str().expect("utf-8 path")]);
    }
}

#[test]
fn loop_device_randread_and_seqwrite() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipping loop_device_randread_and_seqwrite: losetup needs root");
        return;
    }
    let dir = direct_io_dir();
    let backing = data_file(dir.path(), "backing.img", 64 * MIB);
    let device = LoopDevice::attach(&backing);

    let read = spec(&device.0, Pattern::RandRead, 2);
    let report = run(&read).expect("randread bench");
    print!("{report}");
    check_report(&report, &read);
    assert_eq!(report.span_bytes, 64 * MIB);

    let write = spec(&device.0, Pattern::SeqWrite, 2);
    let report = run(&write).expect("seqwrite bench");
    print!("{report}");
    check_report(&report, &write);
    assert_block_written(&device.0, 0, write.block_size);
    assert_block_written(&device.0, 1, write.block_size);
    drop(device);
    // And it reached the backing file.
    assert_block_written(&backing, 0, write.block_size);
}
