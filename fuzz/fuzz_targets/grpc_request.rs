//! gRPC request validation and conversion: the protobuf bytes of a CSI request, decoded
//! as the server decodes them, then every check and conversion its handler runs before it
//! touches anything (`grpc::convert`, `validate`). No panic; every refusal is
//! INVALID_ARGUMENT (OUT_OF_RANGE for a capacity range whose required bytes pass its
//! limit) with a message naming the field; what is accepted is safe to use: a volume ID
//! is one file name component, a path is absolute and normalised inside its root, a mount
//! option cannot smuggle a second option or an argv flag.
//!
//! The input's first byte picks the request type, the rest is its protobuf encoding.
#![no_main]

use std::path::{Component, Path};

use csi_driver::error::{Error, Result};
use csi_driver::fuzzing as convert;
use csi_driver::grpc::error_codes::code_of;
use csi_driver::validate;
use csi_driver::volume::{AccessType, Parameters};
use csi_proto::v1 as csi;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The root the node confines request paths to in the suite (`--path-root`).
const ROOT: &str = "/var/lib/kubelet";

/// A refusal must be a client error naming what is wrong.
fn refused(e: &Error) {
    let code = code_of(e);
    assert!(
        matches!(code, tonic::Code::InvalidArgument | tonic::Code::OutOfRange),
        "bad input answered {code:?}: {e}"
    );
    assert!(!e.to_string().is_empty());
    if let Error::InvalidArgument { field, reason } = e {
        assert!(!field.is_empty() && !reason.is_empty(), "{e}");
    }
}

fn check<T>(r: Result<T>) -> Option<T> {
    r.map_err(|e| refused(&e)).ok()
}

fn id(field: &str, v: &str) {
    if let Some(id) = check(convert::volume_id(field, v)) {
        assert!(
            !id.contains('/') && id != "." && id != ".." && id.len() <= 128,
            "{id:?}"
        );
    }
}

fn path(field: &str, v: &str) {
    let root = Path::new(ROOT);
    for r in [None, Some(root)] {
        if let Some(p) = check(validate::abs_path(field, v, r)) {
            assert!(p.is_absolute(), "{p:?}");
            assert!(
                p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{p:?}"
            );
            if r.is_some() {
                assert!(p.starts_with(root) && p != root, "{p:?}");
            }
        }
    }
}

fn capability(field: &str, c: Option<&csi::VolumeCapability>) {
    let Some(cap) = check(convert::capability(field, c)) else {
        return;
    };
    if let AccessType::Mount { flags, .. } = &cap.access {
        for f in flags {
            assert!(
                !f.starts_with('-') && !f.contains(char::is_whitespace),
                "{f:?}"
            );
            if !f.starts_with("context=\"") {
                assert!(!f.contains(','), "{f:?}");
            }
        }
    }
}

fn parameters(m: &std::collections::HashMap<String, String>) {
    let map = convert::map(m);
    if let Some(p) = check(Parameters::parse(&map)) {
        assert_eq!(check(Parameters::parse(&p.to_map())).as_ref(), Some(&p));
    }
}

fn node(r: &[u8], pick: u8) -> Option<()> {
    match pick {
        0 => {
            let r = csi::NodeStageVolumeRequest::decode(r).ok()?;
            id("volume_id", &r.volume_id);
            check(convert::required(
                "staging_target_path",
                &r.staging_target_path,
            ));
            path("staging_target_path", &r.staging_target_path);
            capability("volume_capability", r.volume_capability.as_ref());
            check(convert::pod_uid(&r.volume_context));
        }
        1 => {
            let r = csi::NodePublishVolumeRequest::decode(r).ok()?;
            id("volume_id", &r.volume_id);
            path("target_path", &r.target_path);
            path("staging_target_path", &r.staging_target_path);
            capability("volume_capability", r.volume_capability.as_ref());
            check(convert::pod_uid(&r.volume_context));
            let _ = iops_controller::ResolvedTier::from_map(&convert::map(&r.volume_context));
        }
        2 => {
            let r = csi::NodeUnpublishVolumeRequest::decode(r).ok()?;
            id("volume_id", &r.volume_id);
            path("target_path", &r.target_path);
        }
        _ => {
            let r = csi::NodeExpandVolumeRequest::decode(r).ok()?;
            id("volume_id", &r.volume_id);
            path("volume_path", &r.volume_path);
            check(convert::capacity_range(r.capacity_range.as_ref()));
            capability("volume_capability", r.volume_capability.as_ref());
        }
    }
    Some(())
}

fn controller(r: &[u8], pick: u8) -> Option<()> {
    match pick {
        0 => {
            let r = csi::CreateVolumeRequest::decode(r).ok()?;
            check(validate::volume_name(&r.name));
            check(convert::capabilities(
                "volume_capabilities",
                &r.volume_capabilities,
            ));
            check(convert::content_source(r.volume_content_source.as_ref()));
            check(convert::capacity_range(r.capacity_range.as_ref()));
            parameters(&r.parameters);
            if let Some(t) = &r.accessibility_requirements {
                for s in t.requisite.iter().chain(&t.preferred) {
                    for v in s.segments.values() {
                        check(validate::node_id(v));
                    }
                }
            }
        }
        1 => {
            let r = csi::ValidateVolumeCapabilitiesRequest::decode(r).ok()?;
            id("volume_id", &r.volume_id);
            check(convert::capabilities(
                "volume_capabilities",
                &r.volume_capabilities,
            ));
            parameters(&r.parameters);
        }
        2 => {
            let r = csi::ControllerExpandVolumeRequest::decode(r).ok()?;
            id("volume_id", &r.volume_id);
            check(convert::capacity_range(r.capacity_range.as_ref()));
            capability("volume_capability", r.volume_capability.as_ref());
        }
        _ => {
            let r = csi::CreateSnapshotRequest::decode(r).ok()?;
            check(validate::volume_name(&r.name));
            id("source_volume_id", &r.source_volume_id);
            parameters(&r.parameters);
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick & 4 == 0 {
        node(rest, pick & 3);
    } else {
        controller(rest, pick & 3);
    }
});
