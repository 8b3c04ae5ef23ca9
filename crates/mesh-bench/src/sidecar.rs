//! Configuration 8: the sidecar mesh we measure ourselves against. Plain tonic (configuration
//! 1's server) behind a pair of HAProxy proxies, the shape of a sidecar mesh's data path:
//!
//! ```text
//! load generator ─h2c─▶ client-side proxy ─mTLS 1.3, h2─▶ server-side proxy ─h2c─▶ plain tonic
//! ```
//!
//! Each proxy is its own `haproxy` process with one thread (a sidecar gets a slice of a core),
//! TLS 1.3 only, client certificates required and verified against the mesh CA, the same
//! workload certificates the mesh configurations use. The proxies do no authorization, tracing
//! or audit: the comparison flatters the sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

use crate::loopback::{free_port, wait_listening};
use crate::material::Material;

/// The two proxies; both killed when dropped.
#[derive(Debug)]
pub struct Sidecars {
    client_side: Child,
    server_side: Child,
    /// Where the load generator connects (h2c).
    pub front: SocketAddr,
}

impl Sidecars {
    /// Starts the pair in front of the plain server at `app`, and waits until the front answers
    /// TCP connections.
    pub async fn start(material: &Material, app: SocketAddr) -> anyhow::Result<Self> {
        let haproxy = which("haproxy").context(
            "configuration 8 needs HAProxy: apt-get install haproxy (scripts/bench.sh does)",
        )?;
        let dir = material.dir();
        let server_files = material.server_files();
        let client_files = material.client_files();
        // HAProxy takes a certificate and its key in one PEM file.
        let server_pem = bundle(dir, "sidecar-server.pem", &server_files)?;
        let client_pem = bundle(dir, "sidecar-client.pem", &client_files)?;
        let (front, middle) = (free_port()?, free_port()?);
        let ca = server_files.ca.display().to_string();
        // mTLS 1.3 between the proxies, each side presenting its workload certificate and
        // requiring the other's, verified against the mesh CA.
        let mtls = |pem: &Path| {
            format!(
                "ssl crt {} ca-file {ca} verify required alpn h2 ssl-min-ver TLSv1.3",
                pem.display()
            )
        };
        let server_side = spawn(
            &haproxy,
            &dir.join("sidecar-server.cfg"),
            &format!("127.0.0.1:{middle} {}", mtls(&server_pem)),
            &format!("{app} proto h2"),
        )?;
        let client_side = spawn(
            &haproxy,
            &dir.join("sidecar-client.cfg"),
            &format!("127.0.0.1:{front} proto h2"),
            &format!("127.0.0.1:{middle} {}", mtls(&client_pem)),
        )?;
        let sidecars = Self {
            client_side,
            server_side,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
        };
        for port in [middle, front] {
            wait_listening(port).await?;
        }
        Ok(sidecars)
    }

    /// The proxies' process ids.
    pub fn pids(&self) -> [u32; 2] {
        [self.client_side.id(), self.server_side.id()]
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for child in [&mut self.client_side, &mut self.server_side] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What both proxies share: one thread, HTTP mode, HTTP/2 end to end, no logs.
const GLOBAL: &str = "global\n\
                      \tnbthread 1\n\
                      \tmaxconn 4096\n\
                      defaults\n\
                      \tmode http\n\
                      \ttimeout connect 5s\n\
                      \ttimeout client 60s\n\
                      \ttimeout server 60s\n";

fn bundle(dir: &Path, name: &str, files: &mesh_tls::TlsFiles) -> anyhow::Result<PathBuf> {
    let mut pem = std::fs::read_to_string(&files.cert)?;
    pem.push_str(&std::fs::read_to_string(&files.key)?);
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    Ok(path)
}

/// Starts one proxy: what it binds (address and options) and the one server it forwards to.
fn spawn(haproxy: &Path, config: &Path, bind: &str, server: &str) -> anyhow::Result<Child> {
    std::fs::write(
        config,
        format!(
            "{GLOBAL}frontend in\n\tbind {bind}\n\tdefault_backend out\n\
             backend out\n\tserver next {server}\n"
        ),
    )?;
    // `-c` first: a configuration HAProxy refuses is an error with its own words, not a port
    // that never opens.
    let check = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .output()?;
    anyhow::ensure!(
        check.status.success(),
        "haproxy refused {}: {}",
        config.display(),
        String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr)
    );
    Ok(Command::new(haproxy)
        .arg("-db") // foreground
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow::anyhow!("{program} not found"))
}
