//! The data directory's format marker: `DIR/FORMAT` holds the store format version. A data dir
//! written by a newer version is refused before sled touches it, so an older binary can never
//! half-read (or rewrite) state it does not understand.

use std::{fs, io, path::Path};

use super::StoreError;

/// The format this build reads and writes: 1, the first released. What a later format does
/// with this one is the compatibility policy in docs/architecture.md.
pub const CURRENT_FORMAT: u32 = 1;

const FORMAT_FILE: &str = "FORMAT";
const STORE_DIR: &str = "store";

/// Checks (or, for a new data dir, writes) the format marker; returns the format found (the
/// current one for a new data dir).
pub fn check_or_init(dir: &Path) -> Result<u32, StoreError> {
    let marker = dir.join(FORMAT_FILE);
    match fs::read_to_string(&marker) {
        Ok(text) => {
            let found: u32 = text.trim().parse().map_err(|_| StoreError::Corrupt {
                what: format!(
                    "{}: not a format version: {:?}",
                    marker.display(),
                    text.trim()
                ),
            })?;
            if found > CURRENT_FORMAT {
                return Err(StoreError::NewerFormat {
                    dir: dir.display().to_string(),
                    found,
                    supported: CURRENT_FORMAT,
                });
            }
            Ok(found)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dir.join(STORE_DIR).exists() {
                return Err(StoreError::Corrupt {
                    what: format!("{} is missing but a store exists", marker.display()),
                });
            }
            fs::create_dir_all(dir)?;
            fs::write(&marker, format!("{CURRENT_FORMAT}\n"))?;
            Ok(CURRENT_FORMAT)
        }
        Err(e) => Err(e.into()),
    }
}

/// Where sled keeps its files inside the data dir.
pub fn sled_path(dir: &Path) -> std::path::PathBuf {
    dir.join(STORE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_dir_gets_current_format() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_or_init(dir.path()).unwrap(), CURRENT_FORMAT);
        let text = fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text.trim(), CURRENT_FORMAT.to_string());
        check_or_init(dir.path()).unwrap();
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "7\n").unwrap();
        let err = check_or_init(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerFormat { found: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("format version 7"), "{err}");
    }

    #[test]
    fn a_store_from_before_the_release_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "1\n").unwrap();
        {
            let db = sled::open(sled_path(dir.path())).unwrap();
            db.open_tree("scans").unwrap().insert("x", "y").unwrap();
            db.flush().unwrap();
        }
        // sled releases its file lock only when its last handle (a background flush) is gone,
        // which a loaded machine can delay: a lock error is tried again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let err = loop {
            match crate::store::sled::SledStore::open(dir.path()) {
                Ok(_) => panic!("a pre-release store was opened"),
                Err(StoreError::Sled(_) | StoreError::Io(_))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => break err,
            }
        };
        assert!(matches!(err, StoreError::PreRelease { .. }), "{err}");
        assert!(
            err.to_string().contains("before the first release"),
            "{err}"
        );
        // A store this build wrote opens again.
        let dir = tempfile::tempdir().unwrap();
        drop(crate::store::sled::SledStore::open(dir.path()).unwrap());
        crate::store::sled::test_support::reopen(dir.path());
    }

    #[test]
    fn garbage_marker_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "seven").unwrap();
        assert!(matches!(
            check_or_init(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
