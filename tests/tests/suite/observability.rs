//! What an operator and the cluster see of a running node, through the real binary:
//! the PVC `iolane.dev/tier` annotation read from a Kubernetes API server (an in-process
//! fake serving real Kubernetes JSON, reached through `--kubeconfig`), `/metrics`,
//! `/healthz` on `--metrics-address`, `/status` and `iolane status` on `--status-address`.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iolane_tests::{
    Driver, GIB, Options, binary, block_cap, create_request, csi, ok, poll, publish_request,
    require_root, run, stage_request, unpublish_request, unstage_request,
};
use tonic::Code;

const TIER: &str = "iolane.dev/tier";
const ALLOWED: &str = "iolane.dev/allowed-tiers";
const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
const UID: &str = "5f1c2d3e-4a5b-4c6d-8e7f-901234567890";

/// A PVC object as the API server returns it.
fn pvc_json(namespace: &str, name: &str, tier: Option<&str>) -> serde_json::Value {
    let mut annotations = serde_json::json!({
        "pv.kubernetes.io/bind-completed": "yes",
        "volume.kubernetes.io/storage-provisioner": "csi.iolane.dev"
    });
    if let Some(t) = tier {
        annotations[TIER] = serde_json::Value::from(t);
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "9d2b6a40-1c3e-4f5a-b6c7-d8e9f0a1b2c3",
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-27T00:00:00Z",
            "annotations": annotations,
            "finalizers": ["kubernetes.io/pvc-protection"]
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "iolane-batch",
            "volumeMode": "Block"
        },
        "status": {"phase": "Pending"}
    })
}

/// The fake API server: PVCs `spark/shuffle-0` (annotated `streaming`) and
/// `spark/plain` (no annotation); every other PVC is a 404 `Status`. Records the paths
/// it was asked for.
async fn fake_api() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    type Seen = Arc<Mutex<Vec<String>>>;
    async fn pvc(
        State(seen): State<Seen>,
        UrlPath((ns, name)): UrlPath<(String, String)>,
    ) -> axum::response::Response {
        seen.lock().expect("test setup").push(format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"
        ));
        let body = match (ns.as_str(), name.as_str()) {
            ("spark", "shuffle-0") => pvc_json(&ns, &name, Some("streaming")),
            ("spark", "plain") => pvc_json(&ns, &name, None),
            _ => {
                let status = serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure",
                    "message": format!("persistentvolumeclaims \"{name}\" not found"),
                    "reason": "NotFound",
                    "details": {"name": name, "kind": "persistentvolumeclaims"},
                    "code": 404
                });
                return (
                    StatusCode::NOT_FOUND,
                    [("content-type", "application/json")],
                    status.to_string(),
                )
                    .into_response();
            }
        };
        ([("content-type", "application/json")], body.to_string()).into_response()
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
            axum::routing::get(pvc),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("test setup");
    let addr = listener.local_addr().expect("test setup");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn kubeconfig(dir: &Path, api: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: iolane\ncurrent-context: fake\nusers:\n- name: iolane\n  user:\n    token: test-token\n"
        ),
    )
    .expect("test setup");
    path
}

/// A free loopback port (bound, then released for the driver to take).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("test setup")
        .local_addr()
        .expect("test setup")
}

/// `GET path` over plain HTTP/1.0: status code and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics address");
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("test setup");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("test setup");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_owned())
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn pvc_annotation_metrics_status_and_healthz() {
    require_root!();
    let (api, seen) = fake_api().await;
    let tmp = tempfile::tempdir().unwrap();
    let cg_root = tmp.path().canonicalize().unwrap().join("cgroup");
    let pod_cg = cg_root
        .join("kubepods/besteffort")
        .join(format!("pod{UID}"));
    fs::create_dir_all(&pod_cg).unwrap();
    fs::write(pod_cg.join("cgroup.controllers"), "io memory\n").unwrap();
    fs::write(pod_cg.join("io.max"), "").unwrap();
    fs::write(pod_cg.join("io.stat"), "").unwrap();
    let metrics = free_addr();
    let status_addr = free_addr();
    let mut d = Driver::start_with(Options {
        args: vec![
            "--kubeconfig".into(),
            kubeconfig(tmp.path(), api).display().to_string(),
            "--metrics-address".into(),
            metrics.to_string(),
            "--status-address".into(),
            status_addr.to_string(),
            "--cgroup-root".into(),
            cg_root.display().to_string(),
            "--reconcile-period".into(),
            "1".into(),
        ],
        // Static caps (the pre-priority batch tier's numbers), so the lines checked below
        // are fixed: the priority controllers, on by default, are checked in `tiers::`.
        config: Some(
            "[priority]\nenabled = false\n\n[tiers.batch]\npriority = \"batch\"\n\
             read_iops = 2000\nwrite_iops = 2000\nread_bps = 209715200\nwrite_bps = 209715200\n"
                .to_owned(),
        ),
        ..Options::default()
    })
    .await;

    // The class allows streaming: the PVC's annotation wins over the class's batch.
    let class = [
        (TIER, "batch"),
        (ALLOWED, "batch,streaming"),
        (PVC_NAMESPACE, "spark"),
    ];
    let mut req = create_request("obs-annotated", vec![block_cap()], GIB, 0);
    req.parameters = params(&[class[0], class[1], class[2], (PVC_NAME, "shuffle-0")]);
    let annotated = ok(
        d.controller.create_volume(req).await,
        "CreateVolume annotated",
    )
    .volume
    .unwrap();
    assert_eq!(annotated.volume_context[TIER], "streaming");
    assert!(
        seen.lock()
            .unwrap()
            .contains(&"/api/v1/namespaces/spark/persistentvolumeclaims/shuffle-0".to_owned()),
        "{:?}",
        seen.lock().unwrap()
    );

    // No annotation: the class's tier.
    let mut req = create_request("obs-plain", vec![block_cap()], GIB, 0);
    req.parameters = params(&[class[0], class[1], class[2], (PVC_NAME, "plain")]);
    let plain = ok(d.controller.create_volume(req).await, "CreateVolume plain")
        .volume
        .unwrap();
    assert_eq!(plain.volume_context[TIER], "batch");

    // A class that does not allow the annotated tier refuses, naming the annotation.
    let mut req = create_request("obs-refused", vec![block_cap()], GIB, 0);
    req.parameters = params(&[(TIER, "batch"), class[2], (PVC_NAME, "shuffle-0")]);
    let e = d.controller.create_volume(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("PVC annotations"), "{}", e.message());
    assert!(e.message().contains("allowed-tiers"), "{}", e.message());

    // A PVC the API does not know: not created, and says which PVC.
    let mut req = create_request("obs-missing", vec![block_cap()], GIB, 0);
    req.parameters = params(&[class[0], class[1], class[2], (PVC_NAME, "gone")]);
    let e = d.controller.create_volume(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("spark/gone"), "{}", e.message());
    // A name that is not a Kubernetes name never reaches the API.
    let mut req = create_request("obs-badname", vec![block_cap()], GIB, 0);
    req.parameters = params(&[
        class[0],
        class[1],
        (PVC_NAMESPACE, "Spark_NS"),
        (PVC_NAME, "x"),
    ]);
    let e = d.controller.create_volume(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains(PVC_NAMESPACE), "{}", e.message());
    assert!(!seen.lock().unwrap().iter().any(|p| p.contains("Spark_NS")));

    // Publish the batch volume to the pod: caps on /metrics and /status.
    let staging = d.make_staging("obs");
    ok(
        d.node
            .node_stage_volume(stage_request(&plain.volume_id, &staging, &block_cap()))
            .await,
        "NodeStage",
    );
    let dir = d
        .root()
        .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv-obs");
    fs::create_dir_all(&dir).unwrap();
    let target = dir.join(UID).display().to_string();
    let mut publish = publish_request(&plain.volume_id, &staging, &target, &block_cap(), false);
    publish.volume_context = plain.volume_context.clone();
    publish.volume_context.insert(POD_UID.into(), UID.into());
    ok(d.node.node_publish_volume(publish).await, "NodePublish");

    let (code, body) = get(metrics, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, text) = get(metrics, "/metrics");
    assert_eq!(code, 200);
    let want_limit = format!(
        "iolane_volume_io_limit{{volume=\"{}\",pod_uid=\"{UID}\",tier=\"batch\",key=\"riops\"}} 2000",
        plain.volume_id
    );
    assert!(text.contains(&want_limit), "{text}");
    assert!(
        text.contains("iolane_csi_requests_total{method=\"CreateVolume\",code=\"Ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "iolane_csi_requests_total{method=\"CreateVolume\",code=\"InvalidArgument\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("iolane_csi_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("iolane_reconcile_applies_total 1"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    // `/status` names volumes and pods: it is on its own address, not the public one.
    assert_eq!(get(metrics, "/status").0, 404);
    // Served from the backend as the refresh loop last read it (every period, 1 s here).
    let mut body = String::new();
    let listed = poll(Duration::from_secs(15), || {
        let (code, b) = get(status_addr, "/status");
        body = b;
        code == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|s| s["volumes"].as_array().is_some_and(|v| v.len() == 2))
    })
    .await;
    assert!(listed, "/status never listed both volumes: {body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let vols = status["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2, "{status}");
    let v = vols
        .iter()
        .find(|v| v["id"] == plain.volume_id.as_str())
        .expect("the published volume");
    assert_eq!(v["tier"], "batch");
    assert_eq!(v["publications"][0]["pod_uid"], UID);
    assert_eq!(
        v["publications"][0]["io_max"],
        "rbps=209715200 wbps=209715200 riops=2000 wiops=2000"
    );

    let out = run(
        &binary().display().to_string(),
        &[
            "status",
            "--address",
            &status_addr.to_string(),
            "--interval",
            "1",
        ],
    );
    for want in [
        &plain.volume_id,
        &annotated.volume_id,
        "streaming",
        "riops=2000",
        UID,
    ] {
        assert!(out.contains(want), "`iolane status` lacks {want}:\n{out}");
    }

    ok(
        d.node
            .node_unpublish_volume(unpublish_request(&plain.volume_id, &target))
            .await,
        "NodeUnpublish",
    );
    assert_eq!(
        fs::read_to_string(pod_cg.join("io.max")).unwrap().trim(),
        format!(
            "{} rbps=max wbps=max riops=max wiops=max",
            v["publications"][0]["device"].as_str().unwrap()
        )
    );
    ok(
        d.node
            .node_unstage_volume(unstage_request(&plain.volume_id, &staging))
            .await,
        "NodeUnstage",
    );
}

/// A backend that stops being ready (its state directory gone) leaves CSI Probe ready, so
/// the livenessprobe sidecar does not get the node restarted; `/healthz`, which the
/// DaemonSet's readinessProbe reads, answers 503 with the reason, and 200 again once the
/// backend is back.
#[tokio::test]
async fn a_backend_not_ready_keeps_probe_ready_and_healthz_says_why() {
    require_root!();
    let metrics = free_addr();
    let mut d = Driver::start_with(Options {
        args: vec!["--metrics-address".into(), metrics.to_string()],
        ..Options::default()
    })
    .await;
    let healthz = || get(metrics, "/healthz");
    assert!(
        poll(Duration::from_secs(30), || healthz().0 == 200).await,
        "/healthz never answered 200: {:?}",
        healthz()
    );
    let state = d.state_dir();
    let moved = state.with_extension("away");
    fs::rename(&state, &moved).unwrap();
    let refused = poll(Duration::from_secs(30), || healthz().0 == 503).await;
    let (code, body) = healthz();
    let probe = d.identity.probe(csi::ProbeRequest {}).await;
    fs::rename(&moved, &state).unwrap();
    assert!(refused, "/healthz did not turn 503: {code} {body}");
    assert!(
        body.contains("state directory") && body.contains(&state.display().to_string()),
        "/healthz's body does not say why: {body}"
    );
    assert_eq!(
        ok(probe, "Probe").ready,
        Some(true),
        "Probe while not ready"
    );
    assert!(
        poll(Duration::from_secs(30), || healthz().0 == 200).await,
        "/healthz did not recover: {:?}",
        healthz()
    );
    d.stop().await;
}
