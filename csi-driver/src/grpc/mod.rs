//! gRPC adapters: the only code that touches `csi-proto` types.
//!
//! **Architecture Invariant:** each handler takes the request, converts it to domain
//! types (validating as it goes), calls [`crate::driver::Driver`], and converts the result;
//! every error becomes a status in [`error_codes`], and is logged once, here.

pub mod authority;
mod central;
pub mod client;
mod controller;
pub(crate) mod convert;
pub mod error_codes;
mod identity;
mod node;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tonic::Code;

use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use tonic::{Response, Status};

use crate::driver::Driver;
use crate::error::Result;

pub use central::CentralControllerService;
pub use controller::ControllerService;
pub use identity::IdentityService;
pub use node::NodeService;

/// The three tonic services of a node endpoint, ready to add to a router.
pub fn services(
    driver: &Driver,
    plugin_name: &str,
) -> (
    IdentityServer<IdentityService>,
    ControllerServer<ControllerService>,
    NodeServer<NodeService>,
) {
    (
        IdentityServer::new(IdentityService::new(plugin_name.to_owned())),
        ControllerServer::new(ControllerService::new(driver.clone())),
        NodeServer::new(NodeService::new(driver.clone())),
    )
}

/// The tonic services of the central controller endpoint (`iolane controller`).
pub fn central_services(
    plugin_name: &str,
    controller: CentralControllerService,
) -> (
    IdentityServer<IdentityService>,
    ControllerServer<CentralControllerService>,
) {
    (
        IdentityServer::new(IdentityService::new(plugin_name.to_owned())),
        ControllerServer::new(controller),
    )
}

/// CSI call counts and latencies on `/metrics`: `iolane_csi_requests_total{method,code}`
/// and `iolane_csi_request_duration_seconds{method}`.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

type Labels = Vec<(String, String)>;

impl RpcMetrics {
    fn new() -> Self {
        RpcMetrics {
            requests: Family::default(),
            // 1 ms to about 65 s: node calls take milliseconds, LVM ones seconds.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
        }
    }

    fn record(&self, method: &str, code: Code, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("method".to_owned(), method.to_owned()),
                ("code".to_owned(), format!("{code:?}")),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("method".to_owned(), method.to_owned())])
            .observe(seconds);
    }
}

static RPC_METRICS: OnceLock<RpcMetrics> = OnceLock::new();

/// Registers the CSI call metrics in `registry`; from then on every call is counted. Only
/// the first call registers (one process serves one registry).
pub fn register_rpc_metrics(registry: &mut Registry) {
    if RPC_METRICS.get().is_some() {
        return;
    }
    let m = RPC_METRICS.get_or_init(RpcMetrics::new);
    registry.register(
        "iolane_csi_requests",
        "CSI calls served, by method and gRPC code",
        m.requests.clone(),
    );
    registry.register_with_unit(
        "iolane_csi_request_duration",
        "Time to serve a CSI call, by method",
        Unit::Seconds,
        m.duration.clone(),
    );
}

/// Runs one RPC body that changes state as a task of its own: a client that gives up
/// (deadline, cancel, closed connection) drops only the wait for it, and the body runs to
/// its end, finishing or undoing its work, releasing its admission reservation and its
/// in-flight guard only when its children are done (they are killed when their future is
/// dropped). The outcome is logged and counted either way.
async fn rpc_detached<T, F>(name: &'static str, body: F) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(rpc(name, body)).await {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(rpc = name, error = %e, "the call's task ended without an answer");
            Err(Status::internal(format!(
                "{name} ended without an answer: {e}"
            )))
        }
    }
}

/// Runs one RPC body, logs its outcome once, and maps the error to a status.
async fn rpc<T, F>(name: &'static str, body: F) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let out = body.await;
    let elapsed = start.elapsed().as_secs_f64();
    let ms = elapsed * 1000.0;
    if let Some(m) = RPC_METRICS.get() {
        let code = match &out {
            Ok(_) => Code::Ok,
            Err(e) => error_codes::code_of(e),
        };
        m.record(name, code, elapsed);
    }
    match out {
        Ok(v) => {
            tracing::debug!(rpc = name, ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = Status::from(e);
            if error_codes::is_caller_error(status.code()) {
                tracing::info!(rpc = name, ms, code = ?status.code(), error = %status.message(), "refused");
            } else {
                tracing::warn!(rpc = name, ms, code = ?status.code(), error = %status.message(), "failed");
            }
            Err(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A client that gives up drops the handler's future: the body must still run to its
    /// end (with `rpc` instead of `rpc_detached` it stops at its first await).
    #[tokio::test]
    async fn a_dropped_detached_call_still_runs_to_its_end() {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let call = rpc_detached("Test", async move {
            go_rx.await.expect("go");
            done_tx.send(()).expect("done");
            Ok(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), call)
                .await
                .is_err(),
            "the call waits for its body"
        );
        go_tx.send(()).expect("the body is still waiting");
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("the body ran to its end after its caller gave up")
            .expect("done");
    }
}
