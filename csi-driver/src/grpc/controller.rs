//! CSI Controller service, served on every node for that node's own volumes.

use csi::controller_service_capability::{Rpc, rpc::Type as RpcType};
use csi_proto::v1 as csi;
use tonic::{Request, Response, Status};

use super::{convert, rpc, rpc_detached};
use crate::driver::{CreateRequest, Driver, SnapshotFilter};
use crate::error::Error;

/// Controller: create (also from a snapshot or volume), delete, list, capacity,
/// validate, expand, modify (on this node), and the snapshot RPCs where the backend
/// has snapshots.
#[derive(Debug)]
pub struct ControllerService {
    driver: Driver,
}

impl ControllerService {
    pub fn new(driver: Driver) -> Self {
        ControllerService { driver }
    }
}

/// The controller RPCs this driver implements on every backend.
/// MODIFY_VOLUME: csi-provisioner in node mode refuses a claim that names a
/// VolumeAttributesClass unless the node socket reports it.
const CAPABILITIES: [RpcType; 5] = [
    RpcType::CreateDeleteVolume,
    RpcType::ListVolumes,
    RpcType::GetCapacity,
    RpcType::ExpandVolume,
    RpcType::ModifyVolume,
];

/// What a backend with snapshots adds (the lvm backend); nothing else is advertised.
const SNAPSHOT_CAPABILITIES: [RpcType; 3] = [
    RpcType::CreateDeleteSnapshot,
    RpcType::ListSnapshots,
    RpcType::CloneVolume,
];

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by iolane"))
}

impl ControllerService {
    /// The answer to a snapshot RPC on a backend without snapshots (which does not
    /// advertise them).
    fn no_snapshots(&self, what: &str) -> Status {
        Status::unimplemented(format!(
            "{what} is not supported by the {} backend (snapshots need a device class of the lvm backend)",
            self.driver.backend_kind()
        ))
    }
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("CreateVolume", async move {
            convert::required("name", &r.name)?;
            let capabilities =
                convert::capabilities("volume_capabilities", &r.volume_capabilities)?;
            let source = convert::content_source(r.volume_content_source.as_ref())?;
            let create = CreateRequest {
                name: r.name.clone(),
                range: convert::capacity_range(r.capacity_range.as_ref())?,
                capabilities,
                parameters: convert::map(&r.parameters),
                mutable_parameters: (!r.mutable_parameters.is_empty())
                    .then(|| convert::map(&r.mutable_parameters)),
                requisite: r
                    .accessibility_requirements
                    .as_ref()
                    .map(|t| {
                        t.requisite
                            .iter()
                            .map(|s| convert::map(&s.segments))
                            .collect()
                    })
                    .unwrap_or_default(),
                source,
            };
            let v = driver.create_volume(create).await?;
            Ok(csi::CreateVolumeResponse {
                volume: Some(convert::volume(
                    &v,
                    driver.volume_context(&v),
                    &driver.topology(),
                )),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("DeleteVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            driver.delete_volume(id).await?;
            Ok(csi::DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(unimplemented("ControllerPublishVolume"))
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(unimplemented("ControllerUnpublishVolume"))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        rpc("ValidateVolumeCapabilities", async {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            if r.volume_capabilities.is_empty() {
                return Err(Error::invalid(
                    "volume_capabilities",
                    "must list at least one capability",
                ));
            }
            self.driver.validate_capabilities(id).await?;
            // Unsupported capabilities or parameters are not an error here: the answer is
            // simply "not confirmed", with the reason.
            // The parameters as CreateVolume checks them, tier keys included.
            let verdict = convert::capabilities("volume_capabilities", &r.volume_capabilities)
                .and_then(|_| crate::volume::Parameters::parse(&convert::map(&r.parameters)))
                .and_then(|p| self.driver.tiering().check_class(&p.tier));
            Ok(match verdict {
                Ok(_) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                        volume_context: r.volume_context,
                        volume_capabilities: r.volume_capabilities,
                        parameters: r.parameters,
                        mutable_parameters: r.mutable_parameters,
                    }),
                    message: String::new(),
                },
                Err(e) => csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: e.to_string(),
                },
            })
        })
        .await
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let r = req.into_inner();
        rpc("ListVolumes", async {
            let page = self
                .driver
                .list_volumes(r.max_entries, &r.starting_token)
                .await?;
            let topology = self.driver.topology();
            Ok(csi::ListVolumesResponse {
                entries: page
                    .volumes
                    .iter()
                    .map(|v| csi::list_volumes_response::Entry {
                        volume: Some(convert::volume(v, self.driver.volume_context(v), &topology)),
                        status: None,
                    })
                    .collect(),
                next_token: page.next_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let r = req.into_inner();
        rpc("GetCapacity", async {
            // Capabilities this driver cannot honour have no capacity at all.
            if !r.volume_capabilities.is_empty()
                && convert::capabilities("volume_capabilities", &r.volume_capabilities).is_err()
            {
                return Ok(csi::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: Some(0),
                    minimum_volume_size: None,
                });
            }
            let topology = r
                .accessible_topology
                .as_ref()
                .map(|t| convert::map(&t.segments));
            let cap = self
                .driver
                .capacity(&convert::map(&r.parameters), topology.as_ref())
                .await?;
            Ok(csi::GetCapacityResponse {
                available_capacity: convert::bytes(cap.available),
                maximum_volume_size: Some(convert::bytes(cap.max_volume_size)),
                minimum_volume_size: Some(convert::bytes(crate::backend::loopback::GRANULARITY)),
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        rpc("ControllerGetCapabilities", async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: CAPABILITIES
                    .iter()
                    .chain(
                        SNAPSHOT_CAPABILITIES
                            .iter()
                            .filter(|_| self.driver.snapshots()),
                    )
                    .map(|t| csi::ControllerServiceCapability {
                        r#type: Some(csi::controller_service_capability::Type::Rpc(Rpc {
                            r#type: *t as i32,
                        })),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        if !self.driver.snapshots() {
            return Err(self.no_snapshots("CreateSnapshot"));
        }
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("CreateSnapshot", async move {
            convert::required("name", &r.name)?;
            convert::required("source_volume_id", &r.source_volume_id)?;
            let s = driver
                .create_snapshot(&r.name, &r.source_volume_id, &convert::map(&r.parameters))
                .await?;
            Ok(csi::CreateSnapshotResponse {
                snapshot: Some(convert::snapshot(&s)),
            })
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        if !self.driver.snapshots() {
            return Err(self.no_snapshots("DeleteSnapshot"));
        }
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("DeleteSnapshot", async move {
            convert::required("snapshot_id", &r.snapshot_id)?;
            driver.delete_snapshot(&r.snapshot_id).await?;
            Ok(csi::DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        if !self.driver.snapshots() {
            return Err(self.no_snapshots("ListSnapshots"));
        }
        let r = req.into_inner();
        rpc("ListSnapshots", async {
            let filter = SnapshotFilter {
                snapshot_id: &r.snapshot_id,
                source_volume_id: &r.source_volume_id,
            };
            let page = self
                .driver
                .list_snapshots(filter, r.max_entries, &r.starting_token)
                .await?;
            Ok(csi::ListSnapshotsResponse {
                entries: page
                    .snapshots
                    .iter()
                    .map(|s| csi::list_snapshots_response::Entry {
                        snapshot: Some(convert::snapshot(s)),
                    })
                    .collect(),
                next_token: page.next_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn get_snapshot(
        &self,
        _req: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        Err(unimplemented("GetSnapshot"))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("ControllerExpandVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            let range = r
                .capacity_range
                .as_ref()
                .ok_or_else(|| Error::invalid("capacity_range", "must be given"))?;
            let range = convert::capacity_range(Some(range))?;
            let block = match r.volume_capability.as_ref() {
                Some(c) => matches!(
                    convert::capability("volume_capability", Some(c))?.access,
                    crate::volume::AccessType::Block
                ),
                None => false,
            };
            let size = driver.controller_expand(id, range).await?;
            Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: convert::bytes(size),
                // A raw block volume needs only the loop device refreshed, which the node
                // does too; a filesystem must be grown where it is mounted.
                node_expansion_required: !block,
            })
        })
        .await
    }

    async fn controller_get_volume(
        &self,
        _req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(unimplemented("ControllerGetVolume"))
    }

    async fn controller_modify_volume(
        &self,
        req: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("ControllerModifyVolume", async move {
            driver
                .modify_volume(&r.volume_id, &convert::map(&r.mutable_parameters))
                .await?;
            Ok(csi::ControllerModifyVolumeResponse {})
        })
        .await
    }
}
