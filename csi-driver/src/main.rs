//! `iolane`: parse flags, set up logging, build the real dependencies, serve.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use csi_driver::backend::Backend;
use csi_driver::backend::loopback::LoopBackend;
use csi_driver::backend::lvm::LvmBackend;
use csi_driver::config::{self, Cli, Command, LogFormat, NodeArgs, NodeConfig};
use csi_driver::driver::{Driver, Settings};
use csi_driver::enforce::Enforcer;
use csi_driver::os::{Os, Roots, SystemRunner};
use csi_driver::tiering::Tiering;
use csi_driver::{server, validate};
use iops_controller::RealCgroupFs;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log);
    // The load generator runs its own io_uring runtime; it needs no tokio runtime.
    if let Command::Bench(args) = &cli.command {
        return match run_bench(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "bench failed");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let command = match cli.command {
        Command::Demo(args) => return runtime.block_on(csi_driver::demo::main(args)),
        other => other,
    };
    let result = runtime.block_on(async {
        match command {
            Command::Node(args) => run_node(args).await,
            Command::Bench(_) | Command::Demo(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "iolane stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_node(args: NodeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let socket = config::socket_path(&args.endpoint)?;
    let name = config::driver_name(&args.driver_name)?.to_owned();
    let node_id = validate::node_id(&args.node_id)?.to_owned();
    let cfg = match &args.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    let classes = cfg.device_classes(&args.lvm_devices)?;
    let os = Os::new(Arc::new(SystemRunner), Roots::default());
    let backend: Arc<dyn Backend> = if classes.is_empty() {
        let backend = LoopBackend::open(
            os.clone(),
            args.state_dir.join("loop"),
            cfg.loopback.overprovision_ratio,
        )?;
        tracing::info!(
            state_dir = %args.state_dir.display(),
            overprovision_ratio = cfg.loopback.overprovision_ratio,
            "loop backend ready"
        );
        Arc::new(backend)
    } else {
        let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
        let backend = LvmBackend::open(os.clone(), classes).await;
        tracing::info!(device_classes = ?names, "lvm backend started");
        Arc::new(backend)
    };
    let driver = Driver::new(
        backend,
        os,
        Settings {
            node_id,
            path_root: args.path_root,
            max_volumes_per_node: args.max_volumes,
        },
        Tiering::new(
            cfg.tier_set()?,
            None,
            Enforcer::new(args.cgroup_root.clone(), Arc::new(RealCgroupFs)),
        ),
    );
    server::serve(driver, &name, &socket).await?;
    Ok(())
}

/// `iolane bench`: the report is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
fn run_bench(args: &config::BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    use iops_controller::loadgen::{BenchSpec, Pattern, run};
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
    spec.validate()?;
    let report = run(&spec)?;
    println!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
