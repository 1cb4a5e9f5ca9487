//! A private PostgreSQL server for a test, a test binary, or `cargo xtask up`: the binaries of
//! Debian's `postgresql` (or `PORTCULLIS_PG_BIN`), a cluster of its own (`initdb`) served by
//! `postgres -D` on a loopback port as a child of this process, stopped when the value is
//! dropped, also when the process dies. As root it runs as the `postgres` user (else
//! `nobody`): PostgreSQL refuses root. No server the machine may be running is used. Without
//! the binaries the tests that need one say how to get them and pass without running.

use std::{
    fs,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::{
        fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{self, Signal},
    unistd::{Gid, Pid, Uid, User, geteuid},
};
use tempfile::TempDir;

use crate::{free_port, random_token};

mod binaries;
mod reaper;
mod shared;
#[cfg(test)]
mod tests;

pub use binaries::postgres_bin_dir;
use reaper::Reaper;
pub use shared::{fresh_database, postgres_requested, shared_postgres};

/// The superuser `initdb` creates, as whom the tests and the control plane connect.
const ROLE: &str = "portcullis";

/// Longest Unix socket path (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "no PostgreSQL: install Debian's `postgresql` or set PORTCULLIS_PG_BIN to the directory \
         of its initdb and postgres"
    )]
    NotInstalled,
    #[error("no user to run PostgreSQL as: neither `postgres` nor `nobody` exists")]
    NoUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: &'static str,
        status: ExitStatus,
        output: String,
    },
    #[error("postgres on port {port} did not start; its log ends with:\n{log_tail}")]
    NotStarted { port: u16, log_tail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PostgresError {
    let what = what.into();
    move |source| PostgresError::Io { what, source }
}

/// A running (or stopped) PostgreSQL server with its own data dir.
pub struct Postgres {
    bin: PathBuf,
    /// Holds `data/`, `password`, `postgres.log` and the Unix socket.
    dir: PathBuf,
    port: u16,
    password: String,
    /// Who runs the server when this process is root.
    owner: Option<(Uid, Gid)>,
    child: Option<Child>,
    _reaper: Reaper,
    /// A temporary cluster (`start`): fast settings, thrown away with the value.
    tmp: Option<TempDir>,
}

impl Postgres {
    /// Starts a fresh server in a temporary dir on a free port, or `None` (after saying how to
    /// get PostgreSQL) when its binaries are missing. Panics if it does not start.
    pub fn start() -> Option<Self> {
        let Some(bin) = postgres_bin_dir() else {
            // Where PostgreSQL must be (CI: `cargo xtask test` installed it), a test that would
            // skip fails instead: a test that cannot fail proves nothing.
            if std::env::var_os("PORTCULLIS_REQUIRE_POSTGRES").is_some() {
                panic!("PORTCULLIS_REQUIRE_POSTGRES is set but there is no PostgreSQL");
            }
            eprintln!(
                "skipped: no PostgreSQL. Install Debian's `postgresql` (`cargo xtask test` does, \
                 as root) or set PORTCULLIS_PG_BIN to the directory of its initdb and postgres \
                 to run this test against a real one"
            );
            return None;
        };
        let tmp = tempfile::Builder::new()
            .prefix("portcullis-pg")
            .tempdir()
            .expect("creating a temporary dir for PostgreSQL");
        let dir = tmp.path().to_path_buf();
        match Self::open(bin, dir, None, Some(tmp)) {
            Ok(postgres) => Some(postgres),
            Err(error) => panic!("starting PostgreSQL: {error}"),
        }
    }

    /// Starts a server whose data stays in `dir` (`cargo xtask up`): initialized on first use
    /// (the password is kept in `dir/password`, mode 0600), reused afterwards. It is stopped
    /// (fast shutdown) when dropped, when this process dies, or by Ctrl-C.
    pub fn start_in(dir: PathBuf, port: u16) -> Result<Self, PostgresError> {
        let bin = postgres_bin_dir().ok_or(PostgresError::NotInstalled)?;
        Self::open(bin, dir, Some(port), None)
    }

    fn open(
        bin: PathBuf,
        dir: PathBuf,
        port: Option<u16>,
        tmp: Option<TempDir>,
    ) -> Result<Self, PostgresError> {
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        // Local connections over the socket in it need no password.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", dir.display())))?;
        let data = dir.join("data");
        let owner = if geteuid().is_root() {
            Some(server_user(&data)?)
        } else {
            None
        };
        let reaper = Reaper::watch(&dir, tmp.is_some())?;
        // Constructed first, so that a failure below stops what was started.
        let mut postgres = Self {
            bin,
            port: port.unwrap_or_else(free_port),
            password: String::new(),
            owner,
            child: None,
            _reaper: reaper,
            tmp,
            dir,
        };
        postgres.give_to_owner(&postgres.dir)?;
        let password_file = postgres.password_file();
        if password_file.exists() {
            let password = fs::read_to_string(&password_file)
                .map_err(io(format!("reading {}", password_file.display())))?;
            postgres.password = password.trim_end().to_owned();
        } else {
            postgres.password = random_token();
            write_private(&password_file, &postgres.password)?;
            postgres.give_to_owner(&password_file)?;
        }
        if !data.join("PG_VERSION").exists() {
            postgres.initdb()?;
        }
        // A port picked free may be taken before postgres binds it; a port asked for is kept.
        let mut tries = 0;
        loop {
            tries += 1;
            match postgres.spawn() {
                Err(PostgresError::NotStarted { log_tail, .. })
                    if port.is_none() && tries < 3 && address_in_use(&log_tail) =>
                {
                    postgres.port = free_port();
                }
                Err(error) => return Err(error),
                Ok(()) => return Ok(postgres),
            }
        }
    }

    fn initdb(&self) -> Result<(), PostgresError> {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-U", ROLE, "-E", "UTF8", "--no-locale"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", self.password_file().display()));
        if self.tmp.is_some() {
            command.arg("--no-sync");
        }
        let out = command.output().map_err(io("running initdb"))?;
        if !out.status.success() {
            return Err(PostgresError::Failed {
                what: "initdb",
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    /// Starts `postgres` on `self.port` and waits (60 s at most) until it accepts connections.
    fn spawn(&mut self) -> Result<(), PostgresError> {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let log_start = log.metadata().map_or(0, |m| m.len());
        let stderr = log.try_clone().map_err(io("duplicating the log file"))?;
        let socket_dir = self.dir.display().to_string();
        // The socket in our dir when its path fits (the default dir is the system's server's).
        let socket_fits = socket_dir.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH
            && !socket_dir.contains([',', ' ', '\'', '"', '\\']);
        let mut command = self.server_command("postgres");
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                if socket_fits { socket_dir.as_str() } else { "" }
            ))
            .args(["-c", "max_connections=300"]);
        if self.tmp.is_some() {
            // Tests kill postgres, never the machine: what a commit handed to the kernel
            // survives a killed server, and only an OS crash needs fsync and full pages. Commits
            // still wait for their WAL write, so a killed server keeps every acknowledged one.
            command.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
            command.args(["-c", "synchronous_commit=on"]);
        }
        let child = command
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(io("starting postgres"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = !matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)));
            if exited || Instant::now() > deadline {
                self.shutdown(Signal::SIGQUIT);
                return Err(PostgresError::NotStarted {
                    port: self.port,
                    log_tail: log_tail(&log_path, log_start),
                });
            }
            if self.ready() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "1",
            ])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// A server program (`initdb`, `postgres`), as the unprivileged owner when this is root.
    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        // The owner may not be allowed into the current dir.
        command.current_dir(&self.dir).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            // std drops the supplementary groups too when root changes the user.
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command
    }

    /// A client program (`psql`, `createdb`, ...) connecting as the superuser over TCP.
    fn client_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
            .env("PGPASSWORD", &self.password)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        command
    }

    fn give_to_owner(&self, path: &Path) -> Result<(), PostgresError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// The connection URL of `database`, password included.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{ROLE}:{}@127.0.0.1:{}/{database}?sslmode=disable",
            self.password, self.port
        )
    }

    /// The connection URL of `database` without the password, for `--database-password-file`.
    pub fn url_without_password(&self, database: &str) -> String {
        format!(
            "postgres://{ROLE}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The file holding the password alone (mode 0600), for `--database-password-file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's dir (data, password file, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log, kept across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Creates `name` (owned by the superuser); its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = self
            .client_command("createdb")
            .arg(name)
            .output()
            .expect("running createdb");
        crate::success(&out);
        self.url(name)
    }

    /// Drops `name` if it exists, disconnecting its sessions.
    pub fn drop_database(&self, name: &str) {
        let out = self
            .client_command("dropdb")
            .args(["--if-exists", "--force", name])
            .output()
            .expect("running dropdb");
        crate::success(&out);
    }

    /// Runs `sql` in `database` with psql (`-At`: unaligned, tuples only; stops at the first
    /// error, and panics with it); its output without the final newline.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = self
            .client_command("psql")
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        crate::success(&out).trim_end_matches('\n').to_owned()
    }

    /// Stops the server as `pg_ctl stop -m fast` does: sessions ended, a checkpoint written.
    pub fn stop(&mut self) {
        self.shutdown(Signal::SIGINT);
    }

    /// Stops the server at once, as `pg_ctl stop -m immediate` does: the next start recovers
    /// from the WAL, as after a crash.
    pub fn kill(&mut self) {
        self.shutdown(Signal::SIGQUIT);
    }

    /// Starts the stopped server again, on the same data and port. Panics if it does not start.
    pub fn start_again(&mut self) {
        if let Err(error) = self.spawn() {
            panic!("starting PostgreSQL again: {error}");
        }
    }

    /// Sends `signal` to the postmaster and waits for it (SIGKILL after 60 s).
    fn shutdown(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = signal::kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- postgres log (tail) ---\n{}\n--- end of postgres log ---",
                log_tail(&self.log_path(), 0)
            );
        }
        // A temporary cluster is thrown away: no need for a clean shutdown.
        let signal = if self.tmp.is_some() {
            Signal::SIGQUIT
        } else {
            Signal::SIGINT
        };
        self.shutdown(signal);
    }
}

/// Who runs the server when this is root: the owner of an existing cluster (PostgreSQL
/// refuses a data dir it does not own), else `postgres`, else `nobody`.
fn server_user(data: &Path) -> Result<(Uid, Gid), PostgresError> {
    if let Ok(meta) = fs::metadata(data)
        && meta.uid() != 0
    {
        return Ok((Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid())));
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| User::from_name(name).ok().flatten())
        .map(|user| (user.uid, user.gid))
        .ok_or(PostgresError::NoUser)
}

fn write_private(path: &Path, contents: &str) -> Result<(), PostgresError> {
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))
}

fn address_in_use(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

/// The last 30 lines the log got after byte `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
