//! A private PostgreSQL server that accepts only TLS connections (`hostssl`), with a
//! certificate for `localhost` and 127.0.0.1 signed by a private CA: started by the test
//! itself with `initdb` and `pg_ctl` from the installed server binaries, on a free port in a
//! temporary directory, and stopped when dropped.
//!
//! Where the server binaries are missing it skips with a message, except under CI or
//! `REQUIRE_POSTGRES=1`, where it fails (as [`crate::PostgresDatabase`] does).

use crate::smtp::{TestCertificate, free_port, running_as_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The server runs as this user when the tests run as root (PostgreSQL refuses root).
const SERVER_USER: &str = "postgres";

/// A running TLS-only PostgreSQL; `pg_ctl stop` on drop.
pub struct TlsPostgres {
    /// The CA that signed the server's certificate (what `sslrootcert=` must name).
    pub ca: PathBuf,
    /// The port it listens on, on 127.0.0.1 and 127.0.0.2 (an address its certificate does
    /// not name, for host name checks).
    pub port: u16,
    pg_ctl: PathBuf,
    data: PathBuf,
    _certificate: TestCertificate,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    /// Starts the server, or returns `None` (after saying why) when PostgreSQL's server
    /// binaries or `openssl` are missing and the run does not require PostgreSQL.
    pub fn start() -> Option<TlsPostgres> {
        match TlsPostgres::try_start() {
            Ok(server) => Some(server),
            Err(why) if crate::postgres_required() => {
                panic!("a private PostgreSQL is required (CI/REQUIRE_POSTGRES) but: {why}")
            }
            Err(why) => {
                eprintln!("skipping: cannot start a private PostgreSQL: {why}");
                None
            }
        }
    }

    /// A URL for database `postgres` on `host` with the given query (`sslmode=…&…`).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    fn try_start() -> Result<TlsPostgres, String> {
        let bin = server_binaries()?;
        let certificate =
            TestCertificate::create().ok_or("openssl could not make a certificate")?;
        let dir = tempfile::tempdir().map_err(|err| format!("temporary directory: {err}"))?;
        let data = dir.path().join("data");
        let as_root = running_as_root();
        if as_root {
            run(Command::new("chown")
                .arg(format!("{SERVER_USER}:"))
                .arg(dir.path()))?;
        }
        let server_command = |program: &Path| {
            if as_root {
                let mut command = Command::new("runuser");
                command.args(["-u", SERVER_USER, "--"]).arg(program);
                command
            } else {
                Command::new(program)
            }
        };
        run(server_command(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data))?;
        // TLS only, over TCP: a plain connection is refused, so a test that connects proves
        // TLS was used.
        let hba = "local all all trust\n\
                   hostssl all all 127.0.0.1/32 trust\n\
                   hostssl all all 127.0.0.2/32 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(|err| err.to_string())?;
        std::fs::copy(&certificate.cert, data.join("server.crt")).map_err(|err| err.to_string())?;
        std::fs::copy(&certificate.key, data.join("server.key")).map_err(|err| err.to_string())?;
        run(Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key")))?;
        if as_root {
            run(Command::new("chown")
                .arg(format!("{SERVER_USER}:"))
                .arg(data.join("pg_hba.conf"))
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")))?;
        }
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1,127.0.0.2 -c ssl=on -c fsync=off",
            dir.path().display()
        );
        run(server_command(&bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-l"])
            .arg(dir.path().join("server.log"))
            .arg("-o")
            .arg(options)
            .arg("-D")
            .arg(&data)
            .arg("start"))
        .map_err(|err| {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            format!("{err}\n{log}")
        })?;
        Ok(TlsPostgres {
            ca: certificate.ca.clone(),
            port,
            pg_ctl: bin.join("pg_ctl"),
            data,
            _certificate: certificate,
            _dir: dir,
        })
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // Stopped as the user that runs it: pg_ctl refuses root.
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(&self.pg_ctl);
            command
        } else {
            Command::new(&self.pg_ctl)
        };
        let _ = command
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

/// The directory of `initdb` and `pg_ctl`: `PG_BIN`, else the newest
/// /usr/lib/postgresql/*/bin, else the PATH.
fn server_binaries() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    match Command::new("initdb").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(PathBuf::new()),
        _ => Err("initdb is not installed (no /usr/lib/postgresql/*/bin, none on PATH)".into()),
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    match command.output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(err) => Err(format!("{shown}: {err}")),
    }
}
