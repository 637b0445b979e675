//! The volume domain: capabilities, capacity rules, identities and parameters, free of
//! protobuf types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use iops_controller::{ClassTier, ResolvedTier, keys};

use crate::error::{Error, Result};
use crate::os::FsType;

/// Topology key whose value is the node ID; every volume is reachable only there.
pub const TOPOLOGY_KEY: &str = "topology.iolane.dev/node";

/// Size of a volume created without a capacity range.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// How a volume is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessType {
    /// A filesystem mounted at the target; `fs` is `None` when the CO left it to us.
    Mount {
        fs: Option<FsType>,
        flags: Vec<String>,
    },
    /// The raw block device bind-mounted at the target.
    Block,
}

/// The access modes a node-local volume can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessMode {
    pub fn read_only(self) -> bool {
        matches!(self, AccessMode::SingleNodeReaderOnly)
    }
}

/// One volume capability, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub access: AccessType,
    pub mode: AccessMode,
}

/// What the CO asked for in `capacity_range` (0 = unset), as the spec defines it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityRange {
    pub required: u64,
    pub limit: u64,
}

impl CapacityRange {
    /// Validates the pair: `limit` (when set) must not be below `required`.
    pub fn new(required: i64, limit: i64) -> Result<Self> {
        let required = u64::try_from(required)
            .map_err(|_| Error::invalid("capacity_range.required_bytes", "must not be negative"))?;
        let limit = u64::try_from(limit)
            .map_err(|_| Error::invalid("capacity_range.limit_bytes", "must not be negative"))?;
        if limit != 0 && required > limit {
            return Err(Error::OutOfRange(format!(
                "capacity_range.required_bytes {required} is above capacity_range.limit_bytes {limit}"
            )));
        }
        Ok(CapacityRange { required, limit })
    }

    /// Whether an existing size satisfies this range.
    pub fn admits(self, size: u64) -> bool {
        size >= self.required && (self.limit == 0 || size <= self.limit)
    }

    /// The size to allocate: `required` (or the default) rounded up to `granularity` and
    /// raised to `min`, as long as that stays within `limit`.
    pub fn pick(self, granularity: u64, min: u64) -> Result<u64> {
        let mut want = if self.required > 0 {
            self.required
        } else if self.limit > 0 {
            self.limit.min(DEFAULT_SIZE)
        } else {
            DEFAULT_SIZE
        };
        want = want.max(min);
        let rounded = want
            .checked_next_multiple_of(granularity)
            .ok_or_else(|| Error::OutOfRange(format!("{want} bytes is too large")))?;
        if self.limit != 0 && rounded > self.limit {
            // Round down instead if that still meets the request.
            let down = self.limit / granularity * granularity;
            if down >= self.required.max(min) && down > 0 {
                return Ok(down);
            }
            return Err(Error::OutOfRange(format!(
                "no size that is a multiple of {granularity} bytes and at least {} bytes fits capacity_range.limit_bytes {}",
                self.required.max(min),
                self.limit
            )));
        }
        Ok(rounded)
    }
}

/// CreateVolume parameters iolane understands, deserialised once from the CSI map
/// ([`Parameters::parse`]); anything else is refused by name. Stored (LV tags, loop
/// metadata) and serialised as that same flat map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Parameters {
    /// Added by csi-provisioner's `--extra-create-metadata`.
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
    /// The lvm device class (StorageClass parameter); `None` picks the node's first class.
    pub device_class: Option<String>,
    /// The StorageClass's tier and explicit caps, as tier resolution reads them (it checks
    /// the values, naming the key).
    pub tier: ClassTier,
}

/// The parameter key that selects a device class.
pub const DEVICE_CLASS_KEY: &str = keys::DEVICE_CLASS;

/// The parameters that are not tier keys, as the map deserialises them; the tier keys go
/// to [`ClassTier`], the rest to `unknown`.
#[derive(Deserialize)]
struct Fields {
    #[serde(
        rename = "csi.storage.k8s.io/pvc/name",
        default,
        deserialize_with = "given"
    )]
    pvc_name: Option<String>,
    #[serde(
        rename = "csi.storage.k8s.io/pvc/namespace",
        default,
        deserialize_with = "given"
    )]
    pvc_namespace: Option<String>,
    #[serde(
        rename = "csi.storage.k8s.io/pv/name",
        default,
        deserialize_with = "given"
    )]
    pv_name: Option<String>,
    #[serde(
        rename = "iolane.dev/device-class",
        default,
        deserialize_with = "given"
    )]
    device_class: Option<String>,
    #[serde(flatten)]
    tier: ClassTier,
    #[serde(flatten)]
    unknown: BTreeMap<String, String>,
}

/// The keys csi-provisioner adds; with [`keys::STORAGE_CLASS_KEYS`], every key iolane reads.
const PROVISIONER_KEYS: [&str; 3] = [keys::PVC_NAME, keys::PVC_NAMESPACE, keys::PV_NAME];

/// A parameter that is present (a CSI map value is a plain string, never null).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

impl Parameters {
    /// The parameters as the CSI key/value map they were parsed from.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let own = [
            (keys::PVC_NAME, &self.pvc_name),
            (keys::PVC_NAMESPACE, &self.pvc_namespace),
            (keys::PV_NAME, &self.pv_name),
            (DEVICE_CLASS_KEY, &self.device_class),
        ];
        own.into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .chain(self.tier.entries())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The error for a device class this node does not have.
    pub fn unknown_class(class: &str, known: &[&str]) -> Error {
        let reason = if known.is_empty() {
            format!(
                "device class {class:?} is not configured on this node (it serves the loop backend, which has no device classes)"
            )
        } else {
            format!(
                "device class {class:?} is not configured on this node (it has: {})",
                known.join(", ")
            )
        };
        Error::invalid(format!("parameters[{DEVICE_CLASS_KEY:?}]"), reason)
    }

    /// Parses a CSI parameter map, naming the first unknown or malformed key: an unknown
    /// `iolane.dev/` key with tier resolution's message (it lists the StorageClass keys),
    /// any other with the keys iolane reads.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self> {
        for (k, v) in map {
            if k.len() > 316 || v.len() > 4096 || v.chars().any(char::is_control) {
                return Err(Error::invalid(
                    format!("parameters[{k:?}]"),
                    "key or value too long or contains control characters",
                ));
            }
        }
        let pairs = map.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let fields = Fields::deserialize(serde::de::value::MapDeserializer::<
            _,
            serde::de::value::Error,
        >::new(pairs))
        .map_err(|e| Error::invalid("parameters", e.to_string()))?;
        if let Some(key) = fields.unknown.keys().next() {
            if key.starts_with(keys::PREFIX) {
                return Err(ClassTier::unknown_key(key).into());
            }
            let known: Vec<&str> = PROVISIONER_KEYS
                .into_iter()
                .chain(keys::STORAGE_CLASS_KEYS)
                .collect();
            return Err(Error::invalid(
                format!("parameters[{key:?}]"),
                format!("unknown key; known keys: {}", known.join(", ")),
            ));
        }
        Ok(Parameters {
            pvc_name: fields.pvc_name,
            pvc_namespace: fields.pvc_namespace,
            pv_name: fields.pv_name,
            device_class: fields.device_class,
            tier: fields.tier,
        })
    }

    /// GetCapacity's parameters: a StorageClass's parameters as written. csi-provisioner's
    /// capacity controller passes them unfiltered, with the keys under the CO's reserved
    /// prefix `csi.storage.k8s.io/` (`fstype`, the secret names) that it strips before
    /// CreateVolume; those are skipped here, the rest is checked as in [`Parameters::parse`].
    pub fn parse_storage_class(map: &BTreeMap<String, String>) -> Result<Self> {
        let own: BTreeMap<String, String> = map
            .iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self::parse(&own)
    }
}

impl TryFrom<BTreeMap<String, String>> for Parameters {
    type Error = Error;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self> {
        Parameters::parse(&map)
    }
}

impl From<Parameters> for BTreeMap<String, String> {
    fn from(p: Parameters) -> Self {
        p.to_map()
    }
}

/// The prefix of the StorageClass parameters reserved for the CO (csi-provisioner).
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";

/// The ID iolane gives the volume named `name`: deterministic, so a retried CreateVolume
/// after a crash finds the volume it started, and safe as a file name.
pub fn volume_id_for(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = String::with_capacity(VOLUME_PREFIX.len() + 32);
    id.push_str(VOLUME_PREFIX);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The ID iolane gives the snapshot named `name`: like [`volume_id_for`] with its own
/// prefix, so a snapshot ID is never a volume ID (and an `iol-*` sweep never sees one).
pub fn snapshot_id_for(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = String::with_capacity(SNAPSHOT_PREFIX.len() + 32);
    id.push_str(SNAPSHOT_PREFIX);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Prefix of every volume ID (and of the LV holding the volume).
pub const VOLUME_PREFIX: &str = "iol-";

/// Prefix of every snapshot ID (and of the LV holding the snapshot).
pub const SNAPSHOT_PREFIX: &str = "iolsnap-";

/// What a new volume is made from (CSI `volume_content_source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentSource {
    /// A snapshot, by snapshot ID.
    Snapshot(String),
    /// Another volume, by volume ID.
    Volume(String),
}

impl ContentSource {
    /// The snapshot or volume ID.
    pub fn id(&self) -> &str {
        match self {
            ContentSource::Snapshot(id) | ContentSource::Volume(id) => id,
        }
    }

    /// The request field the ID came from, for error messages.
    pub fn field(&self) -> &'static str {
        match self {
            ContentSource::Snapshot(_) => "volume_content_source.snapshot.snapshot_id",
            ContentSource::Volume(_) => "volume_content_source.volume.volume_id",
        }
    }
}

/// A point-in-time copy of a volume, as a backend stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    /// The volume it was taken of (which may since have been deleted).
    pub source_volume_id: String,
    pub size_bytes: u64,
    /// When it was taken, in nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// The source's filesystem, if it was created for one.
    pub fs_type: Option<FsType>,
}

/// What CreateSnapshot asks of a backend, after validation.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    /// Nanoseconds since the Unix epoch, stored as the creation time.
    pub created_ns: u64,
}

/// A volume as a backend stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub capacity_bytes: u64,
    /// The filesystem chosen at creation (from the capabilities), if it was a mount volume.
    #[serde(default)]
    pub fs_type: Option<FsType>,
    #[serde(default)]
    pub parameters: Parameters,
    /// The resolved tier; `None` for a volume created before tiers were stored. Stored
    /// (loop metadata) as [`ResolvedTier::to_map`]'s flat map.
    #[serde(default, with = "stored_tier", skip_serializing_if = "Option::is_none")]
    pub tier: Option<ResolvedTier>,
    /// What the volume was made from, if it was a clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ContentSource>,
}

/// What CreateVolume asks of a backend, after validation and sizing.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub id: String,
    pub name: String,
    pub range: CapacityRange,
    pub size: u64,
    pub fs_type: Option<FsType>,
    pub parameters: Parameters,
    /// The resolved tier, stored with the volume (`None` only where a caller has none to
    /// give, e.g. a backend's own tests).
    pub tier: Option<ResolvedTier>,
    /// What the new volume is made from; `None` for an empty volume.
    pub source: Option<ContentSource>,
}

impl CreateSpec {
    /// The volume this request makes, of `capacity_bytes` (the size as the backend rounds it).
    pub fn volume(&self, capacity_bytes: u64) -> Volume {
        Volume {
            id: self.id.clone(),
            name: self.name.clone(),
            capacity_bytes,
            fs_type: self.fs_type,
            parameters: self.parameters.clone(),
            tier: self.tier.clone(),
            source: self.source.clone(),
        }
    }
}

/// A stored tier in its flat string form (the loop backend's metadata file).
mod stored_tier {
    use std::collections::BTreeMap;

    use iops_controller::ResolvedTier;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(clippy::ref_option)] // the signature serde's `with` asks for
    pub fn serialize<S: Serializer>(tier: &Option<ResolvedTier>, s: S) -> Result<S::Ok, S::Error> {
        tier.as_ref()
            .map(ResolvedTier::to_map)
            .unwrap_or_default()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ResolvedTier>, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        ResolvedTier::from_map(&map).map_err(serde::de::Error::custom)
    }
}

/// Capacity figures of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes still provisionable now (after the overprovision ratio).
    pub available: u64,
    /// Largest single volume that would be admitted now.
    pub max_volume_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_safe() {
        let a = volume_id_for("pvc-1");
        assert_eq!(a, volume_id_for("pvc-1"));
        assert_ne!(a, volume_id_for("pvc-2"));
        assert_eq!(a.len(), 36);
        assert!(crate::validate::volume_id("volume_id", &a).is_ok());
        assert!(
            crate::validate::volume_id("volume_id", &volume_id_for(&"x/..".repeat(32))).is_ok()
        );
    }

    #[test]
    fn sizing() {
        const M: u64 = 1 << 20;
        let r = |req, lim| CapacityRange::new(req, lim).unwrap();
        assert_eq!(r(0, 0).pick(M, 0).unwrap(), DEFAULT_SIZE);
        assert_eq!(r(1, 0).pick(M, 0).unwrap(), M);
        assert_eq!(r(M as i64 + 1, 0).pick(M, 0).unwrap(), 2 * M);
        assert_eq!(r(0, 5 * M as i64).pick(M, 0).unwrap(), 5 * M);
        // required 1.5 MiB, limit 1.9 MiB: no MiB multiple fits.
        assert!(r(3 * M as i64 / 2, 19 * M as i64 / 10).pick(M, 0).is_err());
        // limit below xfs minimum.
        assert!(r(0, 100 * M as i64).pick(M, 300 * M).is_err());
        assert_eq!(r(10, 0).pick(M, 300 * M).unwrap(), 300 * M);
        assert!(CapacityRange::new(10, 5).is_err());
        assert!(CapacityRange::new(-1, 0).is_err());
        assert!(r(2 * M as i64, 0).admits(2 * M));
        assert!(!r(2 * M as i64, 3 * M as i64).admits(4 * M));
    }

    #[test]
    fn parameters_name_the_unknown_key() {
        let mut m = BTreeMap::new();
        m.insert("csi.storage.k8s.io/pvc/name".to_owned(), "data".to_owned());
        assert_eq!(
            Parameters::parse(&m).unwrap().pvc_name.as_deref(),
            Some("data")
        );
        m.insert(DEVICE_CLASS_KEY.to_owned(), "fast".to_owned());
        let p = Parameters::parse(&m).unwrap();
        assert_eq!(p.device_class.as_deref(), Some("fast"));
        assert_eq!(p.to_map(), m);
        let e = Parameters::unknown_class("slow", &["fast"]).to_string();
        assert!(
            e.starts_with(r#"parameters["iolane.dev/device-class"]: device class "slow""#),
            "{e}"
        );
        m.insert("fsTypo".to_owned(), "ext4".to_owned());
        let err = Parameters::parse(&m).unwrap_err().to_string();
        assert!(err.contains("fsTypo"), "{err}");
    }

    #[test]
    fn storage_class_parameters_skip_the_reserved_keys() {
        // deploy/base's `iolane-batch`, as csi-provisioner's capacity controller sends it.
        let mut m = BTreeMap::new();
        m.insert("iolane.dev/tier".to_owned(), "batch".to_owned());
        m.insert("csi.storage.k8s.io/fstype".to_owned(), "ext4".to_owned());
        m.insert(
            "csi.storage.k8s.io/provisioner-secret-name".to_owned(),
            "s".to_owned(),
        );
        assert!(Parameters::parse(&m).is_err());
        let p = Parameters::parse_storage_class(&m).unwrap();
        assert_eq!(p.tier.tier.as_deref(), Some("batch"));
        assert_eq!(p.pvc_name, None);
        m.insert("iolane.dev/teir".to_owned(), "batch".to_owned());
        let err = Parameters::parse_storage_class(&m).unwrap_err().to_string();
        assert!(err.contains("iolane.dev/teir"), "{err}");
    }
}
