//! Rust bindings for the Container Storage Interface (CSI) gRPC API.
//!
//! The types and the tonic client/server stubs are generated at build time from
//! `proto/csi.proto`, which mirrors the wire definitions of CSI spec
//! [`SPEC_VERSION`] (package `csi.v1`). Everything lives under [`v1`], e.g.
//! `csi_proto::v1::CreateVolumeRequest`,
//! `csi_proto::v1::controller_server::ControllerServer` or
//! `csi_proto::v1::node_client::NodeClient`.
//!
//! Well-known types map to `prost-types` (`google.protobuf.Timestamp` becomes
//! `prost_types::Timestamp`), and wrapper types such as
//! `google.protobuf.BoolValue` become plain `Option<bool>` / `Option<i64>`.

/// CSI specification version these bindings were generated from.
pub const SPEC_VERSION: &str = "1.12.0";

/// Generated `csi.v1` messages, enums, and gRPC clients/servers.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rustdoc::all
)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message;

    use super::v1::{
        CapacityRange, ControllerServiceCapability, CreateVolumeRequest, NodeExpandVolumeRequest,
        VolumeCapability,
        controller_service_capability::rpc::Type as ControllerRpc,
        volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode},
    };

    fn sample_request() -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: "pvc-1234".to_owned(),
            capacity_range: Some(CapacityRange {
                required_bytes: 10 << 30,
                limit_bytes: 20 << 30,
            }),
            volume_capabilities: vec![VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume {
                    fs_type: "ext4".to_owned(),
                    mount_flags: vec!["noatime".to_owned()],
                    volume_mount_group: String::new(),
                })),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
            }],
            parameters: HashMap::from([
                ("iops".to_owned(), "3000".to_owned()),
                ("tier".to_owned(), "gold".to_owned()),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn spec_version_is_1_12_0() {
        assert_eq!(super::SPEC_VERSION, "1.12.0");
    }

    #[test]
    fn create_volume_request_round_trips() {
        let original = sample_request();
        let bytes = original.encode_to_vec();
        let decoded = CreateVolumeRequest::decode(bytes.as_slice()).expect("decode");
        assert_eq!(decoded, original);

        let cap = decoded.volume_capabilities.first().expect("one capability");
        assert_eq!(
            cap.access_mode.as_ref().map(|m| m.mode()),
            Some(Mode::SingleNodeWriter)
        );
        assert_eq!(
            decoded.parameters.get("tier").map(String::as_str),
            Some("gold")
        );
        assert_eq!(
            decoded
                .capacity_range
                .map(|c| (c.required_bytes, c.limit_bytes)),
            Some((10 << 30, 20 << 30))
        );
    }

    /// Checks a few field numbers against the spec through the wire tags
    /// (tag byte = field_number << 3 | wire_type, wire type 2 = length-delimited).
    #[test]
    fn wire_tags_match_spec_field_numbers() {
        let name_only = CreateVolumeRequest {
            name: "v".to_owned(),
            ..Default::default()
        };
        // name = 1
        assert_eq!(name_only.encode_to_vec(), vec![0x0a, 0x01, b'v']);

        // capacity_range = 2 (an empty sub-message still gets emitted).
        let cap_only = CreateVolumeRequest {
            capacity_range: Some(CapacityRange::default()),
            ..Default::default()
        };
        assert_eq!(cap_only.encode_to_vec(), vec![0x12, 0x00]);

        // secrets = 5, mutable_parameters = 8.
        let secrets_only = CreateVolumeRequest {
            secrets: HashMap::from([("k".to_owned(), "v".to_owned())]),
            ..Default::default()
        };
        assert_eq!(secrets_only.encode_to_vec().first(), Some(&0x2a));
        let mutable_only = CreateVolumeRequest {
            mutable_parameters: HashMap::from([("k".to_owned(), "v".to_owned())]),
            ..Default::default()
        };
        assert_eq!(mutable_only.encode_to_vec().first(), Some(&0x42));

        // NodeExpandVolumeRequest.secrets = 6.
        let expand = NodeExpandVolumeRequest {
            secrets: HashMap::from([("k".to_owned(), "v".to_owned())]),
            ..Default::default()
        };
        assert_eq!(expand.encode_to_vec().first(), Some(&0x32));

        // Enum numbers added or promoted in recent spec versions.
        assert_eq!(ControllerRpc::ModifyVolume as i32, 14);
        assert_eq!(ControllerRpc::GetSnapshot as i32, 15);
        let rpc_cap = ControllerServiceCapability {
            r#type: Some(super::v1::controller_service_capability::Type::Rpc(
                super::v1::controller_service_capability::Rpc {
                    r#type: ControllerRpc::GetSnapshot as i32,
                },
            )),
        };
        // rpc = 1 (message), then RPC.type = 1 (varint) with value 15.
        assert_eq!(rpc_cap.encode_to_vec(), vec![0x0a, 0x02, 0x08, 0x0f]);
    }
}
