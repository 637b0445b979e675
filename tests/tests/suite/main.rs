//! The iolane integration suite: one test binary (`suite`), linked once, with a module per
//! area. Test names are module paths, so a module is also a filter:
//! `cargo test -p iolane-tests --test suite -- conformance::` runs the conformance tests.
//!
//! - [`conformance`]: every CSI RPC against the spec, on the loop backend (host) or the lvm
//!   backend (VM, `tests/vm/lvm-suite.sh`);
//! - [`lvm`]: lvm backend scenarios that need a real kernel with dm-thin (VM only);
//! - [`tiers`]: IO tiers end to end, `io.max` in pod cgroups (host and VM: `tests/vm/tiers.sh`);
//! - [`observability`]: the PVC annotation path, `/metrics`, `/status` and `/healthz`;
//! - [`central`]: the central `iolane controller` (expansion only);
//! - [`campaign`]: kill -9 and cancellation campaigns with 8 clients (host: loop; VM: lvm, opt-in);
//! - [`runtime`]: the runtime benchmark, 500 publications and 8 creators (host, loop).
//!
//! The harness they share is the `iolane_tests` library (`tests/src/`).

mod campaign;
mod central;
mod conformance;
mod lvm;
mod observability;
mod runtime;
mod tiers;
