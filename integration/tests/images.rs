//! The OCI images `cargo xtask image` writes (issue #18), built here from the test build's
//! binaries (`--profile dev`: the shipped build differs only in the cargo profile):
//! `skopeo inspect` shows the user, entrypoint and labels; `skopeo copy` takes the archive;
//! each image's root filesystem, unpacked from its layers, runs its binary under `chroot` as
//! uid 65532 (so every library it needs is inside), the control plane and the agent start and
//! answer `/livez`, and the CLI inside talks to that control plane over TLS by name (the CA
//! and the resolver work); `podman load` takes each under its name; two builds give the same
//! digests; the charts name exactly the images written. Needs root (chroot), skopeo and
//! podman, which `cargo xtask test` installs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_testkit::{free_port, http_get, kube::render_chart};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("running a command");
    assert!(out.status.success(), "{command:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the images into `out`; returns images.json.
fn build(out: &Path) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The binaries under test, as every integration test builds them.
    portcullis_testkit::bin_dir();
    run(Command::new(cargo)
        .args(["run", "--quiet", "--locked", "-p", "xtask", "--", "image"])
        .args(["--profile", "dev", "--out"])
        .arg(out)
        .current_dir(root()));
    serde_json::from_slice(&std::fs::read(out.join("images.json")).unwrap()).unwrap()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The image's root file system: its layers, in order, extracted from the archive.
fn unpack(archive: &Path, into: &Path) -> PathBuf {
    let layout = into.join("layout");
    let rootfs = into.join("rootfs");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        run(Command::new("tar")
            .args(["--same-owner", "-xzf"])
            .arg(layout.join(layer.as_str().unwrap()))
            .arg("-C")
            .arg(&rootfs));
    }
    rootfs
}

/// `chroot --userspec=65532:65532 ROOTFS ARGS`.
fn in_image(rootfs: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("chroot");
    command
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .args(args)
        .env_clear()
        // (also where the host finds chroot: the child's PATH is searched)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null());
    command
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_livez(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(port, "/livez"), Some((200, _))) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited in its image: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not answer /livez");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_images_run_their_binaries_as_65532_and_build_reproducibly() {
    if !is_root() {
        eprintln!("skipped: unpacking the images and chroot need root (CI runs as root)");
        return;
    }
    for tool in ["skopeo", "podman"] {
        let found = Command::new(tool).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} not found: run the tests with `cargo xtask test`, which installs it"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let first = build(&tmp.path().join("first"));
    let second = build(&tmp.path().join("second"));
    let digests = |images: &Value| -> Vec<String> {
        images["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(digests(&first), digests(&second), "two builds, two digests");
    let revision = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root()))
    .trim()
    .to_owned();
    assert_eq!(first["revision"], revision.as_str());

    let mut rootfs = std::collections::BTreeMap::new();
    for image in first["images"].as_array().unwrap() {
        let name = image["name"].as_str().unwrap();
        let archive = tmp
            .path()
            .join("first")
            .join(image["archive"].as_str().unwrap());
        let transport = format!("oci-archive:{}", archive.display());

        // What skopeo sees.
        let inspect: Value =
            serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &transport])))
                .unwrap();
        assert_eq!(inspect["Digest"], image["digest"], "{name}");
        let labels = &inspect["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            revision.as_str()
        );
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .unwrap()
                .starts_with("https://")
        );
        assert_eq!(labels["org.opencontainers.image.created"], first["created"]);
        let config: Value = serde_json::from_str(&run(
            Command::new("skopeo").args(["inspect", "--config", &transport])
        ))
        .unwrap();
        assert_eq!(config["config"]["User"], "65532:65532", "{name}");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!([format!("/usr/local/bin/{name}")])
        );
        // skopeo copies it (to a layout here; to a registry the same way).
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            &transport,
            &format!(
                "oci:{}:copied",
                tmp.path().join(format!("{name}-copy")).display()
            ),
        ]));

        // podman loads it under its name (into a store of this test's own).
        let store = tmp.path().join("podman");
        let loaded = run(Command::new("podman")
            .args(["--storage-driver", "vfs", "--root"])
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["load", "-i"])
            .arg(&archive));
        assert!(
            loaded.contains(&format!(
                "Loaded image: {}",
                image["reference"].as_str().unwrap()
            )),
            "{loaded}"
        );

        // Its root file system runs the binary as 65532, with nothing from the host; and has
        // no shell.
        let fs = unpack(&archive, &tmp.path().join(format!("{name}-fs")));
        let version = run(&mut in_image(
            &fs,
            &[&format!("/usr/local/bin/{name}"), "--version"],
        ));
        assert_eq!(
            version.trim(),
            format!("{name} {} (revision {revision})", env!("CARGO_PKG_VERSION"))
        );
        assert!(!fs.join("bin/sh").exists() && !fs.join("usr/bin/apt-get").exists());
        rootfs.insert(name.to_owned(), fs);
    }

    // The control plane in its image, the CLI in its own talking to it by name over TLS.
    let (port, admin) = (free_port(), free_port());
    let cp_fs = &rootfs["portcullis-control-plane"];
    let mut cp = Killed(
        in_image(
            cp_fs,
            &[
                "/usr/local/bin/portcullis-control-plane",
                "serve",
                "--data-dir",
                "/var/lib/portcullis/cp",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_livez(admin, "the control plane", &mut cp.0);
    let cli_fs = &rootfs["portcullis"];
    for file in ["tls/ca.crt", "admin.token"] {
        let to = cli_fs
            .join("tmp")
            .join(Path::new(file).file_name().unwrap());
        std::fs::copy(cp_fs.join("var/lib/portcullis/cp").join(file), &to).unwrap();
        run(Command::new("chown").arg("65532:65532").arg(&to));
    }
    let server = format!("https://localhost:{port}");
    let cli = |args: &[&str]| {
        let mut all = vec!["/usr/local/bin/portcullis", "--server", &server];
        all.extend(args);
        in_image(cli_fs, &all).output().unwrap()
    };
    let registered = cli(&[
        "--ca-file",
        "/tmp/ca.crt",
        "--token-file",
        "/tmp/admin.token",
        "cluster",
        "register",
        "images",
    ]);
    assert!(registered.status.success(), "{}", text(&registered));
    let token = String::from_utf8_lossy(&registered.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    // Without our CA the system roots are used, and they do not vouch for it.
    let untrusted = cli(&["--token-file", "/tmp/admin.token", "cluster", "list"]);
    assert!(!untrusted.status.success());
    assert!(
        text(&untrusted).to_lowercase().contains("certificate"),
        "{}",
        text(&untrusted)
    );

    // The agent in its image, standalone, against that control plane.
    let agent_fs = &rootfs["portcullis-agent"];
    std::fs::copy(
        cp_fs.join("var/lib/portcullis/cp/tls/ca.crt"),
        agent_fs.join("tmp/ca.crt"),
    )
    .unwrap();
    std::fs::write(agent_fs.join("tmp/token"), &token).unwrap();
    run(Command::new("chown")
        .arg("65532:65532")
        .arg(agent_fs.join("tmp/ca.crt"))
        .arg(agent_fs.join("tmp/token")));
    let (agent_admin, webhook) = (free_port(), free_port());
    let mut agent = Killed(
        in_image(
            agent_fs,
            &[
                "/usr/local/bin/portcullis-agent",
                "run",
                "--standalone",
                "--cluster",
                "images",
                "--control-plane",
                &server,
                "--token-file",
                "/tmp/token",
                "--ca-file",
                "/tmp/ca.crt",
                "--data-dir",
                "/var/lib/portcullis/agent",
                "--admin-listen",
                &format!("127.0.0.1:{agent_admin}"),
                "--webhook-listen",
                &format!("127.0.0.1:{webhook}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_livez(agent_admin, "the agent", &mut agent.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = cli(&[
            "--ca-file",
            "/tmp/ca.crt",
            "--token-file",
            "/tmp/admin.token",
            "cluster",
            "get",
            "images",
            "-o",
            "json",
        ]);
        assert!(list.status.success(), "{}", text(&list));
        let cluster: Value = serde_json::from_slice(&list.stdout).unwrap();
        if cluster["status"]["connected"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never connected: {cluster}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The charts name exactly the images written.
    let reference = |name: &str| {
        first["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()["reference"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let agent_chart = render_chart(
        "portcullis-agent",
        "portcullis-agent",
        "portcullis-system",
        None,
        &json!({"clusterName": "c", "controlPlane": {"address": "https://cp:8443"}}),
    );
    // (An existing admin token Secret: a generated one would differ between two renders.)
    let cp_values = json!({"adminToken": {"existingSecret": "admin-token"}});
    let cp_chart = render_chart(
        "portcullis-control-plane",
        "portcullis-control-plane",
        "portcullis-system",
        None,
        &cp_values,
    );
    // The packaged charts (for `helm push`) render the same objects as the directories.
    for (chart, rendered) in [
        ("portcullis-agent", &agent_chart),
        ("portcullis-control-plane", &cp_chart),
    ] {
        let package = tmp
            .path()
            .join("first")
            .join(format!("{chart}-{}.tgz", env!("CARGO_PKG_VERSION")));
        let values = if chart == "portcullis-agent" {
            json!({"clusterName": "c", "controlPlane": {"address": "https://cp:8443"}})
        } else {
            cp_values.clone()
        };
        let from_package = render_chart(
            package.to_str().unwrap(),
            chart,
            "portcullis-system",
            None,
            &values,
        );
        assert_eq!(
            &from_package, rendered,
            "{chart}: the package renders differently"
        );
    }
    for (chart, name) in [
        (&agent_chart, "portcullis-agent"),
        (&cp_chart, "portcullis-control-plane"),
    ] {
        let mut images = Vec::new();
        for object in chart.iter() {
            let spec = match object["kind"].as_str().unwrap() {
                "StatefulSet" | "Job" => &object["spec"]["template"]["spec"],
                _ => continue,
            };
            for container in spec["containers"].as_array().unwrap() {
                images.push(container["image"].as_str().unwrap().to_owned());
            }
        }
        assert!(!images.is_empty(), "{name}");
        assert!(
            images.iter().all(|i| *i == reference(name)),
            "{name}: {images:?} vs {}",
            reference(name)
        );
    }
}
