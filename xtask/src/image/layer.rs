//! Layers: a file tree written as a tar with entries in path order and fixed owners and
//! times, gzipped without a name or a time, so its digest depends on its content only.

use std::{collections::BTreeMap, io::Write, path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

/// One file system entry of a layer.
#[derive(Clone)]
pub enum Entry {
    Dir {
        mode: u32,
        owner: u64,
    },
    File {
        mode: u32,
        owner: u64,
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
}

pub type Tree = BTreeMap<String, Entry>;

/// Adds `entry` at `path` (no leading slash) and every missing parent directory.
pub fn insert(tree: &mut Tree, path: &str, entry: Entry) {
    let mut parent = String::new();
    for component in path
        .split('/')
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, p)| p)
        .unwrap_or(&[])
    {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(component);
        tree.entry(parent.clone()).or_insert(Entry::Dir {
            mode: 0o755,
            owner: 0,
        });
    }
    match (&entry, tree.get(path)) {
        // A directory shipped by two packages stays as first seen.
        (Entry::Dir { .. }, Some(Entry::Dir { .. })) => {}
        _ => {
            tree.insert(path.to_owned(), entry);
        }
    }
}

/// The binary's layer: `/usr/local/bin/NAME`, debug info stripped.
pub fn binary_layer(path: &Path, name: &str, scratch: &Path, epoch: u64) -> Result<Layer> {
    let stripped = scratch.join(format!("{name}.stripped"));
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(path)
        .output()
        .context("running strip (binutils)")?;
    ensure!(
        out.status.success(),
        "strip {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tree = Tree::new();
    insert(
        &mut tree,
        &format!("usr/local/bin/{name}"),
        Entry::File {
            mode: 0o755,
            owner: 0,
            data: std::fs::read(&stripped)?,
        },
    );
    layer(&tree, epoch)
}

pub struct Layer {
    pub gz: Vec<u8>,
    pub diff_id: String,
    pub digest: String,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The tree as a gzipped tar: entries in path order, owners and times fixed.
pub fn layer(tree: &Tree, epoch: u64) -> Result<Layer> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in tree {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(epoch);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir { mode, owner } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_uid(*owner);
                header.set_gid(*owner);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File { mode, owner, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(*owner);
                header.set_gid(*owner);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    let tar = builder.into_inner()?;
    let gz = gzip(&tar)?;
    Ok(Layer {
        diff_id: sha256(&tar),
        digest: sha256(&gz),
        gz,
    })
}

pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // No file name and no time in the header, so the bytes depend on the input only.
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_depend_on_their_content_only() {
        let mut tree = Tree::new();
        insert(
            &mut tree,
            "usr/local/bin/x",
            Entry::File {
                mode: 0o755,
                owner: 0,
                data: b"binary".to_vec(),
            },
        );
        assert!(tree.contains_key("usr") && tree.contains_key("usr/local/bin"));
        let (a, b) = (layer(&tree, 7).unwrap(), layer(&tree, 7).unwrap());
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.gz, b.gz);
        assert_ne!(
            layer(&tree, 8).unwrap().diff_id,
            a.diff_id,
            "the time is in the tar"
        );
    }
}
