//! The node's HTTP endpoints: on `--metrics-address`, `GET /metrics` (every part's
//! metrics, in the OpenMetrics text format) and `GET /healthz` (ready while the backend
//! is); on `--status-address` (loopback by default: it names volumes and pods),
//! `GET /status` (the JSON snapshot `iolane status` reads).
//!
//! The binary owns the [`Registry`]: [`registry`] starts it with `iolane_build_info`, then
//! each part registers its own metrics (enforcement's, the CSI RPCs', the pool gauges).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::driver::Driver;
use crate::status::StatusSource;

/// The `Content-Type` of `/metrics`: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How often [`watch_readiness`] asks the backend.
const READINESS_PERIOD: Duration = Duration::from_secs(5);

/// Whether the process is ready: `Err` carries the reason `/healthz` reports.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A registry holding `iolane_build_info{version}` (always 1), for the parts to add theirs.
pub fn registry(version: &str) -> Registry {
    let mut registry = Registry::default();
    let build_info = Family::<Vec<(String, String)>, Gauge>::default();
    build_info
        .get_or_create(&vec![("version".to_owned(), version.to_owned())])
        .set(1);
    registry.register(
        "iolane_build_info",
        "iolane's version; always 1",
        build_info,
    );
    registry
}

/// Everything in `registry`, in the OpenMetrics text format (ending with `# EOF`).
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// What the metrics endpoint serves.
#[derive(Clone)]
pub struct Routes {
    pub registry: Arc<Registry>,
    pub ready: Readiness,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field("ready", &(self.ready)())
            .finish_non_exhaustive()
    }
}

/// The bound endpoint, not serving yet.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port; see [`HttpServer::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> io::Result<HttpServer> {
        Ok(HttpServer {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics` and `/healthz` until `shutdown` completes, then stops accepting
    /// and lets requests in flight finish.
    pub async fn serve(
        self,
        routes: Routes,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let app = axum::Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(healthz_handler))
            .with_state(routes);
        tracing::info!(addr = %self.listener.local_addr()?, "serving /metrics and /healthz");
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves `/status` until `shutdown` completes, like [`HttpServer::serve`].
    pub async fn serve_status(
        self,
        source: StatusSource,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let app = axum::Router::new()
            .route("/status", get(status_handler))
            .with_state(source);
        tracing::info!(addr = %self.listener.local_addr()?, "serving /status");
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn metrics_handler(State(routes): State<Routes>) -> Response {
    match render(&routes.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(fmt::Error) => {
            tracing::warn!("metrics could not be encoded");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n",
            )
                .into_response()
        }
    }
}

async fn healthz_handler(State(routes): State<Routes>) -> Response {
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match (routes.ready)() {
        Ok(()) => (StatusCode::OK, text_plain, "ok\n").into_response(),
        Err(reason) => {
            let mut body = reason;
            if !body.ends_with('\n') {
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, text_plain, body).into_response()
        }
    }
}

/// `GET /status`: the snapshot `iolane status` prints, as JSON; 503 until the refresh
/// loop's first reading of the backend.
async fn status_handler(State(source): State<StatusSource>) -> Response {
    match source.snapshot().await {
        Some(s) => axum::Json(s).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "status: the backend has not been read yet\n",
        )
            .into_response(),
    }
}

/// The backend's readiness, asked in the background every few seconds (the check is async
/// and `/healthz`'s endpoint is not): `Err` with the reason while it is not ready. The
/// channel starts at `Err("not checked yet")` and every check is sent, changed or not;
/// [`readiness_of`] serves it to `/healthz`, `k8s::readiness` turns its changes into
/// Events on the Node.
pub fn watch_readiness(driver: &Driver) -> watch::Receiver<Result<(), String>> {
    let (tx, rx) = watch::channel(Err::<(), String>("not checked yet".to_owned()));
    let driver = driver.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(READINESS_PERIOD);
        loop {
            tick.tick().await;
            let now = driver.probe().await;
            tracing::debug!(ready = now.is_ok(), reason = ?now.as_ref().err(), "backend readiness checked");
            let _previous = tx.send_replace(now);
        }
    });
    rx
}

/// `/healthz`'s answer: the latest check of [`watch_readiness`].
pub fn readiness_of(rx: watch::Receiver<Result<(), String>>) -> Readiness {
    Arc::new(move || rx.borrow().clone())
}

#[cfg(test)]
mod tests;
