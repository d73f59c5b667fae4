//! The operator image that `hack/image/build.sh` (`make image`) assembles without a container
//! engine: an OCI image layout whose blobs match their digests, whose config runs the entrypoint as
//! 65532:65532, and whose one layer holds a static binary and nothing to run it with (no shell, no
//! libc). The entrypoint runs from the unpacked root filesystem (chroot, as the config's user) the
//! way a container runtime would start it: `--help`, then a start against the local apiserver.

mod common;

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

const ENTRYPOINT: &str = "/usr/local/bin/cross-account-operator";

fn layout() -> PathBuf {
    let dir = std::env::var_os("IMAGE_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image/oci"));
    assert!(
        dir.join("index.json").is_file(),
        "no OCI image layout at {}: run `make image` (hack/image/build.sh) first",
        dir.display()
    );
    dir
}

/// Reads a blob by its descriptor, checking its size and digest as a registry or runtime would.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {digest} is not sha256"));
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob");
    assert_eq!(
        Some(bytes.len() as u64),
        descriptor["size"].as_u64(),
        "size of {digest}"
    );
    assert_eq!(
        format!("{:x}", Sha256::digest(&bytes)),
        hex,
        "content of {digest}"
    );
    bytes
}

struct Image {
    config: Value,
    layers: Vec<Value>,
}

fn image(layout: &Path) -> Image {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let tag = env!("CARGO_PKG_VERSION");
    let manifests = index["manifests"].as_array().expect("index manifests");
    let descriptor = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}"));
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest: Value = serde_json::from_slice(&blob(layout, descriptor)).unwrap();
    let config: Value = serde_json::from_slice(&blob(layout, &manifest["config"])).unwrap();
    Image {
        config,
        layers: manifest["layers"].as_array().expect("layers").clone(),
    }
}

/// The layers unpacked in order into a fresh directory, as a runtime's snapshotter would (the
/// image has one layer and no whiteouts; the test checks both).
fn unpack(layout: &Path, image: &Image) -> PathBuf {
    let root = std::env::temp_dir().join(common::unique("image-rootfs"));
    fs::create_dir_all(&root).unwrap();
    for layer in &image.layers {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let bytes = blob(layout, layer);
        let tar = root.join(".layer.tar.gz");
        fs::write(&tar, bytes).unwrap();
        let out = Command::new("tar")
            .args(["--same-owner", "--numeric-owner", "-xzpf"])
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_file(&tar).unwrap();
    }
    root
}

/// Whether an ELF file asks for a program interpreter (a dynamic loader): PT_INTERP among its
/// program headers. A static binary has none.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP)
}

/// The config's `User` as chroot's `--userspec`.
fn userspec(image: &Image) -> String {
    image.config["config"]["User"]
        .as_str()
        .expect("config User")
        .to_owned()
}

/// A command that runs `args` in the unpacked root filesystem as the image's user, with only the
/// image's environment: what a runtime does, without namespaces.
fn in_image(root: &Path, image: &Image, args: &[&str]) -> Command {
    // Found on the test's PATH: the command's own PATH is the image's.
    let chroot = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chroot"))
        .find(|path| path.is_file())
        .expect("chroot (coreutils) on PATH");
    let mut command = Command::new(chroot);
    command
        .arg(format!("--userspec={}", userspec(image)))
        .arg(root)
        .args(
            image.config["config"]["Entrypoint"]
                .as_array()
                .expect("Entrypoint")
                .iter()
                .map(|a| a.as_str().unwrap()),
        )
        .args(args)
        .env_clear();
    for pair in image.config["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (name, value) = pair.as_str().unwrap().split_once('=').unwrap();
        command.env(name, value);
    }
    command
}

fn require_root() {
    // chroot(2) needs CAP_SYS_CHROOT; CI and the local environment run as root.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the image test starts the entrypoint with chroot, which needs root"
    );
}

#[test]
fn the_layout_is_a_valid_oci_image_for_the_non_root_user() {
    let layout = layout();
    assert_eq!(
        serde_json::from_slice::<Value>(&fs::read(layout.join("oci-layout")).unwrap()).unwrap()["imageLayoutVersion"],
        "1.0.0"
    );
    let image = image(&layout);
    let config = &image.config;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([ENTRYPOINT])
    );
    assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        labels["org.opencontainers.image.title"],
        "cross-account-operator"
    );
    assert_eq!(
        image.layers.len(),
        config["rootfs"]["diff_ids"].as_array().unwrap().len()
    );

    let root = unpack(&layout, &image);
    let binary = root.join(ENTRYPOINT.trim_start_matches('/'));
    let meta = fs::metadata(&binary).expect("the entrypoint is in the image");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "the binary belongs to root"
    );
    assert!(
        !has_interpreter(&fs::read(&binary).unwrap()),
        "the entrypoint is dynamically linked; the image has no libc"
    );
    // Nothing to run but the binary: no shell, no loader, no package manager.
    for absent in ["bin/sh", "lib", "lib64", "usr/bin", "usr/lib"] {
        assert!(!root.join(absent).exists(), "the image has /{absent}");
    }
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let home = fs::metadata(root.join("home/nonroot")).unwrap();
    assert_eq!((home.uid(), home.gid()), (65532, 65532));
    let tmp = fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let certs = fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(certs.contains("BEGIN CERTIFICATE"));
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn the_entrypoint_runs_as_65532_and_prints_its_help() {
    require_root();
    let layout = layout();
    let image = image(&layout);
    let root = unpack(&layout, &image);
    let out = in_image(&root, &image, &["--help"]).output().unwrap();
    let _ = fs::remove_dir_all(&root);
    assert!(
        out.status.success(),
        "--help in the image exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--cluster-name"), "{help}");
}

#[tokio::test]
async fn the_image_starts_against_the_apiserver_as_65532() {
    require_root();
    let kubeconfig = common::env("KUBECONFIG");
    let layout = layout();
    let image = image(&layout);
    let root = unpack(&layout, &image);
    // The kubeconfig in the image's /tmp, readable by the image's user only, as a mounted
    // ServiceAccount token would be.
    let inside = root.join("tmp/kubeconfig");
    fs::copy(&kubeconfig, &inside).unwrap();
    std::os::unix::fs::chown(&inside, Some(65532), Some(65532)).unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o600)).unwrap();

    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    // Its own namespace, which nothing else uses: this operator must not reconcile the roles of
    // the other tests.
    let namespace = common::unique("image");
    let mut command = in_image(
        &root,
        &image,
        &[
            "--cluster-name",
            "image-test",
            "--http-addr",
            &addr,
            "--watch-namespaces",
            &namespace,
        ],
    );
    // The AWS settings reach it as a Deployment's env would bring them.
    command.envs(std::env::vars().filter(|(name, _)| name.starts_with("AWS_")));
    command
        .env("KUBECONFIG", "/tmp/kubeconfig")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the image's entrypoint");
    let pid = child.id();
    let ready = common::wait_for_readyz(&mut child, &format!("http://{addr}")).await;
    assert_eq!(ready, "ok");

    // The process that answers is the operator itself (chroot execs it), as the image's user.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "{uid_line}"
    );
    assert_eq!(
        gid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "{gid_line}"
    );
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.starts_with(&root),
        "{} runs outside the image",
        exe.display()
    );

    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let _ = fs::remove_dir_all(&root);
    assert!(
        out.status.success(),
        "exit status {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
