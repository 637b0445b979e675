//! iolane's CSI driver: gRPC adapters, the volume domain, storage backends and OS effects,
//! plus what the `iolane` binary serves and runs besides CSI: the HTTP endpoint ([`http`]),
//! `iolane status` ([`status`]), `iolane bench` ([`bench`]), `iolane demo` ([`demo`]) and
//! the node cleanup of `iolane controller` ([`node_cleanup`]) and live re-tiering
//! ([`retier`]).
//!
//! See `ARCHITECTURE.md` at the repository root for the map.

pub mod backend;
pub mod bench;
pub mod config;
pub mod demo;
pub mod driver;
pub mod enforce;
pub mod error;
pub mod grpc;
pub mod http;
pub mod inflight;
pub mod k8s;
pub mod node_cleanup;
pub mod os;
pub mod priority;
pub mod retier;
pub mod server;
pub mod status;
pub mod tiering;
pub mod validate;
pub mod volume;
