//! A CSI client over a node's Unix socket, for `iolane demo`: the demo drives the node
//! through the same gRPC services kubelet and csi-provisioner call, and this wrapper keeps
//! the protobuf types inside `grpc/`. Raw block volumes only (what the demo's O_DIRECT load
//! needs); each call is one RPC, its failure carried with the call's name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume};
use csi_proto::v1 as csi;
use tonic::transport::{Channel, Endpoint};

/// How long one RPC may take (CreateVolume and NodeStage run commands; generous for slow
/// emulated machines).
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed connect or RPC.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: {code:?}: {message}")]
    Rpc {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl ClientError {
    /// The gRPC code of a failed RPC (`None` for a connect failure).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            ClientError::Connect { .. } => None,
        }
    }
}

fn rpc<T>(
    call: &'static str,
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, ClientError> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| ClientError::Rpc {
            call,
            code: s.code(),
            message: s.message().to_owned(),
        })
}

/// What CreateVolume returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedVolume {
    pub id: String,
    pub capacity_bytes: i64,
    pub context: BTreeMap<String, String>,
}

/// Identity, Controller and Node clients on one channel.
#[derive(Debug, Clone)]
pub struct CsiClient {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl CsiClient {
    /// Connects to the socket at `socket` (a path, not a `unix://` URI).
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        let err = |source| ClientError::Connect {
            socket: socket.display().to_string(),
            source,
        };
        let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(err)?
            .timeout(RPC_TIMEOUT)
            .connect()
            .await
            .map_err(err)?;
        Ok(CsiClient {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }

    /// Probe's `ready` (absent counts as ready, as the spec says).
    pub async fn ready(&mut self) -> Result<bool, ClientError> {
        let r = rpc("Probe", self.identity.probe(csi::ProbeRequest {}).await)?;
        Ok(r.ready.unwrap_or(true))
    }

    /// CreateVolume of a SINGLE_NODE_WRITER raw block volume with `parameters` (the
    /// StorageClass's).
    pub async fn create_block_volume(
        &mut self,
        name: &str,
        bytes: i64,
        parameters: &BTreeMap<String, String>,
    ) -> Result<CreatedVolume, ClientError> {
        let req = csi::CreateVolumeRequest {
            name: name.to_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![block_cap()],
            parameters: parameters.clone().into_iter().collect::<HashMap<_, _>>(),
            ..Default::default()
        };
        let r = rpc("CreateVolume", self.controller.create_volume(req).await)?;
        let v = r.volume.ok_or(ClientError::Rpc {
            call: "CreateVolume",
            code: tonic::Code::Internal,
            message: "the response has no volume".to_owned(),
        })?;
        Ok(CreatedVolume {
            id: v.volume_id,
            capacity_bytes: v.capacity_bytes,
            context: v.volume_context.into_iter().collect(),
        })
    }

    /// NodeStageVolume of a raw block volume at `staging`.
    pub async fn stage_block(
        &mut self,
        id: &str,
        staging: &Path,
        context: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let req = csi::NodeStageVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: path_str(staging),
            volume_capability: Some(block_cap()),
            volume_context: context.clone().into_iter().collect(),
            ..Default::default()
        };
        rpc("NodeStageVolume", self.node.node_stage_volume(req).await).map(drop)
    }

    /// NodePublishVolume of a raw block volume at `target`; `context` carries the pod UID
    /// the way kubelet passes it (`csi.storage.k8s.io/pod.uid`).
    pub async fn publish_block(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        context: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let req = csi::NodePublishVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: path_str(staging),
            target_path: path_str(target),
            volume_capability: Some(block_cap()),
            volume_context: context.clone().into_iter().collect(),
            ..Default::default()
        };
        rpc(
            "NodePublishVolume",
            self.node.node_publish_volume(req).await,
        )
        .map(drop)
    }

    pub async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), ClientError> {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: id.to_owned(),
            target_path: path_str(target),
        };
        rpc(
            "NodeUnpublishVolume",
            self.node.node_unpublish_volume(req).await,
        )
        .map(drop)
    }

    pub async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), ClientError> {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: path_str(staging),
        };
        rpc(
            "NodeUnstageVolume",
            self.node.node_unstage_volume(req).await,
        )
        .map(drop)
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), ClientError> {
        let req = csi::DeleteVolumeRequest {
            volume_id: id.to_owned(),
            ..Default::default()
        };
        rpc("DeleteVolume", self.controller.delete_volume(req).await).map(drop)
    }
}
