//! Protobuf to domain conversions, validating as they go. Errors name the request field.

use std::collections::{BTreeMap, HashMap};

use csi::volume_capability::AccessType as PbAccess;
use csi::volume_capability::access_mode::Mode;
use csi_proto::v1 as csi;

use crate::error::{Error, Result};
use crate::os::FsType;
use crate::validate;
use crate::volume::{
    AccessMode, AccessType, Capability, CapacityRange, ContentSource, Snapshot, Volume,
};

/// A required, well-formed volume ID.
pub fn volume_id<'a>(field: &str, id: &'a str) -> Result<&'a str> {
    validate::volume_id(field, id)
}

/// A required string field.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        Err(Error::invalid(field, "must be given"))
    } else {
        Ok(value)
    }
}

/// A capability, checked against what a node-local volume can honour.
pub fn capability(field: &str, cap: Option<&csi::VolumeCapability>) -> Result<Capability> {
    let cap = cap.ok_or_else(|| Error::invalid(field, "must be given"))?;
    let access = match &cap.access_type {
        None => {
            return Err(Error::invalid(
                format!("{field}.access_type"),
                "must be mount or block",
            ));
        }
        Some(PbAccess::Block(_)) => AccessType::Block,
        Some(PbAccess::Mount(m)) => {
            let fs = if m.fs_type.is_empty() {
                None
            } else {
                Some(FsType::parse(&m.fs_type).ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.mount.fs_type"),
                        format!("{:?} is not supported; use ext4 or xfs", m.fs_type),
                    )
                })?)
            };
            if !m.volume_mount_group.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.mount.volume_mount_group"),
                    "is not supported (VOLUME_MOUNT_GROUP is not advertised)",
                ));
            }
            AccessType::Mount {
                fs,
                flags: validate::mount_flags(&m.mount_flags)?,
            }
        }
    };
    let mode_field = format!("{field}.access_mode");
    let raw = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Error::invalid(&mode_field, "must be given"))?
        .mode;
    let mode = match Mode::try_from(raw) {
        Ok(Mode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
        Ok(Mode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
        Ok(m @ (Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter)) => {
            return Err(Error::Unsupported(format!(
                "{mode_field}: {} needs the SINGLE_NODE_MULTI_WRITER capability, which iolane does not advertise",
                m.as_str_name()
            )));
        }
        Ok(
            m @ (Mode::MultiNodeReaderOnly
            | Mode::MultiNodeSingleWriter
            | Mode::MultiNodeMultiWriter),
        ) => {
            return Err(Error::Unsupported(format!(
                "{mode_field}: {} is not possible for node-local volumes",
                m.as_str_name()
            )));
        }
        Ok(Mode::Unknown) | Err(_) => {
            return Err(Error::invalid(
                mode_field,
                format!("{raw} is not a known access mode"),
            ));
        }
    };
    Ok(Capability { access, mode })
}

/// Every capability in a list, which must not be empty.
pub fn capabilities(field: &str, caps: &[csi::VolumeCapability]) -> Result<Vec<Capability>> {
    if caps.is_empty() {
        return Err(Error::invalid(field, "must list at least one capability"));
    }
    caps.iter()
        .enumerate()
        .map(|(i, c)| capability(&format!("{field}[{i}]"), Some(c)))
        .collect()
}

/// An optional capacity range.
pub fn capacity_range(range: Option<&csi::CapacityRange>) -> Result<CapacityRange> {
    match range {
        None => Ok(CapacityRange::default()),
        Some(r) => CapacityRange::new(r.required_bytes, r.limit_bytes),
    }
}

/// A protobuf map as an ordered map.
pub fn map(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The pod UID kubelet passes in `volume_context` (CSIDriver `podInfoOnMount`), checked
/// to be UUID-shaped; `None` when absent (csi-sanity sends none).
pub fn pod_uid(context: &HashMap<String, String>) -> Result<Option<iops_controller::PodUid>> {
    let key = iops_controller::keys::POD_UID;
    context
        .get(key)
        .map(|v| {
            iops_controller::PodUid::parse(v).map_err(|_| {
                Error::invalid(
                    format!("volume_context[{key:?}]"),
                    "must be a pod UID (8-4-4-4-12 lowercase hex digits)",
                )
            })
        })
        .transpose()
}

/// CSI `volume_content_source`: `None` when absent, and an error naming the field when it
/// is given without a snapshot or volume ID.
pub fn content_source(src: Option<&csi::VolumeContentSource>) -> Result<Option<ContentSource>> {
    use csi::volume_content_source::Type;
    let Some(src) = src else {
        return Ok(None);
    };
    let source = match &src.r#type {
        None => {
            return Err(Error::invalid(
                "volume_content_source",
                "must name a snapshot or a volume",
            ));
        }
        Some(Type::Snapshot(s)) => {
            required("volume_content_source.snapshot.snapshot_id", &s.snapshot_id)?;
            ContentSource::Snapshot(s.snapshot_id.clone())
        }
        Some(Type::Volume(v)) => {
            required("volume_content_source.volume.volume_id", &v.volume_id)?;
            ContentSource::Volume(v.volume_id.clone())
        }
    };
    validate::volume_id(source.field(), source.id())?;
    Ok(Some(source))
}

/// A domain content source as the CSI message.
fn content_source_message(src: &ContentSource) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    csi::VolumeContentSource {
        r#type: Some(match src {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

/// A domain snapshot as the CSI `Snapshot` message (always ready: a thin snapshot is
/// complete once it exists).
pub fn snapshot(s: &Snapshot) -> csi::Snapshot {
    let secs = s.created_ns / 1_000_000_000;
    let nanos = s.created_ns % 1_000_000_000;
    csi::Snapshot {
        size_bytes: bytes(s.size_bytes),
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: i32::try_from(nanos).unwrap_or(0),
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// A domain volume as the CSI `Volume` message.
pub fn volume(
    v: &Volume,
    context: BTreeMap<String, String>,
    topology: &BTreeMap<String, String>,
) -> csi::Volume {
    csi::Volume {
        capacity_bytes: i64::try_from(v.capacity_bytes).unwrap_or(i64::MAX),
        volume_id: v.id.clone(),
        volume_context: context.into_iter().collect(),
        content_source: v.source.as_ref().map(content_source_message),
        accessible_topology: vec![csi::Topology {
            segments: topology
                .iter()
                .map(|(k, val)| (k.clone(), val.clone()))
                .collect(),
        }],
    }
}

/// Bytes as the spec's signed integer.
pub fn bytes(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_cap(fs: &str, mode: Mode) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(PbAccess::Mount(csi::volume_capability::MountVolume {
                fs_type: fs.to_owned(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            })),
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn accepts_node_local_modes() {
        let c = capability(
            "volume_capability",
            Some(&mount_cap("xfs", Mode::SingleNodeWriter)),
        )
        .unwrap();
        assert_eq!(
            c.access,
            AccessType::Mount {
                fs: Some(FsType::Xfs),
                flags: vec![]
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = capability("volume_capability", None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "volume_capability: must be given");
        let e = capability(
            "volume_capability",
            Some(&mount_cap("btrfs", Mode::SingleNodeWriter)),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("volume_capability.mount.fs_type: "), "{e}");
        let e = capabilities(
            "volume_capabilities",
            &[mount_cap("", Mode::MultiNodeMultiWriter)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("volume_capabilities[0].access_mode: "), "{e}");
        assert!(capabilities("volume_capabilities", &[]).is_err());
    }
}
