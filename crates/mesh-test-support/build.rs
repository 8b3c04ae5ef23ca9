//! Sets `cfg(mesh_postgres)` where the tests can start a real PostgreSQL (its binaries are
//! installed, or `MESH_PG_BIN` names them) and where `CI` is set (CI must run them, so a missing
//! server fails there). Elsewhere the PostgreSQL tests are marked ignored, and the summary line
//! counts them.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mesh_postgres)");
    println!("cargo::rerun-if-env-changed=MESH_PG_BIN");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-changed=/usr/lib/postgresql");
    let named =
        std::env::var_os("MESH_PG_BIN").is_some_and(|dir| Path::new(&dir).join("initdb").exists());
    let installed = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|version| version.path().join("bin/initdb").exists())
    });
    if named || installed || std::env::var_os("CI").is_some() {
        println!("cargo::rustc-cfg=mesh_postgres");
    }
}
