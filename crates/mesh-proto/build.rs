//! Compiles `proto/` with protox (no `protoc` needed), generates tonic stubs from the
//! descriptors, and from the same descriptors one typed constant per method (`rpc.rs` of each
//! package: its path, service, idempotency and streaming).

use std::fmt::Write as _;
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
    write_methods(&fds, &out_dir)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

/// `<package>.rpc.rs` for every package: a module per service, a constant per method, and the
/// service's `ALL`; and `rpc_index.rs`, every service's methods for lookups by path.
fn write_methods(
    fds: &prost_types::FileDescriptorSet,
    out_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut index = String::from("/// Every method of every mesh service, by service.\n");
    index.push_str("pub const SERVICES: &[&[Rpc]] = &[\n");
    for file in &fds.file {
        let package = file.package();
        // `mesh.inventory.v1` lives at `crate::inventory::v1`.
        let module = package
            .strip_prefix("mesh.")
            .unwrap_or(package)
            .replace('.', "::");
        let mut code = String::new();
        for service in &file.service {
            let full = format!("{package}.{}", service.name());
            let service_module = snake(service.name());
            writeln!(code, "/// The methods of `{full}`.")?;
            writeln!(code, "pub mod {service_module} {{")?;
            writeln!(code, "    use crate::rpc::{{Idempotency, Rpc}};")?;
            let mut names = Vec::new();
            for method in &service.method {
                let level = method
                    .options
                    .as_ref()
                    .and_then(|o| o.idempotency_level)
                    .unwrap_or(0);
                let idempotency = match level {
                    1 => "NoSideEffects",
                    2 => "Idempotent",
                    _ => "Unknown",
                };
                let constant = snake(method.name()).to_uppercase();
                writeln!(code, "    /// `/{full}/{}`.", method.name())?;
                writeln!(code, "    pub const {constant}: Rpc = Rpc {{")?;
                writeln!(code, "        path: \"/{full}/{}\",", method.name())?;
                writeln!(code, "        service: \"{full}\",")?;
                writeln!(code, "        method: \"{}\",", method.name())?;
                writeln!(code, "        idempotency: Idempotency::{idempotency},")?;
                writeln!(
                    code,
                    "        client_streaming: {},",
                    method.client_streaming()
                )?;
                writeln!(
                    code,
                    "        server_streaming: {},",
                    method.server_streaming()
                )?;
                writeln!(code, "    }};")?;
                names.push(constant);
            }
            writeln!(code, "    /// Every method of the service.")?;
            writeln!(code, "    pub const ALL: &[Rpc] = &[{}];", names.join(", "))?;
            writeln!(code, "}}")?;
            writeln!(index, "    crate::{module}::rpc::{service_module}::ALL,")?;
        }
        std::fs::write(out_dir.join(format!("{package}.rpc.rs")), code)?;
    }
    index.push_str("];\n");
    std::fs::write(out_dir.join("rpc_index.rs"), index)?;
    Ok(())
}

/// `InventoryService` → `inventory_service`, `ListItems` → `list_items`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
