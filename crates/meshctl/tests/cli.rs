//! meshctl as a user runs it: the real binary, real files, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env_remove("MESH_CERTS_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run meshctl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn certs_init_writes_a_ca_and_workload_certificates_with_spiffe_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("certs");
    let output = meshctl(&[
        "certs",
        "init",
        "--out",
        out.to_str().expect("utf8"),
        "--name",
        "billing",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    for name in ["auth", "orders", "inventory", "meshctl", "billing"] {
        let cert = mesh_tls::material::load_certs(&out.join(format!("{name}.pem"))).expect("cert");
        let id = mesh_tls::identity::spiffe_id_of(&cert[0]).expect("spiffe id");
        assert_eq!(id.as_str(), format!("spiffe://mesh.local/sa/{name}"));
        let mode = std::fs::metadata(out.join(format!("{name}.key")))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key must be 0600");
        mesh_tls::material::load_key(&out.join(format!("{name}.key"))).expect("key parses");
    }
    assert!(out.join("ca.pem").exists());
}

#[test]
fn certs_init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().to_str().expect("utf8");
    assert!(meshctl(&["certs", "init", "--out", out]).status.success());
    let before = std::fs::read(dir.path().join("ca.pem")).expect("ca");

    let again = meshctl(&["certs", "init", "--out", out]);
    assert_eq!(again.status.code(), Some(64));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before,
        "nothing lost"
    );

    let forced = meshctl(&["certs", "init", "--out", out, "--force"]);
    assert!(forced.status.success());
    assert_ne!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before
    );
}

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    let missing = meshctl(&["certs", "init"]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(stderr(&missing).contains("--out"), "{}", stderr(&missing));

    let dir = tempfile::tempdir().expect("dir");
    let bad_name = meshctl(&[
        "certs",
        "init",
        "--out",
        dir.path().to_str().expect("utf8"),
        "--name",
        "Bad Name",
    ]);
    assert_eq!(bad_name.status.code(), Some(64));
    assert!(
        stderr(&bad_name).contains("--name"),
        "{}",
        stderr(&bad_name)
    );

    let unknown = meshctl(&["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(64));

    let help = meshctl(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn the_demo_runs_every_step_as_expected_and_exits_0() {
    let output = meshctl(&["demo"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    assert!(stdout.contains("5/5 steps behaved as expected"), "{stdout}");
    assert!(!stdout.contains("FAIL"));
}
