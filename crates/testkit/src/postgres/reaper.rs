//! Stops a server this process started when the process ends without dropping its value.

use std::{
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
};

use super::{PostgresError, io};

/// For a shared server in a static, or a killed test: a shell waiting for the end of a pipe
/// only this process holds, then signalling the pid in `postmaster.pid`, waiting until the
/// server removes that file (its process may stay a zombie), and, for a temporary cluster,
/// removing the dir. It ignores Ctrl-C, which reaches the server too. Dropping it dismisses it.
pub(super) struct Reaper {
    child: Child,
    _pipe: ChildStdin,
}

impl Reaper {
    pub(super) fn watch(dir: &Path, temporary: bool) -> Result<Self, PostgresError> {
        const SCRIPT: &str = r#"trap '' INT
read -r _
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -"$2" "$pid" 2>/dev/null
  i=0
  while [ -e "$1/data/postmaster.pid" ] && kill -0 "$pid" 2>/dev/null && [ "$i" -lt 600 ]; do
    sleep 0.1
    i=$((i + 1))
  done
fi
if [ "$3" = remove ]; then rm -rf "$1"; fi"#;
        let mut child = Command::new("sh")
            .args(["-c", SCRIPT, "portcullis-pg-reaper"])
            .arg(dir)
            .arg(if temporary { "QUIT" } else { "INT" })
            .arg(if temporary { "remove" } else { "keep" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting PostgreSQL's reaper"))?;
        let pipe = child.stdin.take().expect("piped stdin");
        Ok(Self { child, _pipe: pipe })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
