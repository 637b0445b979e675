//! CSI Identity service.

use csi::plugin_capability::{Service, VolumeExpansion, service, volume_expansion};
use csi_proto::v1 as csi;
use tonic::{Request, Response, Status};

use super::rpc;

/// Identity: name, version, capabilities, liveness.
#[derive(Debug)]
pub struct IdentityService {
    name: String,
}

impl IdentityService {
    pub fn new(name: String) -> Self {
        IdentityService { name }
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        rpc("GetPluginInfo", async {
            Ok(csi::GetPluginInfoResponse {
                name: self.name.clone(),
                vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
                manifest: [("spec".to_owned(), csi_proto::SPEC_VERSION.to_owned())].into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::Service(Service {
                r#type: t as i32,
            })),
        };
        rpc("GetPluginCapabilities", async {
            Ok(csi::GetPluginCapabilitiesResponse {
                capabilities: vec![
                    svc(service::Type::ControllerService),
                    svc(service::Type::VolumeAccessibilityConstraints),
                    csi::PluginCapability {
                        r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                            VolumeExpansion {
                                r#type: volume_expansion::Type::Online as i32,
                            },
                        )),
                    },
                ],
            })
        })
        .await
    }

    /// Ready unless the process is wedged: a process that answers is live. The backend's
    /// readiness (a refused device, a missing VG) is `/healthz`'s answer, which the
    /// DaemonSet's readinessProbe reads: answering not-ready here would make the
    /// livenessprobe sidecar fail the liveness check and kubelet restart a node that
    /// should stay up and say why.
    async fn probe(
        &self,
        _req: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        rpc("Probe", async {
            Ok(csi::ProbeResponse { ready: Some(true) })
        })
        .await
    }
}
