//! A private PostgreSQL cluster for tests (the store suite, the e2e tests): `initdb` into a
//! fresh temporary folder, then `postgres` on a free 127.0.0.1 port, run as `nobody` when the
//! tests run as root (PostgreSQL refuses root), with SCRAM password authentication (so the
//! tests can check that no message shows the password). Every wait is bounded; the cluster is
//! killed and its folder removed on drop. [`PgCluster::start_tls`] starts one with `ssl = on`
//! and a certificate the test made (optionally TLS-only, `hostssl`). Needs the Debian `postgresql` package
//! (`/usr/lib/postgresql/*/bin`), which `make test` installs. Not used by `ten` itself.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The superuser the tests connect as, and its password.
pub const USER: &str = "ten";
pub const PASSWORD: &str = "pg-s3cret-pw";

/// The uid/gid the cluster runs as when the tests run as root (`nobody`).
const NOBODY: u32 = 65534;

pub struct PgCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/N/bin` with `initdb`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (apt-get install postgresql)"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)".into())
}

fn as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl PgCluster {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Result<PgCluster, String> {
        let mut cluster = PgCluster::init()?;
        cluster.resume()?;
        Ok(cluster)
    }

    /// A new cluster with `ssl = on` and this certificate and key (PEM), started. `ssl_only`:
    /// pg_hba takes TCP sessions over TLS only (`hostssl`), so a plain one is refused.
    pub fn start_tls(cert_pem: &str, key_pem: &str, ssl_only: bool) -> Result<PgCluster, String> {
        let mut cluster = PgCluster::init()?;
        let data = cluster.root.join("data");
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, pem).map_err(|e| format!("{name}: {e}"))?;
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| format!("{name}: {e}"))?;
            if as_root() {
                std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))
                    .map_err(|e| format!("chown {name}: {e}"))?;
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| format!("conf: {e}"))?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).map_err(|e| format!("conf: {e}"))?;
        if ssl_only {
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).map_err(|e| format!("pg_hba: {e}"))?;
            let text: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, text).map_err(|e| format!("pg_hba: {e}"))?;
        }
        cluster.resume()?;
        Ok(cluster)
    }

    /// A new cluster, initialized (`initdb`), not started.
    fn init() -> Result<PgCluster, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let bin = bin_dir()?;
        let root = std::env::temp_dir().join(format!(
            "ten-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sock")).map_err(|e| e.to_string())?;
        std::fs::write(root.join("pw"), PASSWORD).map_err(|e| e.to_string())?;
        if as_root() {
            for p in [root.clone(), root.join("sock"), root.join("pw")] {
                std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let cluster = PgCluster {
            root,
            bin,
            port: free_port()?,
            child: None,
        };
        let data = cluster.root.join("data");
        let pwfile = cluster.root.join("pw");
        let out = cluster
            .command("initdb")
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(cluster)
    }

    /// A command of the cluster's binaries, as the cluster's user.
    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if as_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .arg("--clear-groups")
                .arg(exe)
                .current_dir(&self.root);
            c
        } else {
            let mut c = Command::new(exe);
            c.current_dir(&self.root);
            c
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The URL of database `db`, with the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with `psql` on database `db`: its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A new empty database: its URL.
    pub fn create_db(&self, name: &str) -> Result<String, String> {
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown: sessions are cut), within 20 s.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("postgres did not stop within 20s: killed".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again (same data, same port) and waits until it accepts connections.
    pub fn resume(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.root.join("postgres.log"))
            .map_err(|e| format!("postgres.log: {e}"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.root.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-t", "2"])
                .arg("-p")
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("postgres exited ({st}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("postgres not ready within 30s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the postmaster takes its backends down with it.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
