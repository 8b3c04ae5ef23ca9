//! Compiles `proto/` with protox (no `protoc` needed) and generates tonic stubs from the descriptors.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "mesh/auth/v1/auth.proto",
        "mesh/identity/v1/identity.proto",
        "mesh/inventory/v1/inventory.proto",
        "mesh/orders/v1/orders.proto",
    ];
    let fds = protox::compile(files, [&root])?;

    // The same descriptors are embedded for gRPC reflection.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("mesh_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
