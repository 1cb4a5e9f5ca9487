//! Files only the owner may read: tokens, keys, and the data directories that hold them.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

use tracing::warn;

/// Creates `dir` (and its parents) with mode 0700, and makes an existing one 0700. A directory
/// someone else owns (a volume's root, group-shared through `fsGroup`) cannot be tightened by
/// this process: that is logged as a warning, not fatal, and its owner should restrict it.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if let Err(error) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
        warn!(%error, dir = %dir.display(), "Cannot make the directory private (mode 0700); its owner should");
    }
    Ok(())
}

/// Writes `contents` to `path` (created or truncated) with mode 0600, and syncs it to disk.
/// An existing file keeps its mode: callers that replace a secret remove it first.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_data_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        private_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn only_the_owner_may_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"first").unwrap();
        write_private(&path, b"2nd").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"2nd");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
