//! Shared harness for the iolane test suites.
//!
//! [`Driver`] starts the real `iolane` binary in a tempdir of its own (state dir, socket,
//! staging and mount parents), talks CSI to it over the Unix socket, and on drop removes
//! whatever a failing test left behind: mounts under the tempdir, loop devices backed by
//! files under it, and the process itself. Tests running in parallel never look at loop
//! devices or mounts outside their own tempdir.
//!
//! The host-level tests need root (loop devices, mkfs, mount); [`require_root!`] skips a
//! test with a printed reason otherwise, so `cargo test` as a normal user still passes.
//! Under `IOLANE_REQUIRE_VM_PREREQS=1` (set by the VM runners) every such skip
//! ([`skip`]) fails the test instead: there the prerequisites must be present.
//!
//! **Backends.** By default the driver runs on its loop backend. With
//! `IOLANE_TEST_BACKEND=lvm` and `IOLANE_TEST_LVM_DEVICES=/dev/A[,/dev/B]` (a VM: see
//! `tests/vm/`), [`Driver::start`] writes a node config with an LVM device class `default`
//! (VG [`DEFAULT_VG`]) over those devices instead. Tests look at backend state only through
//! [`Driver::backend_volumes`], [`Driver::backend_state`], [`Driver::attached_devices`] and
//! [`Driver::devices_left_after_unstage`], which read image files and loop devices under
//! the tempdir (loop) or the `iol-*` LVs of the test VGs, via `lvs --reportformat json`
//! (lvm). In lvm mode every test shares the VGs, so the tests must run one at a time
//! (`--test-threads 1`); each driver start removes `iol-*` LVs a previous test left, and
//! each drop removes what its test left, so every test starts from and leaves empty VGs.
//!
//! The harness by concern (all re-exported here, so tests `use iolane_tests::{...}`):
//! [`host`](mod@host) (root, programs, the binary under test, polling), [`driver`]
//! ([`Driver`]), [`central`] ([`Central`]), [`client`] (the channel, reply checks),
//! [`requests`] (request builders), [`backend`] (loop or lvm, [`LvmClass`]), [`lvm`] (the
//! harness's `lvs` view, [`lvm_sweep`]), [`mounts`] (mount table, loop devices, clean-up)
//! and [`data`] (patterns, checksums, direct IO).

pub use csi_proto::v1 as csi;

pub mod backend;
pub mod central;
pub mod client;
pub mod data;
pub mod driver;
pub mod host;
pub mod lvm;
pub mod mounts;
pub mod requests;

pub use backend::*;
pub use central::*;
pub use client::*;
pub use data::*;
pub use driver::*;
pub use host::*;
pub use lvm::*;
pub use mounts::*;
pub use requests::*;

/// Name the driver reports by default.
pub const DRIVER_NAME: &str = "csi.iolane.dev";
/// Node ID every test driver runs with.
pub const NODE_ID: &str = "test-node";
/// Topology key whose value is the node ID.
pub const TOPOLOGY_KEY: &str = "topology.iolane.dev/node";
/// One MiB, as the CSI wire type.
pub const MIB: i64 = 1 << 20;
/// One GiB, as the CSI wire type.
pub const GIB: i64 = 1 << 30;
