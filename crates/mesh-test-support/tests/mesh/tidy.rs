//! Repository rules that a reader relies on, checked rather than hoped for.

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let mut files = Vec::new();
    rust_files(&crates_dir(), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            !text.lines().next().is_some_and(|l| l.starts_with("//!"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

fn manifests() -> Vec<(String, toml::Table)> {
    std::fs::read_dir(crates_dir())
        .expect("crates")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| {
            let text = std::fs::read_to_string(e.path().join("Cargo.toml")).expect("read");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, text.parse::<toml::Table>().expect("toml"))
        })
        .collect()
}

#[test]
fn only_mesh_tls_depends_on_rustls() {
    for (name, manifest) in manifests() {
        for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let deps = manifest.get(table).and_then(|t| t.as_table());
            for dep in ["rustls", "tokio-rustls"] {
                let uses = deps.is_some_and(|d| d.contains_key(dep));
                assert!(
                    !uses || name == "mesh-tls",
                    "{name} depends on {dep} in [{table}]"
                );
            }
        }
    }
}

#[test]
fn every_crate_inherits_the_workspace_lints_and_is_named_after_its_folder() {
    for (folder, manifest) in manifests() {
        let lints = manifest.get("lints").and_then(|l| l.get("workspace"));
        assert_eq!(
            lints.and_then(|w| w.as_bool()),
            Some(true),
            "{folder}: [lints] workspace = true"
        );
        let name = manifest["package"]["name"].as_str().expect("name");
        assert_eq!(name, folder);
    }
}

#[test]
fn every_library_forbids_unsafe_code() {
    for (folder, _) in manifests() {
        let lib = crates_dir().join(&folder).join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).expect("lib.rs");
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{folder}/src/lib.rs"
        );
    }
}
