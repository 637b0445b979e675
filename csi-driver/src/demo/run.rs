//! The demo's run: the in-process node on the loop backend, the stand-in kubelet (pod
//! cgroups, create, stage, publish), and the bench children in each pod's cgroup.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The demo's batch read and write IOPS cap without `--batch-iops`.
pub(super) const DEMO_BATCH_IOPS: u64 = 2000;
/// The demo's batch bandwidth cap, each way (200 MiB/s).
const DEMO_BATCH_BPS: u64 = 200 << 20;

/// The node's tiers: the built-in batch tier replaced, through a node config (the same
/// `[tiers.batch]` table a ConfigMap would carry), by a static cap of `--batch-iops`
/// (default [`DEMO_BATCH_IOPS`]) IOPS. The demo shows a tier's hard ceiling: the built-in
/// batch tier has no fixed cap (the node's priority controllers share each device; the
/// demo's in-process node does not run them).
fn tiers(batch_iops: Option<u64>) -> Result<(TierSet, String), DemoError> {
    let n = batch_iops.unwrap_or(DEMO_BATCH_IOPS);
    let text = format!(
        "[tiers.batch]\npriority = \"batch\"\nread_iops = {n}\nwrite_iops = {n}\nread_bps = {DEMO_BATCH_BPS}\nwrite_bps = {DEMO_BATCH_BPS}\n",
    );
    let cfg = NodeConfig::parse(&text).map_err(|e| step("--batch-iops", e))?;
    let set = cfg.tier_set().map_err(|e| step("--batch-iops", e))?;
    Ok((set, text))
}

#[allow(clippy::print_stdout)]
pub(super) async fn run(
    args: &DemoArgs,
    os: &Os,
    made: &mut Made,
    server: &mut Option<tokio::task::JoinHandle<Result<(), crate::server::ServeError>>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<DemoReport, DemoError> {
    let (tier_set, config_text) = tiers(args.batch_iops)?;
    let tmp = os.make_temp_dir("iolane-demo.")?;
    made.tmp = Some(tmp.clone());
    println!("iolane demo: working in {}", tmp.display());
    println!(
        "node config (a static batch cap):\n{}",
        indent(&config_text)
    );

    // The node, in-process, on the loop backend, serving on a socket in the temp dir.
    let socket = tmp.join("csi.sock");
    let backend = LoopBackend::open(
        os.clone(),
        tmp.join("state/loop"),
        NodeConfig::default().loopback.overprovision_ratio,
    )
    .map_err(|e| step("opening the loop backend", e))?;
    let driver = Driver::new(
        Arc::new(backend),
        os.clone(),
        Settings {
            node_id: NODE_ID.to_owned(),
            path_root: Some(tmp.clone()),
            max_volumes_per_node: 0,
        },
        Tiering::new(tier_set, None),
        Arc::new(Enforcement::new(
            args.cgroup_root.clone(),
            Arc::new(RealCgroupFs),
        )),
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

    for (name, tier) in [("streaming", keys::STREAMING), ("batch", keys::BATCH)] {
        let pod = os.random_uuid()?;
        let cgroup = parent.join(format!("pod{pod}"));
        os.make_cgroup(&cgroup)?;
        made.pod_cgroups.push(cgroup.clone());
        let csi_name = format!("iolane-demo-{}-{name}", std::process::id());
        let staging = tmp.join("staging").join(name);
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
        println!(
            "created {} volume {} ({} MiB, StorageClass parameter {}={}; volume_context tier {})",
            v.name,
            v.id,
            created.capacity_bytes >> 20,
            keys::TIER,
            v.tier,
            v.context.get(keys::TIER).map_or("-", String::as_str)
        );
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
        v.device = Some(os.device_number(&v.target)?);
        println!(
            "  staged and published at {} for pod {} (cgroup {})",
            v.target.display(),
            v.pod,
            v.cgroup.display()
        );
    }

    // What the driver wrote.
    println!("\nio.max after NodePublishVolume (as the kernel shows it):");
    let mut lines = Vec::new();
    for v in &made.volumes {
        let dev = v
            .device
            .ok_or_else(|| step("publish", "no device number"))?;
        let text = os.read_io_max(&v.cgroup)?;
        let line = line_for(&text, dev);
        let limits = IoMax::parse(&text)
            .map_err(|e| step(format!("parsing {}/io.max", v.cgroup.display()), e))?
            .limits(dev);
        println!(
            "  {:<10} {}/io.max: {}",
            v.name,
            v.cgroup.display(),
            line.as_deref()
                .map_or_else(|| format!("no line for {dev} (uncapped)"), str::to_owned)
        );
        lines.push((line, limits.read_iops.get()));
    }

    // The load.
    let exe = std::env::current_exe().map_err(|e| step("finding the iolane binary", e))?;
    let exe = exe.to_string_lossy().into_owned();
    let secs = args.duration;
    println!("\nrandom 4 KiB O_DIRECT reads, queue depth 32, {secs}s per run");
    println!("  run 1: streaming alone");
    let streaming = &made.volumes[0];
    let batch = &made.volumes[1];
    let bench_dir = tmp.join("bench");
    std::fs::create_dir_all(&bench_dir)
        .map_err(|e| crate::os::Error::io("create", &bench_dir, e))?;
    let alone = bench(
        &exe,
        streaming,
        &bench_dir.join("streaming-alone.json"),
        secs,
    )
    .await?;
    println!("  run 2: streaming and batch at once");
    let (s_json, b_json) = (
        bench_dir.join("streaming-together.json"),
        bench_dir.join("batch-together.json"),
    );
    let (s_tog, b_tog) = tokio::try_join!(
        bench(&exe, streaming, &s_json, secs),
        bench(&exe, batch, &b_json, secs),
    )?;

    let row = |v: &DemoVolume,
               line: &(Option<String>, Option<u64>),
               alone: Option<&BenchReport>,
               tog: &BenchReport| {
        let together = RunFigures::from(tog);
        VolumeRow {
            name: v.name.to_owned(),
            volume_id: v.id.clone(),
            tier: v.tier.to_owned(),
            device: v.device.map(|d| d.to_string()).unwrap_or_default(),
            pod_uid: v.pod.clone(),
            cgroup: v.cgroup.clone(),
            io_max_line: line.0.clone(),
            limit_iops: line.1,
            alone: alone.map(RunFigures::from),
            together,
            ratio: line.1.map(|l| together.iops / l as f64),
        }
    };
    let rows = vec![
        row(streaming, &lines[0], Some(&alone), &s_tog),
        row(batch, &lines[1], None, &b_tog),
    ];
    let (batch_held, streaming_uncapped, verdict) = judge(&rows[0], &rows[1]);
    println!("\n{}", table(&rows));
    println!("{verdict}");
    Ok(DemoReport {
        duration_secs: secs,
        tolerance: TOLERANCE,
        volumes: rows,
        batch_held,
        streaming_uncapped,
        tiers_held: batch_held && streaming_uncapped,
        verdict,
        lines_after_unpublish: Vec::new(),
    })
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
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

/// Runs `iolane bench` on `v`'s published device inside its pod's cgroup, as a child
/// process (the bench moves its whole process into the cgroup), and reads its JSON report.
async fn bench(
    exe: &str,
    v: &DemoVolume,
    json: &Path,
    secs: u64,
) -> Result<BenchReport, DemoError> {
    let cmd = Cmd::program_path(exe.to_owned(), Duration::from_secs(secs) + BENCH_SLACK)
        .arg("--log")
        .arg("warn")
        .arg("bench")
        .arg("--target")
        .arg(&v.target)
        .arg("--pattern")
        .arg("randread")
        .arg("--duration")
        .arg(secs.to_string())
        .arg("--cgroup")
        .arg(&v.cgroup)
        .arg("--json")
        .arg(json);
    let out = SystemRunner.run(&cmd).await?;
    if out.status != Some(0) {
        return Err(out.into_error(&cmd).into());
    }
    let text = std::fs::read_to_string(json).map_err(|e| crate::os::Error::io("read", json, e))?;
    serde_json::from_str(&text).map_err(|e| step(format!("reading {}", json.display()), e))
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
    fn batch_iops_makes_a_node_config() {
        let (set, text) = tiers(Some(300)).unwrap();
        let l = set.get(keys::BATCH).unwrap().limits_for(1 << 30);
        assert_eq!(
            (l.read_iops.get(), l.write_iops.get()),
            (Some(300), Some(300))
        );
        assert_eq!(l.read_bps.get(), Some(200 << 20));
        assert!(text.starts_with("[tiers.batch]"));
        let (set, _) = tiers(None).unwrap();
        let l = set.get(keys::BATCH).unwrap().limits_for(1 << 30);
        assert_eq!(l.read_iops.get(), Some(DEMO_BATCH_IOPS));
        assert!(tiers(Some(0)).is_err());
    }

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
