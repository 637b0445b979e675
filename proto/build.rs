//! Generates the CSI message types and gRPC client/server stubs from
//! `csi.proto` with `tonic-prost-build`.
//!
//! `protoc` and the well-known-type includes (`descriptor.proto`,
//! `wrappers.proto`, `timestamp.proto`) come from `protoc-bin-vendored`, so no
//! system protobuf installation is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=csi.proto");
    println!("cargo:rerun-if-changed=build.rs");

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known_includes = protoc_bin_vendored::include_path()?;

    // Point prost-build at the vendored protoc explicitly instead of mutating
    // the process environment (`std::env::set_var` is `unsafe` in edition 2024
    // and the workspace denies `unsafe_code`). Equivalent to exporting PROTOC.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[PathBuf::from("csi.proto")],
            &[PathBuf::from("."), well_known_includes],
        )?;

    Ok(())
}
