//! CSI Controller service of `iolane controller`, the central Deployment next to
//! csi-resizer. It owns no storage: every volume lives on the node that created it, and
//! creation happens there (csi-provisioner in node-deployment mode talks to the node's own
//! socket). What must be central is volume expansion, because csi-resizer has no per-node
//! mode: this service checks the request and answers `node_expansion_required`, and the
//! owning node grows the LV and the filesystem in NodeExpandVolume. The same holds for
//! ControllerModifyVolume (VolumeAttributesClass changes): this service validates the
//! request and hands it to [`crate::retier::central`], which records it on the PV and
//! answers once the owning node acknowledged it.

use csi::controller_service_capability::{Rpc, rpc::Type as RpcType};
use csi_proto::v1 as csi;
use tonic::{Request, Response, Status};

use super::{convert, rpc};
use crate::error::Error;

/// Granularity every backend's sizes are a multiple of (the loop backend's MiB; LVM
/// extents are multiples of it). The owning node reports the exact size it grew to.
const GRANULARITY: u64 = 1 << 20;

/// Controller of the central Deployment: capabilities, expansion and modification.
#[derive(Debug)]
pub struct CentralControllerService {
    /// The tiers of the node config, for checking `mutable_parameters`.
    tiers: iops_controller::TierSet,
    /// `None` without a Kubernetes API: ControllerModifyVolume is then UNAVAILABLE.
    modifier: Option<crate::retier::central::Modifier>,
}

impl CentralControllerService {
    pub fn new(
        tiers: iops_controller::TierSet,
        modifier: Option<crate::retier::central::Modifier>,
    ) -> Self {
        CentralControllerService { tiers, modifier }
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not served by `iolane controller`; volumes are managed on their node"
    ))
}

/// The size a node will grow a volume to for `range`: `required` (or `limit`) rounded up
/// to [`GRANULARITY`] within `limit`.
fn expanded_size(range: crate::volume::CapacityRange) -> crate::error::Result<u64> {
    if range.required == 0 && range.limit == 0 {
        return Err(Error::invalid("capacity_range", "must be given"));
    }
    range.pick(GRANULARITY, 0)
}

#[tonic::async_trait]
impl csi::controller_server::Controller for CentralControllerService {
    async fn create_volume(
        &self,
        _req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        Err(unimplemented("CreateVolume"))
    }

    async fn delete_volume(
        &self,
        _req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        Err(unimplemented("DeleteVolume"))
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
        _req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        Err(unimplemented("ValidateVolumeCapabilities"))
    }

    async fn list_volumes(
        &self,
        _req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        Err(unimplemented("ListVolumes"))
    }

    async fn get_capacity(
        &self,
        _req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Err(unimplemented("GetCapacity"))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        rpc("ControllerGetCapabilities", async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: [RpcType::ExpandVolume, RpcType::ModifyVolume]
                    .into_iter()
                    .map(|t| csi::ControllerServiceCapability {
                        r#type: Some(csi::controller_service_capability::Type::Rpc(Rpc {
                            r#type: t as i32,
                        })),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        _req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        Err(unimplemented("CreateSnapshot"))
    }

    async fn delete_snapshot(
        &self,
        _req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        Err(unimplemented("DeleteSnapshot"))
    }

    async fn list_snapshots(
        &self,
        _req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Err(unimplemented("ListSnapshots"))
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
        rpc("ControllerExpandVolume", async {
            convert::volume_id("volume_id", &r.volume_id)?;
            let range = r
                .capacity_range
                .as_ref()
                .ok_or_else(|| Error::invalid("capacity_range", "must be given"))?;
            if let Some(c) = r.volume_capability.as_ref() {
                convert::capability("volume_capability", Some(c))?;
            }
            let size = expanded_size(convert::capacity_range(Some(range))?)?;
            Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: convert::bytes(size),
                // The LV lives on one node: only that node can grow it (and its
                // filesystem), in NodeExpandVolume.
                node_expansion_required: true,
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
        rpc("ControllerModifyVolume", async {
            convert::volume_id("volume_id", &r.volume_id)?;
            let parameters = convert::map(&r.mutable_parameters);
            // Bad input is refused before anything is looked up or recorded.
            iops_controller::resolve::check(
                &self.tiers,
                &iops_controller::ClassTier::default(),
                Some(&parameters),
            )?;
            let Some(modifier) = &self.modifier else {
                return Err(Error::NotReady(
                    "no Kubernetes API: `iolane controller` records ControllerModifyVolume \
                     on the volume's PV"
                        .to_owned(),
                ));
            };
            modifier.modify(&r.volume_id, parameters).await?;
            Ok(csi::ControllerModifyVolumeResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::CapacityRange;

    #[test]
    fn sizes_round_up_within_the_limit() {
        let r = |required, limit| CapacityRange { required, limit };
        assert_eq!(expanded_size(r(1, 0)).unwrap(), 1 << 20);
        assert_eq!(expanded_size(r(3 << 30, 0)).unwrap(), 3 << 30);
        assert_eq!(expanded_size(r(0, 5 << 20)).unwrap(), 5 << 20);
        assert!(expanded_size(r(0, 0)).is_err());
        // No MiB multiple between 1.5 MiB and 1.5 MiB + 1000 bytes.
        assert!(expanded_size(r(3 << 19, (3 << 19) + 1000)).is_err());
    }
}
