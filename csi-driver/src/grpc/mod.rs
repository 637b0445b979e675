//! gRPC adapters: the only code that touches `csi-proto` types.
//!
//! **Architecture Invariant:** each handler takes the request, converts it to domain
//! types (validating as it goes), calls [`crate::driver::Driver`], and converts the result;
//! every error becomes a status in [`status`], and is logged once, here.

mod central;
pub mod client;
mod controller;
mod convert;
mod identity;
mod node;
pub mod status;

use std::future::Future;
use std::time::Instant;

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
        IdentityServer::new(IdentityService::new(
            Some(driver.clone()),
            plugin_name.to_owned(),
        )),
        ControllerServer::new(ControllerService::new(driver.clone())),
        NodeServer::new(NodeService::new(driver.clone())),
    )
}

/// The tonic services of the central controller endpoint (`iolane controller`).
pub fn central_services(
    plugin_name: &str,
) -> (
    IdentityServer<IdentityService>,
    ControllerServer<CentralControllerService>,
) {
    (
        IdentityServer::new(IdentityService::new(None, plugin_name.to_owned())),
        ControllerServer::new(CentralControllerService),
    )
}

/// Runs one RPC body, logs its outcome once, and maps the error to a status.
async fn rpc<T, F>(name: &'static str, body: F) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let out = body.await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match out {
        Ok(v) => {
            tracing::debug!(rpc = name, ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = Status::from(e);
            if status::is_caller_error(status.code()) {
                tracing::info!(rpc = name, ms, code = ?status.code(), error = %status.message(), "refused");
            } else {
                tracing::warn!(rpc = name, ms, code = ?status.code(), error = %status.message(), "failed");
            }
            Err(status)
        }
    }
}
