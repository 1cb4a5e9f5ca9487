//! Where PostgreSQL's binaries are: `PORTCULLIS_PG_BIN`, Debian's layout, or PATH.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The directory of the PostgreSQL binaries: `PORTCULLIS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else the one of `initdb` on PATH.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PORTCULLIS_PG_BIN") {
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = version_key(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin);
    newest.or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_server(d)))
}

/// `15` → `[15]`, `9.6` → `[9, 6]`: ordered as versions are.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_sorts_last() {
        let mut versions: Vec<_> = ["15", "9.6", "17", "10"]
            .into_iter()
            .map(|v| version_key(v).unwrap())
            .collect();
        versions.sort();
        assert_eq!(versions, [vec![9, 6], vec![10], vec![15], vec![17]]);
        assert_eq!(version_key("main"), None);
    }
}
