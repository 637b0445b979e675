//! `iolane`: parse flags, set up logging, build the real dependencies, serve.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use csi_driver::backend::Backend;
use csi_driver::backend::loopback::LoopBackend;
use csi_driver::backend::lvm::LvmBackend;
use csi_driver::config::KubeMode;
use csi_driver::config::{self, Cli, Command, ControllerArgs, LogFormat, NodeArgs, NodeConfig};
use csi_driver::driver::{Driver, Settings};
use csi_driver::enforce::Enforcer;
use csi_driver::k8s::{self, KubePvcAnnotations, PvcAnnotations};
use csi_driver::os::{Os, Roots, SystemRunner};
use csi_driver::tiering::Tiering;
use csi_driver::{server, validate};
use iops_controller::RealCgroupFs;
use iops_controller::metrics::{Metrics, MetricsServer, Readiness};
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
            Command::Controller(args) => run_controller(args).await,
            Command::Status(args) => run_status(&args).await,
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

/// `iolane status`: the report is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
async fn run_status(args: &config::StatusArgs) -> Result<(), Box<dyn std::error::Error>> {
    let before = csi_driver::status::fetch(args.address).await?;
    let start = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(args.interval)).await;
    let after = csi_driver::status::fetch(args.address).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&after)?);
    } else {
        print!(
            "{}",
            csi_driver::status::render(&before, &after, start.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let socket = config::socket_path(&args.endpoint)?;
    let name = config::driver_name(&args.driver_name)?.to_owned();
    server::serve_central(&name, &socket).await?;
    Ok(())
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
    let pvc = pvc_annotations(&args).await?;
    let pool_gauges = csi_driver::status::PoolGauges::default();
    let metrics = args.metrics_address.map(|_| {
        let mut m = Metrics::new(env!("CARGO_PKG_VERSION"));
        pool_gauges.register(m.registry_mut());
        csi_driver::grpc::register_rpc_metrics(m.registry_mut());
        Arc::new(m)
    });
    let mut enforcer = Enforcer::new(args.cgroup_root.clone(), Arc::new(RealCgroupFs));
    if let Some(m) = &metrics {
        enforcer = enforcer.with_metrics(Arc::clone(m));
    }
    let driver = Driver::new(
        backend,
        os,
        Settings {
            node_id,
            path_root: args.path_root,
            max_volumes_per_node: args.max_volumes,
        },
        Tiering::new(cfg.tier_set()?, pvc, enforcer),
    );
    if let (Some(addr), Some(metrics)) = (args.metrics_address, metrics) {
        let server = MetricsServer::bind(addr)
            .await
            .map_err(|e| format!("--metrics-address {addr}: {e}"))?;
        let ready = readiness(&driver);
        let driver_for_status = driver.clone();
        tokio::spawn(async move {
            let status = axum::Router::new()
                .route("/status", axum::routing::get(status_handler))
                .with_state(driver_for_status);
            if let Err(e) = server
                .serve_with(metrics, ready, status, std::future::pending())
                .await
            {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    tokio::spawn(reconcile_loop(
        driver.clone(),
        args.metrics_address.map(|_| pool_gauges),
        std::time::Duration::from_secs(args.reconcile_period),
    ));
    server::serve(driver, &name, &socket).await?;
    Ok(())
}

/// The PVC annotation source `--kubernetes` asks for: with `auto`, the API of the cluster
/// iolane runs in (or `--kubeconfig`'s); none outside a cluster or with `off`.
async fn pvc_annotations(
    args: &NodeArgs,
) -> Result<Option<Arc<dyn PvcAnnotations>>, Box<dyn std::error::Error>> {
    if args.kubernetes == KubeMode::Off {
        tracing::info!("--kubernetes=off: PVC annotations are not read");
        return Ok(None);
    }
    let client = if let Some(path) = &args.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
        KubePvcAnnotations::from_config(config, k8s::DEFAULT_TIMEOUT)?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        KubePvcAnnotations::infer(k8s::DEFAULT_TIMEOUT).await?
    } else {
        tracing::info!("not in a cluster and no --kubeconfig: PVC annotations are not read");
        return Ok(None);
    };
    tracing::info!("PVC annotations are read through the Kubernetes API");
    Ok(Some(Arc::new(client)))
}

/// `GET /status`: the snapshot `iolane status` prints, as JSON.
async fn status_handler(
    axum::extract::State(driver): axum::extract::State<Driver>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match driver.status().await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("status: {e}\n"),
        )
            .into_response(),
    }
}

/// `/healthz`: ready while the backend is (refreshed in the background, since the check
/// is async and the endpoint's is not).
fn readiness(driver: &Driver) -> Readiness {
    let state = Arc::new(std::sync::Mutex::new(Err::<(), String>(
        "not checked yet".to_owned(),
    )));
    let writer = Arc::clone(&state);
    let driver = driver.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let now = driver.probe().await;
            *writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        }
    });
    Arc::new(move || {
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    })
}

/// Runs the io.max reconciler every `period`, starting at once (re-applying after a
/// restart). A failed pass is logged and retried at the next tick.
async fn reconcile_loop(
    driver: Driver,
    pools: Option<csi_driver::status::PoolGauges>,
    period: std::time::Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(period_secs = period.as_secs(), "io.max reconciler started");
    loop {
        tick.tick().await;
        match driver.reconcile().await {
            Ok((report, adopted)) => {
                tracing::debug!(
                    in_sync = report.in_sync,
                    applied = report.applied,
                    repaired = report.repaired,
                    pending = report.pending,
                    gone = report.gone,
                    errors = report.errors.len(),
                    adopted,
                    ms = report.duration.as_secs_f64() * 1000.0,
                    "reconcile pass"
                );
            }
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
        }
        if let Some(gauges) = &pools {
            match driver.pools().await {
                Ok(p) => gauges.update(&p),
                Err(e) => tracing::debug!(error = %e, "pool usage not read"),
            }
        }
    }
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
