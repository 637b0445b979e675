//! `iolane`: parse flags, set up logging, build the real dependencies, serve.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use csi_driver::backend::Backend;
use csi_driver::backend::loopback::LoopBackend;
use csi_driver::backend::lvm::LvmBackend;
use csi_driver::config::{
    self, Cli, Command, ControllerArgs, LogFormat, NodeArgs, NodeCleanup, NodeConfig,
};
use csi_driver::driver::{Driver, Settings};
use csi_driver::http::{self, HttpServer, Routes};
use csi_driver::os::{self, Os, Roots, SystemRunner};
use csi_driver::status::{PoolGauges, StatusCache, StatusSource, pool_gauges};
use csi_driver::tiering::Tiering;
use csi_driver::{bench, grpc, k8s, node_cleanup, retier, server, status, validate};
use iops_controller::{Enforcement, EnforcementMetrics, RealCgroupFs};
use tracing_subscriber::EnvFilter;

/// How long `iolane node` waits at start for a previous process on the same state
/// directory, and its children, to end (the longest command timeout, mkfs's, and more).
const INSTANCE_LOCK_WAIT: Duration = Duration::from_secs(330);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log);
    // The load generator runs its own io_uring runtime; it needs no tokio runtime.
    if let Command::Bench(args) = &cli.command {
        return match bench::run_bench(args) {
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
            Command::Status(args) => status::run(&args).await,
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

async fn run_controller(args: ControllerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let socket = config::socket_path(&args.endpoint)?;
    let name = config::driver_name(&args.driver_name)?.to_owned();
    let cfg = match &args.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    let tiers = cfg.tier_set()?;
    // ControllerModifyVolume records requests on PVs: it needs the API when there is one.
    let modifier =
        if args.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            let client = k8s::client(args.kubeconfig.as_deref()).await?;
            Some(retier::central::Modifier::new(
                client,
                name.clone(),
                tiers.clone(),
                Duration::from_secs(args.modify_timeout),
            ))
        } else {
            tracing::info!("no Kubernetes API: ControllerModifyVolume answers UNAVAILABLE");
            None
        };
    if args.node_cleanup == NodeCleanup::Off {
        tracing::info!("--node-cleanup=off: volumes of deleted nodes are left alone");
    } else {
        let client = k8s::client(args.kubeconfig.as_deref()).await?;
        let settings = node_cleanup::Settings {
            mode: args.node_cleanup,
            driver: name.clone(),
            grace: Duration::from_secs(args.node_cleanup_grace),
            resync: Duration::from_secs(args.node_cleanup_resync),
            instance: std::env::var("POD_NAME").ok(),
        };
        tokio::spawn(async move {
            node_cleanup::run(client, settings).await;
            tracing::error!("node cleanup stopped: the node watch ended");
        });
    }
    let controller = grpc::CentralControllerService::new(tiers, modifier);
    server::serve_central(&name, &socket, controller).await?;
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
    // Before any volume is looked at: a killed predecessor's children are done.
    let _instance = os::instance_lock::acquire(&args.state_dir, INSTANCE_LOCK_WAIT)
        .await
        .map_err(|e| format!("--state-dir: {e}"))?;
    let os = Os::new(Arc::new(SystemRunner), Roots::default());
    let backend = open_backend(&args, &cfg, &os).await?;
    let pvc = k8s::pvc_annotations_from_flags(args.kubernetes, args.kubeconfig.as_deref()).await?;
    let period = Duration::from_secs(args.reconcile_period);

    // Each part registers its own metrics into the binary's registry.
    let pool_gauges = PoolGauges::default();
    let metrics = args
        .metrics_address
        .map(|_| Arc::new(EnforcementMetrics::new()));
    let mut registry_builder = metrics.as_ref().map(|metrics| {
        let mut registry = http::registry(env!("CARGO_PKG_VERSION"));
        metrics.register(&mut registry);
        pool_gauges.register(&mut registry);
        grpc::register_rpc_metrics(&mut registry);
        registry
    });
    let mut enforcement = Enforcement::new(args.cgroup_root.clone(), Arc::new(RealCgroupFs));
    if let Some(metrics) = metrics {
        enforcement = enforcement.with_metrics(metrics);
    }
    // On by default (issue 9; `[priority] enabled = false` turns them off): per-device
    // class controllers over the same publications.
    let enforcement = csi_driver::priority::enable(
        enforcement,
        &cfg,
        &args.state_dir,
        &os.roots().sys,
        registry_builder.as_mut(),
    )?;
    let registry = registry_builder.map(Arc::new);
    let enforcement = Arc::new(enforcement);
    tokio::spawn(Arc::clone(&enforcement).run_priority());

    let driver = Driver::new(
        backend,
        os,
        Settings {
            node_id,
            path_root: args.path_root,
            max_volumes_per_node: args.max_volumes,
        },
        Tiering::new(cfg.tier_set()?, pvc),
        Arc::clone(&enforcement),
    );
    let kube = k8s::watch_client(args.kubernetes, args.kubeconfig.as_deref()).await?;
    // Readiness is checked in the background for /healthz and for the Node's Events, and
    // always: the check is also what sets up again a device class that is not ready.
    let readiness = http::watch_readiness(&driver);
    let served_gauges = if let (Some(addr), Some(registry)) = (args.metrics_address, registry) {
        let ready = readiness.clone();
        let server = HttpServer::bind(addr)
            .await
            .map_err(|e| format!("--metrics-address {addr}: {e}"))?;
        let routes = Routes {
            registry,
            ready: http::readiness_of(ready),
        };
        tokio::spawn(async move {
            if let Err(e) = server.serve(routes, std::future::pending()).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
        Some(pool_gauges)
    } else {
        None
    };
    let status_cache = if let Some(addr) = args.status_address.0 {
        let server = HttpServer::bind(addr)
            .await
            .map_err(|e| format!("--status-address {addr}: {e}"))?;
        let cache = StatusCache::default();
        let source = StatusSource {
            cache: cache.clone(),
            enforcement: Arc::clone(&enforcement),
        };
        tokio::spawn(async move {
            if let Err(e) = server.serve_status(source, std::future::pending()).await {
                tracing::error!(error = %e, "the status endpoint stopped");
            }
        });
        Some(cache)
    } else {
        None
    };
    if served_gauges.is_some() || status_cache.is_some() {
        tokio::spawn(pool_gauges::refresh_every(
            driver.clone(),
            served_gauges,
            status_cache,
            period,
        ));
    }
    // The previous process's publications are known before the first call is served, so
    // an unpublish right after a restart lifts what they capped.
    match driver.adopt_mounts().await {
        Ok(adopted) => tracing::debug!(adopted, "publications adopted from the mount table"),
        Err(e) => {
            tracing::warn!(error = %e, "could not adopt publications from the mount table; the reconciler retries")
        }
    }
    if let Some(client) = kube {
        let settings = retier::node::Settings {
            driver_name: name.clone(),
            node_id: driver.settings().node_id.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        tokio::spawn(k8s::readiness::run(
            client.clone(),
            settings.node_id.clone(),
            settings.instance.clone(),
            readiness,
        ));
        let retierer = driver.clone();
        tokio::spawn(async move {
            retier::node::run(client, retierer, settings).await;
            tracing::error!("re-tiering stopped: the PV/PVC watch ended");
        });
    }
    let mounts = driver.clone();
    tokio::spawn(enforcement.run(period, move || {
        let driver = mounts.clone();
        async move { driver.adopt_mounts().await }
    }));
    server::serve(driver, &name, &socket).await?;
    Ok(())
}

/// The lvm backend over the configured device classes, or the loop backend when there are
/// none.
async fn open_backend(
    args: &NodeArgs,
    cfg: &NodeConfig,
    os: &Os,
) -> Result<Arc<dyn Backend>, Box<dyn std::error::Error>> {
    let classes = cfg.device_classes(&args.lvm_devices)?;
    if classes.is_empty() {
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
        Ok(Arc::new(backend))
    } else {
        let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
        let backend = LvmBackend::open(os.clone(), classes).await;
        tracing::info!(device_classes = ?names, "lvm backend started");
        Ok(Arc::new(backend))
    }
}
