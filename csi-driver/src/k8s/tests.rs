//! The look-up against an in-process fake API server on the loopback interface that
//! answers with the JSON a real API server sends.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;

use super::*;

/// What the fake server saw: (path and query, Authorization header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A PVC as the API server returns it (trimmed managedFields aside, a real object).
fn pvc(namespace: &str, name: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({
        "kind": "PersistentVolumeClaim",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "5d1c0f2a-8a0e-4f59-9a51-3b0d8f7c2e11",
            "resourceVersion": "48213",
            "creationTimestamp": "2025-03-02T10:15:42Z",
            "labels": { "app.kubernetes.io/name": "spark-shuffle" },
            "annotations": annotations,
            "finalizers": ["kubernetes.io/pvc-protection"]
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "20Gi" } },
            "storageClassName": "iolane-batch",
            "volumeMode": "Filesystem"
        },
        "status": { "phase": "Pending" }
    })
}

fn status(code: u16, reason: &str, message: &str, name: &str) -> serde_json::Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "name": name, "kind": "persistentvolumeclaims" },
        "code": code
    })
}

/// A JSON answer, as the API server sends it.
fn json_answer(code: StatusCode, body: &serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn get_pvc(
    State(seen): State<Seen>,
    Path((namespace, name)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock()
        .unwrap()
        .push((uri.path_and_query().unwrap().to_string(), auth));
    match (namespace.as_str(), name.as_str()) {
        ("pipelines", "shuffle-0") => json_answer(
            StatusCode::OK,
            &pvc(
                &namespace,
                &name,
                json!({
                    "iolane.dev/tier": "streaming",
                    "volume.kubernetes.io/selected-node": "nvme-node-3",
                    "volume.beta.kubernetes.io/storage-provisioner": "csi.iolane.dev",
                    "volume.kubernetes.io/storage-provisioner": "csi.iolane.dev"
                }),
            ),
        ),
        ("pipelines", "spill.v2") => json_answer(
            StatusCode::OK,
            &pvc(
                &namespace,
                &name,
                json!({ "volume.kubernetes.io/selected-node": "nvme-node-3" }),
            ),
        ),
        ("pipelines", "bare") => {
            let mut object = pvc(&namespace, &name, json!({}));
            object["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
            json_answer(StatusCode::OK, &object)
        }
        ("pipelines", "garbled") => (StatusCode::OK, "{\"kind\": ").into_response(),
        ("locked", _) => json_answer(
            StatusCode::FORBIDDEN,
            &status(
                403,
                "Forbidden",
                &format!(
                    "persistentvolumeclaims \"{name}\" is forbidden: User \
                     \"system:serviceaccount:iolane:iolane-node\" cannot get resource \
                     \"persistentvolumeclaims\" in API group \"\" in the namespace \"locked\""
                ),
                &name,
            ),
        ),
        ("overloaded", _) => json_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            &status(500, "InternalError", "etcdserver: leader changed", &name),
        ),
        ("busy", _) => json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &status(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
                &name,
            ),
        ),
        ("teapot", _) => json_answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &status(422, "Invalid", "something odd", &name),
        ),
        _ => json_answer(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                &format!("persistentvolumeclaims \"{name}\" not found"),
                &name,
            ),
        ),
    }
}

/// Starts the fake API server; returns its URL and what it saw. It stops with the test's
/// runtime.
async fn fake_api() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
            axum::routing::get(get_pvc),
        )
        .with_state(Arc::clone(&seen));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn seen_paths(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect()
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn reads_the_tier_annotation() {
    let (url, seen) = fake_api().await;
    let api = KubePvcAnnotations::from_url(&url, TIMEOUT).unwrap();
    assert_eq!(
        api.tier("pipelines", "shuffle-0").await.unwrap().as_deref(),
        Some("streaming")
    );
    // Annotated, but not with a tier; and no annotations at all.
    assert_eq!(api.tier("pipelines", "spill.v2").await.unwrap(), None);
    assert_eq!(api.tier("pipelines", "bare").await.unwrap(), None);
    assert_eq!(
        seen_paths(&seen),
        [
            "/api/v1/namespaces/pipelines/persistentvolumeclaims/shuffle-0",
            "/api/v1/namespaces/pipelines/persistentvolumeclaims/spill.v2",
            "/api/v1/namespaces/pipelines/persistentvolumeclaims/bare",
        ]
    );
    // Through the trait object the driver holds.
    let dyn_api: Arc<dyn PvcAnnotations> = Arc::new(api);
    assert_eq!(
        dyn_api
            .tier("pipelines", "shuffle-0")
            .await
            .unwrap()
            .as_deref(),
        Some("streaming")
    );
    assert!(format!("{dyn_api:?}").starts_with("KubePvcAnnotations {"));
}

#[tokio::test]
async fn api_errors_map_to_variants() {
    let (url, seen) = fake_api().await;
    let api = KubePvcAnnotations::from_url(&url, TIMEOUT).unwrap();

    let e = api.tier("pipelines", "missing").await.unwrap_err();
    assert!(
        matches!(&e, LookupError::NotFound { namespace, name } if namespace == "pipelines" && name == "missing"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "persistentvolumeclaim pipelines/missing not found"
    );

    let e = api.tier("locked", "data").await.unwrap_err();
    assert!(
        matches!(&e, LookupError::Forbidden { code: 403, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "not allowed to read persistentvolumeclaim locked/data (HTTP 403): \
         persistentvolumeclaims \"data\" is forbidden: User \
         \"system:serviceaccount:iolane:iolane-node\" cannot get resource \
         \"persistentvolumeclaims\" in API group \"\" in the namespace \"locked\""
    );

    let e = api.tier("overloaded", "data").await.unwrap_err();
    assert!(matches!(&e, LookupError::Unavailable { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "kubernetes API unavailable reading persistentvolumeclaim overloaded/data: \
         HTTP 500: etcdserver: leader changed"
    );

    let e = api.tier("teapot", "data").await.unwrap_err();
    assert!(matches!(&e, LookupError::Unexpected { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "reading persistentvolumeclaim teapot/data: HTTP 422: something odd"
    );

    let e = api.tier("pipelines", "garbled").await.unwrap_err();
    assert!(matches!(&e, LookupError::Unexpected { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("reading persistentvolumeclaim pipelines/garbled: "),
        "{e}"
    );

    assert_eq!(
        seen_paths(&seen),
        [
            "/api/v1/namespaces/pipelines/persistentvolumeclaims/missing",
            "/api/v1/namespaces/locked/persistentvolumeclaims/data",
            "/api/v1/namespaces/overloaded/persistentvolumeclaims/data",
            "/api/v1/namespaces/teapot/persistentvolumeclaims/data",
            "/api/v1/namespaces/pipelines/persistentvolumeclaims/garbled",
        ]
    );
}

#[tokio::test]
async fn invalid_names_never_reach_the_api() {
    let (url, seen) = fake_api().await;
    let api = KubePvcAnnotations::from_url(&url, TIMEOUT).unwrap();
    let long_label = "a".repeat(64);
    let long_name = format!("{}.{}", "a".repeat(200), "b".repeat(53));
    let cases: [(&str, &str, &str, &str); 12] = [
        ("", "data", keys::PVC_NAMESPACE, "must not be empty"),
        ("pipelines", "", keys::PVC_NAME, "must not be empty"),
        (
            &long_label,
            "data",
            keys::PVC_NAMESPACE,
            "must be at most 63 characters",
        ),
        (
            "pipelines",
            &long_name,
            keys::PVC_NAME,
            "must be at most 253 characters",
        ),
        ("Pipelines", "data", keys::PVC_NAMESPACE, "rule"),
        ("pipe.lines", "data", keys::PVC_NAMESPACE, "rule"),
        ("-pipelines", "data", keys::PVC_NAMESPACE, "rule"),
        ("pipelines", "../../secrets/x", keys::PVC_NAME, "rule"),
        ("pipelines", "data?watch=1", keys::PVC_NAME, "rule"),
        ("pipelines", "data-", keys::PVC_NAME, "rule"),
        ("pipelines", "data..v2", keys::PVC_NAME, "rule"),
        ("pipelines", "data%2F", keys::PVC_NAME, "rule"),
    ];
    for (namespace, name, field, reason) in cases {
        let e = api.tier(namespace, name).await.unwrap_err();
        let LookupError::InvalidName {
            field: f,
            value,
            reason: r,
        } = &e
        else {
            panic!("{namespace}/{name}: {e:?}");
        };
        assert_eq!(*f, field, "{namespace}/{name}");
        let want_value = if field == keys::PVC_NAMESPACE {
            namespace
        } else {
            name
        };
        assert_eq!(value, want_value);
        if reason == "rule" {
            assert!(r.starts_with("must consist of lowercase letters"), "{r}");
        } else {
            assert_eq!(*r, reason);
        }
        assert!(e.to_string().starts_with(&format!(
            "{field} {want_value:?} is not a valid Kubernetes name: "
        )));
    }
    assert!(seen_paths(&seen).is_empty());

    // The longest valid names pass.
    let max_label = "a".repeat(63);
    let max_name = format!("{}.{}", "a".repeat(200), "b".repeat(52));
    assert!(dns1123_label(keys::PVC_NAMESPACE, &max_label).is_ok());
    assert!(dns1123_subdomain(keys::PVC_NAME, &max_name).is_ok());
    assert!(dns1123_subdomain(keys::PVC_NAME, "0.shuffle-1.x").is_ok());
}

#[tokio::test]
async fn kubeconfig_credentials_are_sent() {
    let (url, seen) = fake_api().await;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: test\n  cluster:\n    server: {url}\n\
         users:\n\
         - name: iolane\n  user:\n    token: t0ken-for-tests\n\
         contexts:\n\
         - name: test\n  context:\n    cluster: test\n    user: iolane\n    namespace: pipelines\n\
         current-context: test\n"
    ))
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let api = KubePvcAnnotations::from_config(config, TIMEOUT).unwrap();
    assert_eq!(
        api.tier("pipelines", "shuffle-0").await.unwrap().as_deref(),
        Some("streaming")
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(
            "/api/v1/namespaces/pipelines/persistentvolumeclaims/shuffle-0".to_owned(),
            Some("Bearer t0ken-for-tests".to_owned())
        )]
    );
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable() {
    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let api = KubePvcAnnotations::from_url(&format!("http://{addr}"), TIMEOUT).unwrap();
    let e = api.tier("pipelines", "shuffle-0").await.unwrap_err();
    let LookupError::Unavailable { reason, .. } = &e else {
        panic!("{e:?}");
    };
    assert!(reason.contains("Connection refused"), "{reason}");
    assert!(
        e.to_string().starts_with(
            "kubernetes API unavailable reading persistentvolumeclaim pipelines/shuffle-0: "
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_silent_api_times_out() {
    // Accepts connections and never answers; holds them until the test ends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            holder.lock().unwrap().push(stream);
        }
    });
    let timeout = Duration::from_millis(300);
    let api = KubePvcAnnotations::from_url(&format!("http://{addr}"), timeout).unwrap();
    let start = Instant::now();
    let e = api.tier("pipelines", "shuffle-0").await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&e, LookupError::Timeout { timeout: t, .. } if *t == timeout),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "kubernetes API did not answer within 300ms reading persistentvolumeclaim \
         pipelines/shuffle-0"
    );
    assert!(took >= timeout, "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "the request did reach the server"
    );
}

/// The client retries 429, 503 and 504 with backoff; the look-up's timeout bounds that.
#[tokio::test]
async fn retries_stay_within_the_timeout() {
    let (url, seen) = fake_api().await;
    let timeout = Duration::from_millis(800);
    let api = KubePvcAnnotations::from_url(&url, timeout).unwrap();
    let start = Instant::now();
    let e = api.tier("busy", "data").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(&e, LookupError::Timeout { .. }), "{e:?}");
    assert!(took >= timeout && took < Duration::from_secs(5), "{took:?}");
    let tries = seen_paths(&seen);
    assert!(tries.len() >= 2, "{tries:?}");
    assert!(
        tries
            .iter()
            .all(|p| p == "/api/v1/namespaces/busy/persistentvolumeclaims/data")
    );
}

#[test]
fn bad_urls_are_refused() {
    for (url, reason) in [
        ("not a url", "invalid uri character"),
        ("/api", "must be absolute, such as https://host:6443"),
    ] {
        let e = KubePvcAnnotations::from_url(url, TIMEOUT).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("kubernetes API URL {url:?}: {reason}")
        );
    }
}
