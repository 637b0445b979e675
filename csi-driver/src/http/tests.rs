//! The HTTP endpoint over real TCP on the loopback interface.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// One HTTP/1.1 request over a fresh connection: (status, content type, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = lines
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    (code, content_type, body.to_owned())
}

#[test]
fn the_registry_starts_with_build_info_then_each_part() {
    let mut r = registry("1.2.3");
    iops_controller::EnforcementMetrics::new().register(&mut r);
    let text = render(&r).unwrap();
    assert!(
        text.starts_with(
            "# HELP iolane_build_info iolane's version; always 1.\n\
             # TYPE iolane_build_info gauge\n\
             iolane_build_info{version=\"1.2.3\"} 1\n\
             # HELP iolane_reconcile_passes Reconcile passes run.\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn serves_metrics_and_health_over_tcp() {
    let mut r = registry("9.9.9");
    iops_controller::EnforcementMetrics::new().register(&mut r);
    let registry = Arc::new(r);
    let ready = Arc::new(AtomicBool::new(false));
    let readiness: Readiness = {
        let ready = Arc::clone(&ready);
        Arc::new(move || {
            if ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no volume backend yet: pool iolane/pool missing".to_owned())
            }
        })
    };
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let routes = Routes {
        registry: Arc::clone(&registry),
        ready: readiness,
    };
    let serving = tokio::spawn(server.serve(routes, async {
        let _ = stopped.await;
    }));

    let (code, content_type, body) = request(addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(content_type, CONTENT_TYPE);
    assert!(
        body.starts_with("# HELP iolane_build_info iolane's version; always 1.\n"),
        "{body}"
    );
    assert!(
        body.contains("\niolane_build_info{version=\"9.9.9\"} 1\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(body, render(&registry).unwrap());

    let (code, content_type, body) = request(addr, "GET", "/healthz").await;
    assert_eq!(
        (code, content_type.as_str(), body.as_str()),
        (
            503,
            "text/plain; charset=utf-8",
            "no volume backend yet: pool iolane/pool missing\n"
        )
    );
    ready.store(true, Ordering::SeqCst);
    let (code, _, body) = request(addr, "GET", "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    assert_eq!(request(addr, "GET", "/nothing").await.0, 404);
    assert_eq!(request(addr, "GET", "/status").await.0, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.0, 405);

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test]
async fn binding_a_taken_port_fails() {
    let first = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = first.local_addr().unwrap();
    let e = HttpServer::bind(addr).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
}

/// `/status` is served from the refresh loop's last backend reading (503 before the
/// first), with the publications the enforcement controller knows now; nothing else.
#[tokio::test]
async fn status_is_served_from_the_cache_and_the_enforcement_controller() {
    use crate::status::{NodeStatus, StatusCache, StatusSource, VolumeStatus};
    use iops_controller::reconcile::Publication;
    use iops_controller::{DeviceNumber, Enforcement, FakeCgroupFs, Limits, PodUid};

    let enforcement = Arc::new(Enforcement::new(
        "/nonexistent-cgroup-root".into(),
        Arc::new(FakeCgroupFs::new()),
    ));
    let cache = StatusCache::default();
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let source = StatusSource {
        cache: cache.clone(),
        enforcement: Arc::clone(&enforcement),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_status(source, async {
        let _ = stopped.await;
    }));

    let (code, _, body) = request(addr, "GET", "/status").await;
    assert_eq!(code, 503, "{body}");

    let volume = |id: &str| VolumeStatus {
        id: id.to_owned(),
        name: format!("pvc-{id}"),
        capacity_bytes: 1 << 30,
        device_class: None,
        tier: "batch".to_owned(),
        caps: Limits::UNLIMITED,
        condition: None,
        publications: Vec::new(),
    };
    cache.set(NodeStatus {
        node_id: "n1".to_owned(),
        backend: "loop".to_owned(),
        pools: Vec::new(),
        volumes: vec![volume("iol-a"), volume("iol-b")],
        devices: Vec::new(),
    });
    enforcement
        .publish(Publication {
            volume_id: "iol-b".to_owned(),
            target_path: "/t/b".into(),
            pod_uid: PodUid::parse("0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b").unwrap(),
            device: DeviceNumber { major: 7, minor: 1 },
            tier: "batch".to_owned(),
            limits: Limits::UNLIMITED,
        })
        .await;
    let (code, content_type, body) = request(addr, "GET", "/status").await;
    assert_eq!((code, content_type.as_str()), (200, "application/json"));
    let got: NodeStatus = serde_json::from_str(&body).unwrap();
    assert_eq!(got.volumes.len(), 2);
    assert!(got.volumes[0].publications.is_empty());
    assert_eq!(got.volumes[1].publications.len(), 1);
    assert_eq!(
        got.volumes[1].publications[0].target,
        std::path::Path::new("/t/b")
    );
    assert_eq!(request(addr, "GET", "/metrics").await.0, 404);

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
