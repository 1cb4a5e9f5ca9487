//! `cargo xtask image [--out DIR] [--profile P]`: the OCI images of the agent, the control
//! plane and the CLI, assembled here from the built binaries and Debian packages, with no
//! container daemon and no registry.
//!
//! Why assembled by hand: an image is a few tar layers and four small JSON documents, and
//! reproducibility (two builds of a commit give the same digest) needs every byte under our
//! control: sorted entries, fixed owners and times (the commit's, `SOURCE_DATE_EPOCH`),
//! gzip without a name or time. The layers are written with the `tar` and `flate2` crates; the
//! result is checked by the tools users load it with (`skopeo inspect`, `skopeo copy`) in
//! `integration/tests/images.rs`.
//!
//! Each image: a base layer (the same in all three) made of what the binaries link (`libc6`,
//! `libgcc-s1`), `ca-certificates` (its bundle built as `update-ca-certificates` would) and
//! `/usr/lib/os-release` from `base-files`, unpacked from the `.deb`s `apt-get download`
//! fetches, plus passwd/group entries for 65532, `/etc/nsswitch.conf`, `/tmp` and the dpkg
//! status files scanners read; no shell, no package manager. Then a layer with the binary
//! (debug info stripped). Written to `DIR` as `NAME.oci.tar` (an OCI image layout with a
//! docker `manifest.json` too, so `skopeo`, `podman load` and `docker load` take it) and
//! `NAME.cdx.json` (a CycloneDX SBOM: the Rust crates in the binary and the Debian packages),
//! plus `images.json` (what was built) and the two charts packaged as `helm package` would
//! (`NAME-VERSION.tgz`, for `helm push`). Nothing is written to `DIR` until everything is
//! built.

mod debian;
mod layer;
mod sbom;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use layer::{Entry, Layer, Tree, insert, layer, sha256};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Where the archives and SBOMs go.
    #[arg(long, default_value = "target/images")]
    out: PathBuf,
    /// The cargo profile whose binaries are packed (`release` ships; `dev` is for quick tests).
    #[arg(long, default_value = "release")]
    profile: String,
}

/// The images: name and the binary each runs.
const IMAGES: [(&str, &str); 3] = [
    ("portcullis-agent", "portcullis-agent"),
    ("portcullis-control-plane", "portcullis-control-plane"),
    ("portcullis", "portcullis"),
];

/// Where the images are pushed by default (the charts' `image.repository`).
pub const REGISTRY: &str = "ghcr.io/portcullis";

/// The Debian packages of the base layer.
const PACKAGES: [&str; 4] = ["libc6", "libgcc-s1", "ca-certificates", "base-files"];

/// The user the images run as.
pub const UID: u64 = 65532;

pub fn run(args: ImageArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match args.profile.as_str() {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    };
    build(&args, &root.join("target").join(target), &PACKAGES)
}

/// Builds the images from the binaries in `bin_dir` on the Debian `packages`.
fn build(args: &ImageArgs, bin_dir: &Path, packages: &[&str]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (_, binary) in IMAGES {
        let path = bin_dir.join(binary);
        ensure!(
            path.is_file(),
            "{} is missing: build the binaries first (`cargo build --locked --bins {}`)",
            path.display(),
            if args.profile == "dev" {
                String::new()
            } else {
                format!("--profile {}", args.profile)
            }
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    for chart in ["portcullis-agent", "portcullis-control-plane"] {
        let app_version = chart_app_version(&root.join("helm").join(chart))?;
        ensure!(
            app_version == version,
            "helm/{chart}/Chart.yaml has appVersion {app_version:?} but the binaries are {version}: \
             the chart's default image tag would name an image this build does not write"
        );
    }
    let revision = git(&root, &["rev-parse", "HEAD"])?;
    let epoch: u64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value.parse().context("SOURCE_DATE_EPOCH")?,
        Err(_) => git(&root, &["log", "-1", "--format=%ct"])?
            .parse()
            .context("the commit time")?,
    };
    let created = rfc3339(epoch);
    // The labels say which commit the image is; the binaries must be that commit's.
    for (_, binary) in IMAGES {
        let path = bin_dir.join(binary);
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", path.display()))?;
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(
            said.contains(&format!("(revision {revision})")),
            "{} says {:?}, but HEAD is {revision}: rebuild the binaries before packing them",
            path.display(),
            said.trim()
        );
    }

    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    let parent = out.parent().context("--out has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Everything is staged beside --out and moved in at the end.
    let staging = tempfile::Builder::new()
        .prefix(".portcullis-images-")
        .tempdir_in(parent)?;

    let debs = debian::download_packages(staging.path(), packages)?;
    let base = debian::base_layer(&debs, epoch)?;
    let metadata = sbom::cargo_metadata(&root)?;
    let mut built = Vec::new();
    for (name, binary) in IMAGES {
        let binary_path = bin_dir.join(binary);
        let layer = layer::binary_layer(&binary_path, binary, staging.path(), epoch)?;
        let reference = format!("{REGISTRY}/{name}:{version}");
        let labels = json!({
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.source": env!("CARGO_PKG_REPOSITORY"),
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": revision,
            "org.opencontainers.image.licenses": env!("CARGO_PKG_LICENSE"),
            "org.opencontainers.image.created": created,
            "io.portcullis.debian-packages": debs.iter().map(|d| format!("{}={}", d.package, d.version)).collect::<Vec<_>>().join(" "),
        });
        let image = assemble(binary, &reference, &labels, &created, &[&base, &layer])?;
        let archive = staging.path().join(format!("{name}.oci.tar"));
        std::fs::write(&archive, &image.archive)?;
        let crates = sbom::crates_of(&metadata, binary)?;
        let sbom = sbom::sbom(
            name,
            version,
            &revision,
            &created,
            &image.manifest_digest,
            &crates,
            &debs,
        );
        std::fs::write(
            staging.path().join(format!("{name}.cdx.json")),
            serde_json::to_vec_pretty(&sbom)?,
        )?;
        println!(
            "xtask: {reference} {} ({:.1} MB compressed, {} crates, {} Debian packages)",
            image.manifest_digest,
            image.compressed as f64 / 1e6,
            crates.len(),
            debs.len()
        );
        built.push(json!({
            "name": name,
            "reference": reference,
            "digest": image.manifest_digest,
            "compressedBytes": image.compressed,
            "archive": format!("{name}.oci.tar"),
            "sbom": format!("{name}.cdx.json"),
        }));
    }
    // The charts, packaged as `helm package` would (`helm push NAME-VERSION.tgz oci://…`).
    let mut charts = Vec::new();
    for chart in ["portcullis-agent", "portcullis-control-plane"] {
        let file = format!("{chart}-{version}.tgz");
        let bytes = package_chart(&root.join("helm").join(chart), chart, epoch)?;
        std::fs::write(staging.path().join(&file), &bytes)?;
        charts.push(
            json!({"name": chart, "version": version, "package": file, "digest": sha256(&bytes)}),
        );
    }
    let summary = json!({
        "version": version,
        "revision": revision,
        "created": created,
        "profile": args.profile,
        "debianPackages": debs.iter().map(|d| json!({"package": d.package, "version": d.version, "architecture": d.architecture})).collect::<Vec<_>>(),
        "images": built,
        "charts": charts,
    });
    std::fs::write(
        staging.path().join("images.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;

    // All built: move the results in.
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = vec!["images.json".to_owned()];
    for (name, _) in IMAGES {
        files.push(format!("{name}.oci.tar"));
        files.push(format!("{name}.cdx.json"));
    }
    for chart in ["portcullis-agent", "portcullis-control-plane"] {
        files.push(format!("{chart}-{version}.tgz"));
    }
    for file in files {
        std::fs::rename(staging.path().join(&file), out.join(&file))
            .with_context(|| format!("moving {file} into {}", out.display()))?;
    }
    println!("xtask: images in {}", out.display());
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .context("running git")?;
    ensure!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn chart_app_version(chart: &Path) -> Result<String> {
    let text = std::fs::read_to_string(chart.join("Chart.yaml"))
        .with_context(|| format!("reading {}/Chart.yaml", chart.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .with_context(|| format!("{}/Chart.yaml has no appVersion", chart.display()))
}

/// Seconds since the epoch as RFC 3339 UTC.
fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

struct Image {
    archive: Vec<u8>,
    manifest_digest: String,
    compressed: usize,
}

/// The image's config, manifest and index, and the archive holding them with the layers.
fn assemble(
    binary: &str,
    reference: &str,
    labels: &Value,
    created: &str,
    layers: &[&Layer],
) -> Result<Image> {
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": format!("{UID}:{UID}"),
            "Entrypoint": [format!("/usr/local/bin/{binary}")],
            "WorkingDir": "/var/lib/portcullis",
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            "Labels": labels,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": [
            {"created": created, "created_by": "cargo xtask image: Debian packages (base)"},
            {"created": created, "created_by": format!("cargo xtask image: /usr/local/bin/{binary}")},
        ],
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.digest,
            "size": l.gz.len(),
        })).collect::<Vec<_>>(),
        "annotations": labels,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256(&manifest_bytes);
    let tag = reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {
                "org.opencontainers.image.ref.name": tag,
                "io.containerd.image.name": reference,
            },
        }],
    });
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    // `docker load` reads manifest.json (the OCI parts are what skopeo and podman read).
    let docker = json!([{
        "Config": blob(&config_digest),
        "RepoTags": [reference],
        "Layers": layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
    }]);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    files.insert("index.json".into(), serde_json::to_vec(&index)?);
    files.insert("manifest.json".into(), serde_json::to_vec(&docker)?);
    files.insert(blob(&config_digest), config_bytes);
    files.insert(blob(&manifest_digest), manifest_bytes);
    for layer in layers {
        files.insert(blob(&layer.digest), layer.gz.clone());
    }
    let mut archive = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for path in files.keys() {
        if let Some((dir, _)) = path.rsplit_once('/') {
            dirs.insert("blobs".to_owned());
            dirs.insert(dir.to_owned());
        }
    }
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_size(0);
        archive.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    for (path, data) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, path, data.as_slice())?;
    }
    Ok(Image {
        archive: archive.into_inner()?,
        manifest_digest,
        compressed: layers.iter().map(|l| l.gz.len()).sum(),
    })
}

/// The chart directory as a gzipped tar under `NAME/`, entries sorted, times fixed.
fn package_chart(dir: &Path, name: &str, epoch: u64) -> Result<Vec<u8>> {
    let mut tree = Tree::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            let relative = path.strip_prefix(dir)?.to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else {
                insert(
                    &mut tree,
                    &format!("{name}/{relative}"),
                    Entry::File {
                        mode: 0o644,
                        owner: 0,
                        data: std::fs::read(&path)?,
                    },
                );
            }
        }
    }
    ensure!(
        tree.contains_key(&format!("{name}/Chart.yaml")),
        "{} has no Chart.yaml",
        dir.display()
    );
    Ok(layer(&tree, epoch)?.gz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, profile: &str) -> ImageArgs {
        ImageArgs {
            out: out.to_path_buf(),
            profile: profile.to_owned(),
        }
    }

    #[test]
    fn without_the_binaries_it_says_what_to_build_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("images");
        let error = run(args(&out, "no-such-profile")).unwrap_err().to_string();
        assert!(
            error.contains("target/no-such-profile/portcullis-agent is missing"),
            "{error}"
        );
        assert!(
            error.contains("cargo build --locked --bins --profile no-such-profile"),
            "{error}"
        );
        assert!(!out.exists());
    }

    /// Scripts standing in for the three binaries in `dir/bins`, whose `--version` names
    /// `revision`.
    fn stand_ins(dir: &Path, revision: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bins = dir.join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for (_, binary) in IMAGES {
            let path = bins.join(binary);
            let script = format!("#!/bin/sh\necho \"{binary} 0 (revision {revision})\"\n");
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bins
    }

    #[test]
    fn binaries_of_another_commit_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bins = stand_ins(tmp.path(), "0123");
        let out = tmp.path().join("images");
        let error = build(&args(&out, "release"), &bins, &PACKAGES)
            .unwrap_err()
            .to_string();
        assert!(error.contains("rebuild the binaries"), "{error}");
        assert!(!out.exists());
    }

    #[test]
    fn a_package_apt_cannot_fetch_is_named_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        // Stand-ins that say they are this commit's (what the packing checks first).
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bins = stand_ins(tmp.path(), &git(&root, &["rev-parse", "HEAD"]).unwrap());
        let out = tmp.path().join("images");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("keep.txt"), b"mine").unwrap();
        let error = build(
            &args(&out, "release"),
            &bins,
            &["libc6", "portcullis-no-such-package"],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("portcullis-no-such-package"), "{error}");
        // --out holds what it held, and no staging directory is left beside it.
        let entries: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(entries.len(), 1);
        let beside: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            beside.iter().all(|n| !n.starts_with(".portcullis-images-")),
            "{beside:?}"
        );
    }

    #[test]
    fn commit_times_are_written_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
