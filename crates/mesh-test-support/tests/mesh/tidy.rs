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

/// The shell files CI runs: `.ci/run`, `scripts/*.sh`, `docker/mesh-init`.
fn shell_files() -> Vec<PathBuf> {
    let root = crates_dir().join("..");
    let mut files = vec![root.join(".ci/run"), root.join("docker/mesh-init")];
    for entry in std::fs::read_dir(root.join("scripts"))
        .expect("scripts")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "sh") {
            files.push(entry.path());
        }
    }
    files
}

/// The reader after a `|` when it stops reading before its input ends (`grep -q`, `head`,
/// `sed …q`, `awk … exit`), which kills the writer with SIGPIPE.
fn early_exiting_reader(segment: &str) -> bool {
    let words: Vec<&str> = segment.split_whitespace().collect();
    match words.first().copied() {
        Some("grep") => words
            .iter()
            .skip(1)
            .take_while(|w| w.starts_with('-'))
            .any(|w| {
                !w.starts_with("--") && w.contains('q') || *w == "--quiet" || *w == "--silent"
            }),
        Some("head") => true,
        Some("sed") => words
            .iter()
            .any(|w| w.trim_matches(['\'', '"']).ends_with('q')),
        Some("awk") => segment.contains("exit"),
        _ => false,
    }
}

#[test]
fn no_script_pipes_into_a_reader_that_exits_early() {
    // Under `set -o pipefail`, `producer | grep -q x` fails with status 141 whenever the
    // producer writes more than the pipe buffer after the match: a check that passes on small
    // output and flakes on large output. Capture first, or let the reader read everything.
    let mut offenders = Vec::new();
    for file in shell_files() {
        let text = std::fs::read_to_string(&file).expect("read script");
        for (number, line) in text.lines().enumerate() {
            let code = line.split(" #").next().unwrap_or(line);
            if code.trim_start().starts_with('#') {
                continue;
            }
            let pipes = code.replace("||", "\u{0}");
            for segment in pipes.split('|').skip(1) {
                let segment = segment.split('\u{0}').next().unwrap_or(segment);
                if early_exiting_reader(segment) {
                    offenders.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "early-exiting readers after a pipe:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_pipe_rule_catches_what_it_is_meant_to() {
    for bad in [
        " grep -q x",
        " grep -Eq x",
        " head -3",
        " sed 5q",
        " awk '/x/ { exit }'",
    ] {
        assert!(early_exiting_reader(bad), "{bad}");
    }
    for good in [
        " grep -E x",
        " grep -c x",
        " tail -3",
        " sed -n 1,3p",
        " awk '{ print }'",
    ] {
        assert!(!early_exiting_reader(good), "{good}");
    }
}

/// `name version → feature sets` as `cargo tree` prints them (one set per build kind).
fn feature_sets(args: &[&str]) -> std::collections::BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "--prefix",
            "none",
            "-f",
            "{p} {f}",
        ])
        .args(args)
        .current_dir(crates_dir().join(".."))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut sets = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.trim_end_matches(" (*)");
        let mut words = line.split(' ');
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        let features = line
            .rsplit(' ')
            .next()
            .filter(|f| !f.starts_with('('))
            .unwrap_or("");
        let entry = sets.entry(format!("{name} {version}")).or_default();
        if !entry.iter().any(|f| f == features) {
            entry.push(features.to_owned());
            entry.sort();
        }
    }
    sets
}

#[test]
fn demo_and_test_builds_share_one_feature_set() {
    // The README's first command builds `-p meshctl`, the second `--workspace` with every
    // dev-dependency. A crate both need, built with other features, is compiled twice (and so
    // is everything above it). crates/workspace-hack pins the difference away; this says what
    // to add there when a new dependency brings features back apart.
    let demo = feature_sets(&["-p", "meshctl", "-e", "normal,build"]);
    let tests = feature_sets(&["--workspace"]);
    let drift: Vec<String> = demo
        .iter()
        .filter(|(package, features)| tests.get(*package) != Some(features))
        .map(|(package, features)| {
            format!(
                "{package}: demo {features:?}, tests {:?}",
                tests.get(package)
            )
        })
        .collect();
    assert!(
        drift.is_empty(),
        "add these to crates/workspace-hack:\n{}",
        drift.join("\n")
    );
}

/// The names of `crate`'s dependencies of every kind, from its manifest.
fn dependencies_of(manifest: &toml::Table) -> Vec<String> {
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|table| manifest.get(*table).and_then(|t| t.as_table()))
        .flat_map(|deps| deps.keys().cloned())
        .collect()
}

#[test]
fn the_cli_is_a_leaf_and_telemetry_knows_no_auth() {
    // Nothing but the CLI binary depends on meshctl: tests, benches and the dev harness build
    // on mesh-dev. mesh-telemetry sits below the auth crates, so anything may trace.
    for (name, manifest) in manifests() {
        let deps = dependencies_of(&manifest);
        assert!(
            !deps.iter().any(|d| d == "meshctl"),
            "{name} depends on meshctl"
        );
        if name == "mesh-telemetry" {
            for auth in [
                "auth-interceptor",
                "auth-service",
                "mesh-service",
                "mesh-tls",
            ] {
                assert!(
                    !deps.iter().any(|d| d == auth),
                    "mesh-telemetry depends on {auth}"
                );
            }
        }
    }
}

#[test]
fn the_kubernetes_dev_overlay_ships_the_example_registry_unchanged() {
    // kustomize reads files only below the overlay, so the overlay holds a copy.
    let root = crates_dir().join("..");
    let example = std::fs::read_to_string(root.join("config/auth.example.toml")).expect("example");
    let copy =
        std::fs::read_to_string(root.join("deploy/k8s/overlays/dev/auth.toml")).expect("copy");
    assert!(
        example == copy,
        "deploy/k8s/overlays/dev/auth.toml differs from config/auth.example.toml: copy it again"
    );
}

#[test]
fn the_kubernetes_base_ships_the_policy_files_unchanged() {
    // kustomize reads files only below the kustomization, so the base holds copies.
    let root = crates_dir().join("..");
    for service in ["auth", "orders", "inventory"] {
        let shipped = std::fs::read_to_string(root.join(format!("config/policy/{service}.toml")))
            .expect("shipped");
        let copy =
            std::fs::read_to_string(root.join(format!("deploy/k8s/base/policy/{service}.toml")))
                .expect("copy");
        assert!(
            shipped == copy,
            "deploy/k8s/base/policy/{service}.toml differs from config/policy/{service}.toml: copy it again"
        );
    }
}

/// Every method of every service a server serves has exactly one policy row, and every row
/// names a real method: the shipped files in config/policy/ are checked against the generated
/// constants when they are parsed (a second row, a row for a method that does not exist and a
/// missing row are refused), and here once more. A new RPC is the proto line, its handler and
/// one rule in its server's file; forgetting the rule fails here, and at the server's start.
#[test]
fn every_served_method_has_one_policy_row_and_every_row_a_real_method() {
    use mesh_proto::rpc::{self, Rpc};
    let domain = mesh_test_support::TRUST_DOMAIN;
    let servers: [(&str, auth_interceptor::Policy, Vec<&[Rpc]>); 3] = [
        (
            "orders",
            orders_service::policy(domain).expect("the shipped orders policy"),
            vec![mesh_proto::orders::v1::rpc::orders_service::ALL],
        ),
        (
            "inventory",
            inventory_service::policy(domain).expect("the shipped inventory policy"),
            vec![mesh_proto::inventory::v1::rpc::inventory_service::ALL],
        ),
        (
            "auth",
            auth_service::mesh_policy(domain).expect("the shipped auth policy"),
            vec![
                mesh_proto::auth::v1::rpc::auth_service::ALL,
                mesh_proto::identity::v1::rpc::identity::ALL,
                mesh_proto::identity::v1::rpc::identity_admin::ALL,
            ],
        ),
    ];
    for (server, policy, services) in servers {
        let mut expected: Vec<Rpc> = services
            .into_iter()
            .chain([rpc::health::ALL, rpc::reflection::ALL])
            .flatten()
            .copied()
            .collect();
        expected.sort_unstable_by_key(|rpc| rpc.path);
        let paths = |rpcs: &[Rpc]| rpcs.iter().map(|rpc| rpc.path).collect::<Vec<_>>();
        assert_eq!(
            paths(&policy.methods()),
            paths(&expected),
            "{server}: rows and methods differ"
        );
        for row in policy.methods() {
            assert_eq!(rpc::by_path(row.path), Some(&row), "{server}: {}", row.path);
        }
    }
}

/// The generic crates name no mesh method: what a method is (its path, whether it may be
/// retried) comes from the generated constants, never from a string in the runtime.
#[test]
fn the_generic_crates_write_no_mesh_method_path() {
    for krate in ["mesh-service", "auth-interceptor", "mesh-telemetry"] {
        let mut files = Vec::new();
        rust_files(&crates_dir().join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "{krate}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            assert!(
                !text.contains("\"/mesh."),
                "{} writes a mesh method path",
                file.display()
            );
        }
    }
}

/// One reader of the `grpc-status` header (`mesh_telemetry::trace::status_in_headers`), and
/// random numbers from `rand`, not from hashers or clocks.
#[test]
fn grpc_status_is_read_in_one_place_and_randomness_comes_from_rand() {
    let mut files = Vec::new();
    rust_files(&crates_dir(), &mut files);
    for file in files {
        if !file.components().any(|c| c.as_os_str() == "src") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        let name = file.display().to_string();
        if !name.ends_with("mesh-telemetry/src/trace.rs") {
            assert!(
                !text.contains(".get(\"grpc-status\")"),
                "{name} reads grpc-status by hand"
            );
        }
        assert!(
            !text.contains("build_hasher()") && !text.contains("subsec_nanos()"),
            "{name} makes its own random numbers"
        );
    }
}

/// The modules of one crate's `src`: file stem (or directory name) → the sibling modules its
/// code names through `crate::`.
fn module_graph(
    src: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(src).expect("src").flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if name != "lib" && name != "main" {
            names.insert(name);
        }
    }
    for name in &names {
        let mut files = Vec::new();
        let dir = src.join(name);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{name}.rs"));
        if file.exists() {
            files.push(file);
        }
        let mut uses = std::collections::BTreeSet::new();
        for file in files {
            // Code only: a doc link is a pointer for the reader, not a dependency.
            let text: String = std::fs::read_to_string(&file)
                .expect("read")
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (index, _) in text.match_indices("crate::") {
                let rest = &text[index + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if names.contains(&used) && used != *name {
                    uses.insert(used);
                }
            }
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// No crate's modules name each other in a circle: each file can be read after the ones it uses.
#[test]
fn no_crate_has_a_cycle_between_its_files() {
    for (name, _) in manifests() {
        let src = crates_dir().join(&name).join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        // Depth-first search for a back edge.
        fn visit<'a>(
            node: &'a str,
            graph: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut std::collections::BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|n| *n == node) {
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|n| (*n).to_owned()).collect();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node);
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(node);
            None
        }
        let mut done = std::collections::BTreeSet::new();
        for node in graph.keys() {
            let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
            assert!(cycle.is_none(), "{name}: files in a cycle: {cycle:?}");
        }
    }
}

#[test]
fn every_migration_file_is_embedded_and_each_backend_has_the_same_files() {
    let services = [
        ("auth-service", auth_service::MIGRATIONS),
        ("inventory-service", inventory_service::store::MIGRATIONS),
        ("orders-service", orders_service::store::MIGRATIONS),
    ];
    for (krate, migrations) in services {
        for (backend, embedded) in [
            ("sqlite", migrations.sqlite),
            ("postgres", migrations.postgres),
        ] {
            let dir = crates_dir().join(krate).join("migrations").join(backend);
            let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
                .expect("migrations dir")
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            on_disk.sort();
            let listed: Vec<String> = embedded.iter().map(|file| file.name.to_owned()).collect();
            assert_eq!(listed, on_disk, "{krate}'s embedded {backend} migrations");
        }
    }
}
