//! A real PostgreSQL server for a test: Debian's `postgresql` binaries (`initdb`, `pg_ctl`),
//! a cluster in a temporary directory, listening on a free loopback port, stopped when the
//! value is dropped.
//!
//! Where the binaries are missing, [`PgServer::start`] is an error. The tests that need a server
//! are marked ignored in builds that found no binaries (`build.rs` sets `mesh_postgres` where
//! they are, or where `CI` is set), so a machine without PostgreSQL reports them as ignored in
//! the summary line, and CI can never pass by skipping. `MESH_PG_BIN` names the directory of the
//! binaries when they are
//! not under `/usr/lib/postgresql/<version>/bin`. PostgreSQL refuses to run as root: as root,
//! the cluster is made and run as the `postgres` user (through `runuser`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tempfile::TempDir;

/// A PostgreSQL server that lives as long as the value.
#[derive(Debug)]
pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    /// Serving TLS, and refusing TCP connections without it.
    tls: bool,
}

impl PgServer {
    /// Starts a fresh server with `databases` created in it.
    pub async fn start(databases: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(databases, None).await
    }

    /// Like [`PgServer::start`], serving TLS (1.3 only) with the certificate chain and key in
    /// these files, and refusing every connection over TCP that does not use it (`hostssl`).
    pub async fn start_with_tls(
        databases: &[&str],
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_inner(databases, Some((cert, key))).await
    }

    async fn start_inner(databases: &[&str], tls: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let Some(bin) = binaries() else {
            bail!(
                "PostgreSQL binaries not found (apt-get install postgresql, or MESH_PG_BIN); \
                 builds without them mark the tests that need them ignored"
            );
        };
        let run_as = running_as_root().then_some("postgres");
        let dir = tempfile::Builder::new().prefix("mesh-pg-").tempdir()?;
        if let Some(user) = run_as {
            let owned = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(dir.path())
                .status()?;
            if !owned.success() {
                bail!("chown {user} {}: {owned}", dir.path().display());
            }
        }
        let mut server = Self {
            dir,
            bin,
            port: 0,
            run_as,
            tls: tls.is_some(),
        };
        server.initdb()?;
        if let Some((cert, key)) = tls {
            server.serve_tls(cert, key)?;
        }
        // A port found free can be taken before the server binds it: try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(error) => last = Some(error),
            }
        }
        if let Some(error) = last {
            return Err(error);
        }
        let admin = sqlx::PgPool::connect(&server.url("postgres"))
            .await
            .context("connecting to the test PostgreSQL")?;
        for name in databases {
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&admin)
                .await
                .with_context(|| format!("CREATE DATABASE {name}"))?;
        }
        admin.close().await;
        Ok(server)
    }

    /// The server's URL without a database (`postgres://postgres@127.0.0.1:<port>`), as
    /// [`mesh_dev::devmesh::DevDatabase::Postgres`] takes it.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.server_url())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The certificate and key in the data directory (the key owned by the server's user,
    /// 0600, as PostgreSQL requires), and client authentication over TCP only with TLS.
    fn serve_tls(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let data = self.data();
        std::fs::copy(cert, data.join("server.crt"))?;
        std::fs::copy(key, data.join("server.key"))?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        if let Some(user) = self.run_as {
            for file in ["server.crt", "server.key", "pg_hba.conf"] {
                let owned = Command::new("chown")
                    .arg(format!("{user}:{user}"))
                    .arg(data.join(file))
                    .status()?;
                if !owned.success() {
                    bail!("chown {user} {file}: {owned}");
                }
            }
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        // Durability is not under test: fsync off makes a cluster start and commit fast.
        let mut options = format!(
            "-h 127.0.0.1 -p {} -k {} -F -c max_connections=300 -c shared_buffers=32MB",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            options.push_str(" -c ssl=on -c ssl_min_protocol_version=TLSv1.3");
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o", &options, "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The directory holding `initdb` and `pg_ctl`: `MESH_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MESH_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    Path::new("/proc/self")
        .metadata()
        .is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
