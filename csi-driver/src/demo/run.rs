//! The demo's run: the in-process node on the loop backend with its priority controllers,
//! the stand-in kubelet (pod cgroups, create, stage, publish), the three load runs
//! ([`super::load`]) and the verdict.

#[allow(clippy::wildcard_imports)]
use super::*;

#[allow(clippy::print_stdout)]
pub(super) async fn run(
    args: &DemoArgs,
    work_dir: &Path,
    os: &Os,
    made: &mut Made,
    server: &mut Option<tokio::task::JoinHandle<Result<(), crate::server::ServeError>>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<DemoReport, DemoError> {
    let tmp = os.make_temp_dir(work_dir, "iolane-demo.")?;
    made.tmp = Some(tmp.clone());
    println!("iolane demo: working in {}", tmp.display());
    let exe = std::env::current_exe().map_err(|e| step("finding the iolane binary", e))?;
    let exe = exe.to_string_lossy().into_owned();
    let state = tmp.join("state");

    // The device's capacity, as an operator gives it to a node: calibrated into the state
    // directory, where the controllers read it when they start controlling the device.
    let calibration = load::calibrate(&exe, &tmp, &state, &os.roots().sys).await;

    // The node, in-process, on the loop backend, serving on a socket in the temp dir, with
    // the default node config: the built-in tiers and the priority controllers on.
    let cfg = NodeConfig::default();
    let tier_set = cfg.tier_set().map_err(|e| step("the default tiers", e))?;
    let p = &cfg.priority;
    println!(
        "node config: the default (built-in tiers; [priority] on, floor {:.2}, headroom {:.2}, \
         period {} ms)",
        p.floor, p.headroom, p.period_ms
    );
    let socket = tmp.join("csi.sock");
    let backend = LoopBackend::open(
        os.clone(),
        state.join("loop"),
        cfg.loopback.overprovision_ratio,
    )
    .map_err(|e| step("opening the loop backend", e))?;
    let enforcement = crate::priority::enable(
        Enforcement::new(args.cgroup_root.clone(), Arc::new(RealCgroupFs)),
        &cfg,
        &state,
        &os.roots().sys,
        None,
    )
    .map_err(|e| step("the node config's [priority]", e))?;
    let enforcement = Arc::new(enforcement);
    made.priority = Some(tokio::spawn(Arc::clone(&enforcement).run_priority()));
    let driver = Driver::new(
        Arc::new(backend),
        os.clone(),
        Settings {
            node_id: NODE_ID.to_owned(),
            path_root: Some(tmp.clone()),
            max_volumes_per_node: 0,
        },
        Tiering::new(tier_set, None),
        Arc::clone(&enforcement),
    );
    let sock = socket.clone();
    *server = Some(tokio::spawn(async move {
        crate::server::serve_until(driver, "csi.iolane.dev", &sock, async {
            let _ = stop.await;
        })
        .await
    }));
    let mut client = connect_ready(&socket).await?;
    println!("node serving CSI on unix://{}", socket.display());

    // The pods' cgroups, as kubelet (cgroupfs driver) would lay them out.
    let root = &args.cgroup_root;
    if !os.subtree_has(root, "io")? {
        os.subtree_control(root, "+io")?;
        made.root_io_enabled = true;
        println!("enabled +io in {}/cgroup.subtree_control", root.display());
    }
    let parent = root.join(format!("iolane-demo-kubepods-{}", std::process::id()));
    os.make_cgroup(&parent)?;
    made.parent = Some(parent.clone());
    os.subtree_control(&parent, "+io")?;

    let mut wanted = vec![("streaming".to_owned(), keys::STREAMING)];
    for i in 1..=args.batch_volumes {
        wanted.push((format!("batch-{i}"), keys::BATCH));
    }
    for (name, tier) in wanted {
        let pod = os.random_uuid()?;
        let cgroup = parent.join(format!("pod{pod}"));
        os.make_cgroup(&cgroup)?;
        made.pod_cgroups.push(cgroup.clone());
        let csi_name = format!("iolane-demo-{}-{name}", std::process::id());
        let staging = tmp.join("staging").join(&name);
        let target = tmp
            .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish")
            .join(&csi_name)
            .join(&pod);
        made.volumes.push(DemoVolume {
            name,
            tier,
            id: crate::volume::volume_id_for(&csi_name),
            csi_name,
            pod,
            cgroup,
            staging,
            target,
            context: BTreeMap::new(),
            device: None,
        });
    }
    for v in &mut made.volumes {
        let params = BTreeMap::from([(keys::TIER.to_owned(), v.tier.to_owned())]);
        let created = client
            .create_block_volume(&v.csi_name, VOLUME_BYTES, &params)
            .await?;
        if created.id != v.id {
            return Err(step(
                "CreateVolume",
                format!(
                    "returned ID {} for {}, expected {}",
                    created.id, v.csi_name, v.id
                ),
            ));
        }
        v.context = created.context;
        std::fs::create_dir_all(&v.staging)
            .map_err(|e| crate::os::Error::io("create staging dir", &v.staging, e))?;
        client.stage_block(&v.id, &v.staging, &v.context).await?;
        if let Some(dir) = v.target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::os::Error::io("create target dir", dir, e))?;
        }
        let mut context = v.context.clone();
        context.insert(keys::POD_UID.to_owned(), v.pod.clone());
        client
            .publish_block(&v.id, &v.staging, &v.target, &context)
            .await?;
        let dev = os.device_number(&v.target)?;
        v.device = Some(dev);
        println!(
            "{:<10} volume {} ({} MiB, {}={}) staged and published as {dev} for pod {}",
            v.name,
            v.id,
            created.capacity_bytes >> 20,
            keys::TIER,
            v.tier,
            v.pod,
        );
    }
    let topology = Topology::new(os.roots().sys.clone(), topology::real_device_of());
    for v in &made.volumes {
        load::prepare(os, &topology, v).await?;
    }
    println!(
        "each loop device switched to direct IO (losetup --direct-io=on: the backend attaches \
         it buffered, and reads served from the image's page cache would never reach the \
         disk), and the first {} MiB written (reads of a hole never reach it either)",
        SPAN_BYTES >> 20
    );

    // The load.
    let secs = args.duration;
    let bench_dir = tmp.join("bench");
    std::fs::create_dir_all(&bench_dir)
        .map_err(|e| crate::os::Error::io("create", &bench_dir, e))?;
    let load = load::Load {
        exe: &exe,
        enforcement: &enforcement,
        os,
        dir: bench_dir,
        secs,
        volumes: &made.volumes,
    };
    let n = made.volumes.len() - 1;
    println!(
        "\nrandom 4 KiB O_DIRECT reads, queue depth 32, on the first {} MiB of each volume, \
         {secs} s per run, counted from +1 s",
        SPAN_BYTES >> 20
    );
    let streaming = &made.volumes[..1];
    let batch = &made.volumes[1..];
    let runs = vec![
        load.run("streaming alone", streaming).await?,
        load.run(&format!("streaming + {n} batch"), &made.volumes)
            .await?,
        load.run(&format!("{n} batch, streaming idle"), batch)
            .await?,
    ];
    let judgement = judge(&runs[0], &runs[1], &runs[2], cfg.priority.floor);
    println!("\n{}{}\n", table(&runs), verdict::LEGEND);
    println!("{}", judgement.verdict);
    Ok(DemoReport {
        duration_secs: secs,
        calibration,
        floor: cfg.priority.floor,
        runs,
        judgement,
        lines_after_unpublish: Vec::new(),
    })
}

/// The `io.max` line of `dev` in `text`, if any.
pub(super) fn line_for(text: &str, dev: DeviceNumber) -> Option<String> {
    let prefix = format!("{dev} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_owned)
}

async fn connect_ready(socket: &Path) -> Result<CsiClient, DemoError> {
    let end = Instant::now() + READY_DEADLINE;
    loop {
        let last = match CsiClient::connect(socket).await {
            Ok(mut c) => match c.ready().await {
                Ok(true) => return Ok(c),
                Ok(false) => "Probe answered not ready".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > end {
            return Err(step(
                format!("starting the node on {}", socket.display()),
                format!("not ready within {READY_DEADLINE:?}: {last}"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Retries `call` while it answers ABORTED (a call on the volume still running), up to
/// [`CLEANUP_DEADLINE`].
pub(super) async fn retry<F, Fut>(mut call: F) -> Result<(), ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let end = Instant::now() + CLEANUP_DEADLINE;
    loop {
        match call().await {
            Err(e) if e.code() == Some(tonic::Code::Aborted) && Instant::now() < end => {
                tokio::time::sleep(POLL).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_line_of_a_device() {
        let text =
            "7:1 rbps=max wbps=max riops=200 wiops=200\n7:10 rbps=1 wbps=max riops=max wiops=max\n";
        let d = |minor| DeviceNumber { major: 7, minor };
        assert_eq!(
            line_for(text, d(1)).unwrap(),
            "7:1 rbps=max wbps=max riops=200 wiops=200"
        );
        assert!(line_for(text, d(10)).unwrap().starts_with("7:10 "));
        assert_eq!(line_for(text, d(2)), None);
    }
}
