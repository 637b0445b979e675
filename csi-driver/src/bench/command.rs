//! `iolane bench`: its flags turned into a [`BenchSpec`], the run, and the report printed
//! (and written as JSON when asked); with `--calibrate`, the device calibration of
//! [`super::calibrate`].

use crate::config::BenchArgs;

use super::{BenchSpec, Pattern, run};

/// Runs `iolane bench`. The report is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
pub fn run_bench(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.calibrate {
        let spec = super::calibrate::CalibrateSpec {
            target: args.target.clone(),
            queue_depth: args.queue_depth,
            duration: std::time::Duration::from_secs(args.duration),
            size_limit: args.size_limit,
            state_dir: args.state_dir.clone(),
            sys: std::path::PathBuf::from("/sys"),
        };
        super::calibrate::calibrate(&spec)?;
        return Ok(());
    }
    let pattern: Pattern = args
        .pattern
        .parse()
        .map_err(|e| format!("--pattern: {e}"))?;
    let mut spec = BenchSpec::new(
        &args.target,
        pattern,
        std::time::Duration::from_secs(args.duration),
    );
    spec.block_size = args.block_size;
    spec.queue_depth = args.queue_depth;
    spec.size_limit = args.size_limit;
    spec.cgroup.clone_from(&args.cgroup);
    spec.direct = !args.buffered;
    spec.interval = std::time::Duration::from_millis(args.interval_ms);
    spec.latency_from = std::time::Duration::from_millis(args.latency_from_ms);
    spec.validate()?;
    let report = run(&spec)?;
    println!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
