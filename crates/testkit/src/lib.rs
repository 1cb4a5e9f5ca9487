//! Harness for the end-to-end tests, and for the benchmarks and campaigns of `xtask`: builds
//! the real binaries once, starts them on free loopback ports with temporary data dirs, and
//! kills them when the test ends (pass or fail). Tests run them with short intervals and
//! verbose logs (`Profile::Test`); benchmarks run release binaries as an operator would
//! (`Profile::Bench`, after `use_binaries_in`).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

mod agent;
mod control_plane;
pub mod kube;
mod postgres;

pub use agent::{Agent, post_many, post_review, post_webhook};
pub use control_plane::ControlPlane;
pub use postgres::{
    Postgres, PostgresError, fresh_database, postgres_bin_dir, postgres_requested, shared_postgres,
};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Runs the binaries of `dir` (built by the caller, say `target/release`) instead of building
/// the debug ones; call it before anything starts.
pub fn use_binaries_in(dir: PathBuf) {
    assert!(
        BIN_DIR.set(dir).is_ok(),
        "use_binaries_in after the binaries were chosen"
    );
}

/// The directory holding the workspace's binaries: the debug ones, built once per test
/// process, unless `use_binaries_in` chose others.
pub fn bin_dir() -> &'static Path {
    BIN_DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        // What cargo sets for a test process only: a build script that reads one of these
        // (ring's does) would otherwise see it change between this build and `cargo test`'s
        // own, and everything above it would be built again each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
            {
                command.env_remove(name.as_ref());
            }
        }
        let status = command
            .args(["build", "--quiet", "--bins"])
            .args([
                "-p",
                "portcullis-control-plane",
                "-p",
                "portcullis-cli",
                "-p",
                "portcullis-agent",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        // target/debug/deps/<test> -> target/debug; a binary of the workspace (xtask) sits
        // in target/debug itself.
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().expect("target dir");
        if dir.file_name().is_some_and(|name| name == "deps") {
            dir.parent().expect("target dir").to_path_buf()
        } else {
            dir.to_path_buf()
        }
    })
}

/// How a binary is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// For tests: heartbeats, reconnects and status reports every second, info logs.
    Test,
    /// For benchmarks: the binaries' defaults, warnings only.
    Bench,
}

impl Profile {
    fn log_level(self) -> &'static str {
        match self {
            Profile::Test => "info",
            Profile::Bench => "warn",
        }
    }
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn owned_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status line of `GET path` on a loopback HTTP port, if it answered.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// A random token of 48 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    urandom
        .read_exact(&mut bytes)
        .expect("reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An append-mode log file for a child's stderr (kept across restarts).
fn log_file(path: &Path) -> Stdio {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    Stdio::from(file)
}

/// Prints a child's log when the test failed, so CI output shows what the binary said.
fn dump_log_if_panicking(what: &str, path: &Path) {
    if thread::panicking() {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        eprintln!(
            "----- {what} log ({}) -----\n{log}----- end of {what} log -----",
            path.display()
        );
    }
}

/// An AdmissionReview fixture captured from kube-apiserver (agent/tests/fixtures/admission).
pub fn admission_fixture(name: &str) -> Vec<u8> {
    let path = workspace_root()
        .join("agent/tests/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Polls `pred` until it holds (30 s at most).
pub fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// grpcurl's flags come before the address, the method after it: `["-d", "{}", "--", "svc/M"]`.
fn split_grpcurl_args<'a>(args: &'a [&'a str]) -> (&'a [&'a str], &'a [&'a str]) {
    match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&[], args),
    }
}

/// grpcurl: `PORTCULLIS_GRPCURL` (set by `cargo xtask test`) or `grpcurl` on PATH.
pub fn grpcurl_path() -> PathBuf {
    let path = std::env::var_os("PORTCULLIS_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "grpcurl".into());
    let works = Command::new(&path)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "grpcurl not found: run the tests with `cargo xtask test`, which installs it"
    );
    path
}

/// stdout of a command that must succeed.
pub fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr of a command that must fail.
pub fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "command succeeded but should have failed:\nstdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parses JSON stdout of a successful command.
pub fn json(output: &Output) -> serde_json::Value {
    let text = success(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
