//! iolane's IO control plane: which tier a volume gets, and keeping that tier's caps in
//! each pod's cgroup v2 `io.max`. Knows nothing of gRPC, CSI or HTTP; the driver calls it.
//!
//! - [`tier`]: a tier is four caps (read/write IOPS, read/write bytes/s, each a number or
//!   `max`, optionally per GiB of volume size) and a priority class. Built in: `streaming`
//!   (uncapped) and `batch` (no fixed cap: the priority controllers share each device
//!   between the classes, [`priority`]); the node config's
//!   `[tiers.<name>]` tables add tiers or replace these, checked by
//!   [`TierSet::from_config`] with errors naming the field.
//! - [`resolve`](mod@resolve): a volume's tier from, weakest first, the built-in default (`batch`), the
//!   StorageClass parameters, the PVC annotation (only tiers the class allows) and the
//!   VolumeAttributesClass parameters; stored with the volume as a flat string map
//!   ([`ResolvedTier::to_map`]).
//! - [`keys`]: every parameter, annotation and tag key, and the built-in tier names.
//! - [`iomax`] and [`iostat`]: the cgroup v2 `io.max` and `io.stat` formats
//!   (`MAJ:MIN key=value ...`).
//! - [`cgroup`]: a pod's cgroup directory from its UID, under an injected cgroup root, in
//!   the systemd and cgroupfs layouts.
//! - [`apply`]: the [`CgroupFs`] trait (the real cgroupfs and a recording fake) and
//!   writing or reading one device's line.
//! - [`device`]: `MAJ:MIN` device numbers, split the way the kernel does.
//! - [`reconcile`]: the reconciler that keeps each publication's `io.max` line true
//!   (applies, repairs drift, waits for pod cgroups, forgets pods that are gone) and keeps
//!   each publication's `io.stat` counters.
//! - [`enforcement`]: the enforcement controller: the node's desired publications (one
//!   copy, in its reconciler), publish/unpublish, the periodic pass loop, and the typed
//!   snapshot `/status` shows.
//! - [`metrics`]: enforcement's Prometheus metrics, registered into the node's registry
//!   and fed from every pass.
//!
//! This crate never creates or removes a cgroup, and writes only the `io.max` line of the
//! device it is given.

pub mod apply;
pub mod cgroup;
pub mod device;
pub mod enforcement;
pub mod iomax;
pub mod iostat;
pub mod keys;
pub mod metrics;
pub mod priority;
pub mod reconcile;
pub mod resolve;
pub mod tier;

pub use apply::{ApplyError, CgroupFs, FakeCgroupFs, RealCgroupFs};
pub use cgroup::{CgroupError, PodUid, find_pod_cgroup};
pub use device::{DeviceNumber, DeviceNumberError};
pub use enforcement::{Counters, Enforcement, Epoch, PublicationSnapshot};
pub use iomax::{IoMax, IoMaxError};
pub use iostat::{IoStat, IoStatError, IoStats};
pub use metrics::{EnforcementMetrics, PriorityMetrics};
pub use reconcile::{
    Outcome, PassError, PassReport, Pending, Publication, PublicationState, Reconciler,
};
pub use resolve::{Checked, ClassTier, Layers, Overrides, ResolveError, ResolvedTier, resolve};
pub use tier::{Limit, Limits, Priority, Rate, Scaling, Tier, TierConfig, TierError, TierSet};
