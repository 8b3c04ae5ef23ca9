//! Sets `cfg(mesh_postgres)` where the tests can start a real PostgreSQL (its binaries are
//! installed, or `MESH_PG_BIN` names them) and `cfg(mesh_browser)` where Debian's `chromium` and
//! `chromium-driver` are installed; both wherever `CI` is set (CI must run those tests, so a
//! missing part fails there). Elsewhere the tests that need them are marked ignored, and the
//! summary line counts them.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mesh_postgres)");
    println!("cargo::rustc-check-cfg=cfg(mesh_browser)");
    println!("cargo::rerun-if-changed=/usr/bin/chromedriver");
    let browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|path| Path::new(path).exists());
    if browser || std::env::var_os("CI").is_some() {
        println!("cargo::rustc-cfg=mesh_browser");
    }
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
