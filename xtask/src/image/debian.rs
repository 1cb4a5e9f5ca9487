//! The Debian part of the images: the packages fetched with `apt-get download`, and the base
//! layer made of their files (documentation and scripts left out), the CA bundle, users and
//! name-service configuration, and the dpkg status files scanners read.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    UID,
    layer::{Entry, Layer, Tree, insert, layer},
};

/// What of a package goes in: documentation, maintainer scripts' helpers and (from
/// base-files) everything but os-release are left out.
pub fn keep(package: &str, path: &str) -> bool {
    const DROPPED: [&str; 6] = [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/lintian",
        "usr/share/locale",
        "usr/sbin",
    ];
    if DROPPED
        .iter()
        .any(|d| path == *d || path.starts_with(&format!("{d}/")))
    {
        return false;
    }
    match package {
        "base-files" => path == "usr/lib/os-release",
        "ca-certificates" => path.starts_with("usr/share/ca-certificates"),
        _ => true,
    }
}

pub struct Deb {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// The control file, for /var/lib/dpkg/status.d.
    pub control: String,
    pub path: PathBuf,
}

/// `apt-get download` of the base packages into `dir` (after `apt-get update` once, as root,
/// if the package lists do not know them).
pub fn download_packages(dir: &Path, packages: &[&str]) -> Result<Vec<Deb>> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .args(packages)
            .current_dir(&debs)
            .stdin(Stdio::null())
            .output()
    };
    let mut out = download().context("running apt-get download (is this a Debian system?)")?;
    if !out.status.success() && is_root() {
        println!("xtask: apt-get download failed; updating the package lists once");
        let update = Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(Stdio::null())
            .output()
            .context("running apt-get update")?;
        if update.status.success() {
            out = download()?;
        }
    }
    if !out.status.success() {
        bail!(
            "apt-get could not download the base packages ({}): {}",
            packages.join(", "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut found = Vec::new();
    for package in packages {
        let mut matches: Vec<PathBuf> = std::fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .collect();
        matches.sort();
        let path = matches
            .pop()
            .with_context(|| format!("apt-get download did not fetch {package}"))?;
        let field = |name: &str| -> Result<String> {
            let out = Command::new("dpkg-deb")
                .arg("-f")
                .arg(&path)
                .arg(name)
                .output()
                .context("running dpkg-deb")?;
            ensure!(out.status.success(), "dpkg-deb -f {}", path.display());
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let control = {
            let out = Command::new("dpkg-deb").arg("-f").arg(&path).output()?;
            ensure!(out.status.success(), "dpkg-deb -f {}", path.display());
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        found.push(Deb {
            package: (*package).to_owned(),
            version: field("Version")?,
            architecture: field("Architecture")?,
            control,
            path,
        });
    }
    Ok(found)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The base layer: the packages' files, the CA bundle, users, name service config.
pub fn base_layer(debs: &[Deb], epoch: u64) -> Result<Layer> {
    let mut tree = Tree::new();
    for deb in debs {
        let out = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb.path)
            .output()
            .context("running dpkg-deb --fsys-tarfile")?;
        ensure!(
            out.status.success(),
            "dpkg-deb --fsys-tarfile {}: {}",
            deb.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut archive = tar::Archive::new(out.stdout.as_slice());
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            if path.is_empty() || !keep(&deb.package, &path) {
                continue;
            }
            let mode = entry.header().mode()? & 0o7777;
            let kind = entry.header().entry_type();
            let item = if kind.is_dir() {
                Entry::Dir { mode, owner: 0 }
            } else if kind.is_symlink() {
                let target = entry
                    .link_name()?
                    .context("a symlink without a target")?
                    .to_string_lossy()
                    .into_owned();
                Entry::Symlink { target }
            } else if kind.is_file() {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                Entry::File {
                    mode,
                    owner: 0,
                    data,
                }
            } else {
                bail!(
                    "{}: {path} is neither a file, a directory nor a symlink",
                    deb.package
                );
            };
            insert(&mut tree, &path, item);
        }
        // What scanners (Trivy, Grype) read to know the packages of a distroless image.
        insert(
            &mut tree,
            &format!("var/lib/dpkg/status.d/{}", deb.package),
            Entry::File {
                mode: 0o644,
                owner: 0,
                data: deb.control.clone().into_bytes(),
            },
        );
    }
    // The bundle update-ca-certificates builds: every certificate the package ships (all are
    // enabled by default), in path order.
    let mut bundle = Vec::new();
    for (path, entry) in &tree {
        if path.starts_with("usr/share/ca-certificates/")
            && path.ends_with(".crt")
            && let Entry::File { data, .. } = entry
        {
            bundle.extend_from_slice(data);
            if !data.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }
    }
    ensure!(!bundle.is_empty(), "ca-certificates shipped no certificate");
    let file = |data: &str| Entry::File {
        mode: 0o644,
        owner: 0,
        data: data.as_bytes().to_vec(),
    };
    insert(
        &mut tree,
        "etc/ssl/certs/ca-certificates.crt",
        Entry::File {
            mode: 0o644,
            owner: 0,
            data: bundle,
        },
    );
    insert(
        &mut tree,
        "etc/passwd",
        file(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        ),
    );
    insert(
        &mut tree,
        "etc/group",
        file("root:x:0:\nnonroot:x:65532:\n"),
    );
    insert(
        &mut tree,
        "etc/nsswitch.conf",
        file("passwd: files\ngroup: files\nhosts: files dns\n"),
    );
    insert(
        &mut tree,
        "etc/hosts",
        file("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    );
    insert(
        &mut tree,
        "etc/os-release",
        Entry::Symlink {
            target: "../usr/lib/os-release".to_owned(),
        },
    );
    insert(
        &mut tree,
        "tmp",
        Entry::Dir {
            mode: 0o1777,
            owner: 0,
        },
    );
    insert(
        &mut tree,
        "root",
        Entry::Dir {
            mode: 0o700,
            owner: 0,
        },
    );
    insert(
        &mut tree,
        "home/nonroot",
        Entry::Dir {
            mode: 0o700,
            owner: UID,
        },
    );
    // The working directory, and the data directory the binaries default to there.
    insert(
        &mut tree,
        "var/lib/portcullis",
        Entry::Dir {
            mode: 0o700,
            owner: UID,
        },
    );
    layer(&tree, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_and_scripts_stay_out() {
        assert!(!keep("libc6", "usr/share/doc/libc6/copyright"));
        assert!(!keep("ca-certificates", "usr/sbin/update-ca-certificates"));
        assert!(keep(
            "ca-certificates",
            "usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"
        ));
        assert!(keep("libc6", "lib/x86_64-linux-gnu/libc.so.6"));
        assert!(keep("base-files", "usr/lib/os-release"));
        assert!(!keep("base-files", "etc/profile"));
    }
}
