//! CSI Node service.

use csi::node_service_capability::{Rpc, rpc::Type as RpcType};
use csi_proto::v1 as csi;
use tonic::{Request, Response, Status};

use super::{convert, rpc, rpc_detached};
use crate::driver::{Driver, Usage};

/// Node: stage, publish, stats, expand, info.
#[derive(Debug)]
pub struct NodeService {
    driver: Driver,
}

impl NodeService {
    pub fn new(driver: Driver) -> Self {
        NodeService { driver }
    }
}

const CAPABILITIES: [RpcType; 4] = [
    RpcType::StageUnstageVolume,
    RpcType::GetVolumeStats,
    RpcType::VolumeCondition,
    RpcType::ExpandVolume,
];

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("NodeStageVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            convert::required("staging_target_path", &r.staging_target_path)?;
            let cap = convert::capability("volume_capability", r.volume_capability.as_ref())?;
            driver.node_stage(id, &r.staging_target_path, &cap).await?;
            Ok(csi::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("NodeUnstageVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            convert::required("staging_target_path", &r.staging_target_path)?;
            driver.node_unstage(id, &r.staging_target_path).await?;
            Ok(csi::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("NodePublishVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            convert::required("target_path", &r.target_path)?;
            let cap = convert::capability("volume_capability", r.volume_capability.as_ref())?;
            convert::required("staging_target_path", &r.staging_target_path)?;
            let pod = convert::pod_uid(&r.volume_context)?;
            driver
                .node_publish(
                    id,
                    &r.staging_target_path,
                    &r.target_path,
                    &cap,
                    r.readonly,
                    pod,
                )
                .await?;
            Ok(csi::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("NodeUnpublishVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            convert::required("target_path", &r.target_path)?;
            driver.node_unpublish(id, &r.target_path).await?;
            Ok(csi::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let r = req.into_inner();
        rpc("NodeGetVolumeStats", async {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            convert::required("volume_path", &r.volume_path)?;
            let stats = self.driver.node_stats(id, &r.volume_path).await?;
            let unit = |u: csi::volume_usage::Unit, total: u64, available: u64, used: u64| {
                csi::VolumeUsage {
                    available: convert::bytes(available),
                    total: convert::bytes(total),
                    used: convert::bytes(used),
                    unit: u as i32,
                }
            };
            let usage = match stats.usage {
                Usage::Filesystem(s) => vec![
                    unit(
                        csi::volume_usage::Unit::Bytes,
                        s.total_bytes,
                        s.available_bytes,
                        s.used_bytes,
                    ),
                    unit(
                        csi::volume_usage::Unit::Inodes,
                        s.total_inodes,
                        s.free_inodes,
                        s.used_inodes,
                    ),
                ],
                Usage::Block { total_bytes } => {
                    vec![unit(csi::volume_usage::Unit::Bytes, total_bytes, 0, 0)]
                }
            };
            Ok(csi::NodeGetVolumeStatsResponse {
                usage,
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: stats.abnormal.is_some(),
                    message: stats
                        .abnormal
                        .unwrap_or_else(|| "volume is healthy".to_owned()),
                }),
            })
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        let driver = self.driver.clone();
        rpc_detached("NodeExpandVolume", async move {
            let id = convert::volume_id("volume_id", &r.volume_id)?;
            convert::required("volume_path", &r.volume_path)?;
            let range = r
                .capacity_range
                .as_ref()
                .map(|c| convert::capacity_range(Some(c)))
                .transpose()?;
            let size = driver.node_expand(id, &r.volume_path, range).await?;
            Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: convert::bytes(size),
            })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        rpc("NodeGetCapabilities", async {
            Ok(csi::NodeGetCapabilitiesResponse {
                capabilities: CAPABILITIES
                    .iter()
                    .map(|t| csi::NodeServiceCapability {
                        r#type: Some(csi::node_service_capability::Type::Rpc(Rpc {
                            r#type: *t as i32,
                        })),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _req: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        rpc("NodeGetInfo", async {
            let s = self.driver.settings();
            Ok(csi::NodeGetInfoResponse {
                node_id: s.node_id.clone(),
                max_volumes_per_node: s.max_volumes_per_node,
                accessible_topology: Some(csi::Topology {
                    segments: self.driver.topology().into_iter().collect(),
                }),
            })
        })
        .await
    }
}
