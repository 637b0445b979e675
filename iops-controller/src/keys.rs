//! Every parameter, annotation, tag and context key iolane reads or writes, and the names
//! of the built-in tiers: one place, so the node, the controller and the tests all use the
//! same strings.

/// Prefix of iolane's own keys. A StorageClass key under it that iolane does not know is
/// refused by name.
pub const PREFIX: &str = "iolane.dev/";

/// The tier: a StorageClass parameter, a PVC annotation, a VolumeAttributesClass mutable
/// parameter, and (resolved) an LV tag and `volume_context` entry.
pub const TIER: &str = "iolane.dev/tier";
/// Explicit read IOPS cap (positive integer or `max`) on top of the tier.
pub const READ_IOPS: &str = "iolane.dev/read-iops";
/// Explicit write IOPS cap (positive integer or `max`) on top of the tier.
pub const WRITE_IOPS: &str = "iolane.dev/write-iops";
/// Explicit read bytes/s cap (positive integer or `max`) on top of the tier.
pub const READ_BPS: &str = "iolane.dev/read-bps";
/// Explicit write bytes/s cap (positive integer or `max`) on top of the tier.
pub const WRITE_BPS: &str = "iolane.dev/write-bps";
/// StorageClass parameter: comma-separated tiers a PVC annotation may pick.
pub const ALLOWED_TIERS: &str = "iolane.dev/allowed-tiers";
/// Resolved priority class (`streaming` or `batch`), written with the resolved tier.
/// Never accepted as an input parameter: the priority comes from the tier.
pub const PRIORITY: &str = "iolane.dev/priority";

/// StorageClass parameter selecting an LVM device class (read by csi-driver, not by tier
/// resolution, which only has to know it is not a stray key).
pub const DEVICE_CLASS: &str = "iolane.dev/device-class";
/// `volume_context` entry naming the storage backend that holds the volume.
pub const BACKEND: &str = "iolane.dev/backend";

/// The four override keys, in `io.max` order (rbps, wbps, riops, wiops).
pub const OVERRIDES: [&str; 4] = [READ_BPS, WRITE_BPS, READ_IOPS, WRITE_IOPS];

/// Every `iolane.dev/` key a StorageClass may carry.
pub const STORAGE_CLASS_KEYS: [&str; 7] = [
    TIER,
    READ_IOPS,
    WRITE_IOPS,
    READ_BPS,
    WRITE_BPS,
    ALLOWED_TIERS,
    DEVICE_CLASS,
];

/// Every key a VolumeAttributesClass's `parameters` (CSI `mutable_parameters`) may carry.
pub const MUTABLE_KEYS: [&str; 5] = [TIER, READ_IOPS, WRITE_IOPS, READ_BPS, WRITE_BPS];

/// `volume_context` key kubelet fills with the pod's UID (CSIDriver `podInfoOnMount`).
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// CreateVolume parameter csi-provisioner's `--extra-create-metadata` fills with the PVC name.
pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
/// CreateVolume parameter csi-provisioner's `--extra-create-metadata` fills with the PVC
/// namespace.
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";

/// CreateVolume parameter csi-provisioner's `--extra-create-metadata` fills with the PV name.
pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// The built-in uncapped tier.
pub const STREAMING: &str = "streaming";
/// The built-in capped tier.
pub const BATCH: &str = "batch";
/// The tier of a volume whose StorageClass, PVC and VolumeAttributesClass name none.
///
/// `batch`, the capped one: iolane exists to keep streaming volumes ahead, so a volume
/// nobody classified must not be able to take the device from them. Being uncapped is
/// something a StorageClass asks for.
pub const DEFAULT_TIER: &str = BATCH;

/// PV annotation: the `mutable_parameters` of the latest ControllerModifyVolume, as a JSON
/// object with sorted keys, written by `iolane controller` (the desired state).
pub const DESIRED_PARAMETERS: &str = "iolane.dev/desired-parameters";
/// PV annotation: the generation of [`DESIRED_PARAMETERS`], a positive integer that grows
/// by one with each different request.
pub const DESIRED_GENERATION: &str = "iolane.dev/desired-generation";
/// PV annotation: who asked for [`DESIRED_PARAMETERS`] (the VolumeAttributesClass the
/// claim names), for the Event the owning node writes.
pub const DESIRED_BY: &str = "iolane.dev/desired-by";
/// PV annotation: the last [`DESIRED_GENERATION`] the owning node applied (its
/// acknowledgement), written by that node only.
pub const APPLIED_GENERATION: &str = "iolane.dev/applied-generation";
/// PV annotation: `<generation>: <reason>` when the owning node refused that generation
/// (a tier its config does not define), written by that node only.
pub const REFUSED_GENERATION: &str = "iolane.dev/refused-generation";
