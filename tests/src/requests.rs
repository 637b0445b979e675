//! CSI request builders: volume capabilities, the Create/Stage/Publish/Unstage/Unpublish
//! requests the suites send, and the test node's topology.

use std::collections::HashMap;

use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use crate::csi::{
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use crate::{NODE_ID, TOPOLOGY_KEY};

/// A capability with `access` and `mode`.
pub fn capability(access: AccessType, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(access),
    }
}

/// SINGLE_NODE_WRITER mount capability with `fs_type` (empty = driver's choice).
pub fn mount_cap(fs: &str) -> VolumeCapability {
    capability(
        AccessType::Mount(MountVolume {
            fs_type: fs.to_owned(),
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    )
}

/// SINGLE_NODE_WRITER raw block capability.
pub fn block_cap() -> VolumeCapability {
    capability(AccessType::Block(BlockVolume {}), Mode::SingleNodeWriter)
}

/// `cap` with its access mode replaced.
pub fn with_mode(mut cap: VolumeCapability, mode: Mode) -> VolumeCapability {
    cap.access_mode = Some(AccessMode { mode: mode as i32 });
    cap
}

/// A CreateVolume request; `required`/`limit` of 0 mean unset, and both 0 sends no range.
pub fn create_request(
    name: &str,
    caps: Vec<VolumeCapability>,
    required: i64,
    limit: i64,
) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: (required != 0 || limit != 0).then_some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        volume_capabilities: caps,
        ..Default::default()
    }
}

/// A NodeStageVolume request.
pub fn stage_request(id: &str, staging: &str, cap: &VolumeCapability) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.to_owned(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    }
}

/// A NodeUnstageVolume request.
pub fn unstage_request(id: &str, staging: &str) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.to_owned(),
    }
}

/// A NodePublishVolume request.
pub fn publish_request(
    id: &str,
    staging: &str,
    target: &str,
    cap: &VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.to_owned(),
        target_path: target.to_owned(),
        volume_capability: Some(cap.clone()),
        readonly,
        ..Default::default()
    }
}

/// A NodeUnpublishVolume request.
pub fn unpublish_request(id: &str, target: &str) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.to_owned(),
    }
}

/// The single-segment topology of the test node.
pub fn node_topology() -> HashMap<String, String> {
    HashMap::from([(TOPOLOGY_KEY.to_owned(), NODE_ID.to_owned())])
}
