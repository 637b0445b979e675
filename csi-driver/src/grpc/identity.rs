//! CSI Identity service.

use csi::plugin_capability::{Service, VolumeExpansion, service, volume_expansion};
use csi_proto::v1 as csi;
use tonic::{Request, Response, Status};

use super::rpc;
use crate::driver::Driver;

/// Identity: name, version, capabilities, readiness.
#[derive(Debug)]
pub struct IdentityService {
    /// The node's driver; `None` for the central controller, which has no storage and is
    /// ready as soon as it serves.
    driver: Option<Driver>,
    name: String,
}

impl IdentityService {
    pub fn new(driver: Option<Driver>, name: String) -> Self {
        IdentityService { driver, name }
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

    async fn probe(
        &self,
        _req: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        rpc("Probe", async {
            let probe = match &self.driver {
                Some(d) => d.probe().await,
                None => Ok(()),
            };
            let ready = match probe {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(reason = %why, "probe: backend not ready");
                    false
                }
            };
            Ok(csi::ProbeResponse { ready: Some(ready) })
        })
        .await
    }
}
