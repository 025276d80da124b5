//! `apex image` and `apex registry` end to end: the real CLI against a real registry
//! (Debian's docker-registry on loopback), images built offline and pushed with skopeo.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use apex_e2e::apex::{ApexHome, RunOutput};
use apex_e2e::images::{self, Compression, Hostile, Layout};
use apex_e2e::registry::{Registry, RegistryAuth};
use apex_e2e::skopeo;
use serde_json::Value;

/// Pushes `layout` (whose index names `tag`) to `reg` as `repo:tag`.
fn publish(reg: &Registry, layout: &Layout, repo: &str, tag: &str) -> String {
    let dest = format!("{}/{repo}:{tag}", reg.host());
    skopeo::push(layout, tag, &dest, reg.creds()).expect("skopeo push");
    dest
}

fn inspect(home: &ApexHome, name: &str) -> Value {
    let out = home.run(&["image", "inspect", name]);
    out.assert_ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("inspect prints JSON");
    v[0].clone()
}

/// Extracts the image's erofs rootfs into a temp dir with erofs-utils (independent of apex).
fn extract_rootfs(home: &ApexHome, name: &str) -> tempfile::TempDir {
    let img = inspect(home, name)["RootfsImage"]
        .as_str()
        .expect("rootfs image built")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("fsck.erofs")
        .arg(format!("--extract={}", dir.path().join("x").display()))
        .arg(&img)
        .output()
        .expect("fsck.erofs");
    assert!(
        out.status.success(),
        "fsck.erofs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn names(home: &ApexHome) -> Vec<String> {
    let out = home.run(&["image", "ls", "--format", "json"]);
    out.assert_ok();
    let v: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let mut n: Vec<String> = v
        .iter()
        .flat_map(|i| i["names"].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

fn count_blobs(home: &ApexHome) -> usize {
    fs::read_dir(home.path().join("content/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn pulls_gzip_zstd_and_plain_layers_and_builds_rootfs() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let home = ApexHome::new();
    for (c, tag) in [
        (Compression::Gzip, "gzip"),
        (Compression::Zstd, "zstd"),
        (Compression::None, "plain"),
    ] {
        let layout = images::busybox(&t.path().join(tag), tag, c).unwrap();
        let dest = publish(&reg, &layout, "busybox", tag);
        let out = home.run(&["image", "pull", &dest]);
        out.assert_ok();
        assert!(
            out.stdout.contains(&layout.manifest_digest),
            "pull output lacks digest: {}",
            out.stdout
        );
        let info = inspect(&home, &dest);
        assert_eq!(info["Digest"], layout.manifest_digest.as_str());
        assert_eq!(info["Id"], layout.config_digest.as_str());
        let root = extract_rootfs(&home, &dest);
        assert_eq!(
            fs::read(root.path().join("x/bin/busybox")).unwrap(),
            fs::read("/bin/busybox").unwrap(),
            "{tag}: busybox differs after unpack"
        );
        assert_eq!(
            fs::read_link(root.path().join("x/bin/sh")).unwrap(),
            Path::new("busybox")
        );
    }
    let host = reg.host();
    assert_eq!(
        names(&home),
        vec![
            format!("{host}/busybox:gzip"),
            format!("{host}/busybox:plain"),
            format!("{host}/busybox:zstd"),
        ]
    );
    // A second pull downloads nothing.
    let again = home.run(&["image", "pull", &format!("{host}/busybox:gzip")]);
    again.assert_ok();
    assert!(again.stdout.contains("0B downloaded"), "{}", again.stdout);
    // Table output has the docker columns.
    let table = home.run(&["image", "ls"]);
    table.assert_ok();
    assert!(table.stdout.starts_with("REPOSITORY"), "{}", table.stdout);
    assert!(table.stdout.contains(&format!("{host}/busybox")));
}

#[test]
fn pull_by_digest_and_familiar_names() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let layout = images::busybox(t.path(), "1.0", Compression::Gzip).unwrap();
    let dest = publish(&reg, &layout, "library/busybox", "1.0");
    let home = ApexHome::new();
    let by_digest = format!("{}/library/busybox@{}", reg.host(), layout.manifest_digest);
    home.run(&["image", "pull", &by_digest]).assert_ok();
    assert_eq!(names(&home), vec![by_digest.clone()]);
    // The image is reachable by ID prefix too.
    let id = &layout.config_digest["sha256:".len()..][..12];
    assert_eq!(
        inspect(&home, id)["Digest"],
        layout.manifest_digest.as_str()
    );
    // Pulling the tag adds a name to the same image.
    home.run(&["image", "pull", &dest]).assert_ok();
    let list: Vec<Value> =
        serde_json::from_str(&home.run(&["image", "ls", "--format", "json"]).stdout).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    // A wrong digest is refused before anything is stored.
    let bogus = format!("{}/library/busybox@sha256:{}", reg.host(), "0".repeat(64));
    let out = home.run(&["image", "pull", &bogus]);
    out.assert_failure();
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

#[test]
fn multiarch_index_selects_platform() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let layout = images::multiarch(t.path(), "v1").unwrap();
    let dest = publish(&reg, &layout, "multi", "v1");

    let home = ApexHome::new();
    home.run(&["image", "pull", &dest]).assert_ok();
    let info = inspect(&home, &dest);
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["IndexDigest"], layout.manifest_digest.as_str());
    let root = extract_rootfs(&home, &dest);
    assert_eq!(
        fs::read_to_string(root.path().join("x/etc/apex-arch"))
            .unwrap()
            .trim(),
        "amd64"
    );

    let arm = ApexHome::new();
    arm.run(&["image", "pull", "--platform", "linux/arm64", &dest])
        .assert_ok();
    assert_eq!(inspect(&arm, &dest)["Architecture"], "arm64");
    let root = extract_rootfs(&arm, &dest);
    assert_eq!(
        fs::read_to_string(root.path().join("x/etc/apex-arch"))
            .unwrap()
            .trim(),
        "arm64"
    );

    let none = ApexHome::new();
    let out = none.run(&["image", "pull", "--platform", "linux/riscv64", &dest]);
    out.assert_failure();
    assert!(
        out.stderr.contains("no image for platform linux/riscv64")
            && out.stderr.contains("linux/amd64")
            && out.stderr.contains("linux/arm64"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(names(&none).is_empty());
}

fn check_layered(root: &Path) {
    assert!(!root.join("c").exists(), "whiteout did not delete c");
    assert!(!root.join("b/old1").exists(), "opaque dir kept b/old1");
    assert!(!root.join("b/old2").exists(), "opaque dir kept b/old2");
    assert!(root.join("b/new").exists());
    assert_eq!(fs::read_to_string(root.join("a/file")).unwrap(), "world");
    // Layer 3 replaced a/file; the hardlink made in layer 2 keeps the old inode (containerd).
    assert_eq!(fs::read_to_string(root.join("a/hard")).unwrap(), "hello");
    assert_eq!(
        fs::read_link(root.join("a/sym")).unwrap(),
        Path::new("file")
    );
    assert_eq!(
        fs::read_link(root.join("a/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    let owned = fs::metadata(root.join("a/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    assert_eq!(owned.permissions().mode() & 0o7777, 0o640);
}

#[test]
fn layered_images_apply_whiteouts_links_and_ownership() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let oci = images::layered(&t.path().join("oci"), "l").unwrap();
    let docker = images::layered_docker(&t.path().join("docker"), "l").unwrap();
    let home = ApexHome::new();
    for (layout, repo) in [(&oci, "layered-oci"), (&docker, "layered-docker")] {
        let dest = publish(&reg, layout, repo, "l");
        home.run(&["image", "pull", &dest]).assert_ok();
        let root = extract_rootfs(&home, &dest);
        check_layered(&root.path().join("x"));
    }
    let info = inspect(&home, &format!("{}/layered-docker:l", reg.host()));
    assert_eq!(
        info["MediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn hostile_layers_never_write_outside_the_rootfs() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let home = ApexHome::new();
    for (i, kind) in Hostile::ALL.into_iter().enumerate() {
        let h = images::hostile(&t.path().join(format!("h{i}")), "x", kind).unwrap();
        let dest = publish(&reg, &h.layout, &format!("hostile{i}"), "x");
        let out = home.run(&["image", "pull", &dest]);
        assert!(
            !h.escaped(Path::new("/nonexistent")),
            "{kind:?} escaped to {}",
            h.escape_path.display()
        );
        // Rootfs images are named by their layer chain (apex_oci::rootfs::key).
        let chain: String = h
            .layout
            .layer_digests
            .iter()
            .map(|d| format!("{d}\n"))
            .collect();
        let key = images::sha256_digest(chain.as_bytes());
        let image = home
            .path()
            .join("rootfs")
            .join(format!("{}.erofs", key.trim_start_matches("sha256:")));
        match kind {
            // Lexical escapes are refused with a clear error and nothing is stored.
            Hostile::DotDot | Hostile::HardlinkEscape => {
                out.assert_failure();
                assert!(
                    out.stderr.contains("hostile layer") && out.stderr.contains("escapes"),
                    "{kind:?}: {}",
                    out.stderr
                );
                assert!(!image.exists(), "{kind:?}: a rootfs image was published");
            }
            // Absolute names and symlink tricks resolve inside the rootfs, like a chroot.
            _ => {
                out.assert_ok();
                assert!(
                    image.exists(),
                    "{kind:?}: no rootfs image at {}",
                    image.display()
                );
                let root = extract_rootfs(&home, &dest);
                let inside = root
                    .path()
                    .join("x")
                    .join(h.escape_path.strip_prefix("/").unwrap());
                let landed = match kind {
                    Hostile::SymlinkEscape => inside.join("pwned"),
                    _ => inside,
                };
                assert!(
                    landed.exists(),
                    "{kind:?}: expected the write inside the rootfs at {}",
                    landed.display()
                );
            }
        }
        assert!(!h.escape_path.exists() || kind == Hostile::HardlinkEscape);
    }
}

#[test]
fn basic_auth_login_pull_push_logout() {
    auth_flow(RegistryAuth::basic("alice", "s3cret"));
}

#[test]
fn token_auth_login_pull_push_logout() {
    auth_flow(RegistryAuth::token("bob", "t0ken-pass"));
}

fn auth_flow(auth: RegistryAuth) {
    let reg = Registry::start(auth).unwrap();
    let (user, pass) = reg.creds().unwrap();
    let (user, pass) = (user.to_string(), pass.to_string());
    let t = tempfile::tempdir().unwrap();
    let layout = images::busybox(t.path(), "v1", Compression::Gzip).unwrap();
    let dest = publish(&reg, &layout, "private/bb", "v1");
    let home = ApexHome::new();
    let host = reg.host();

    let out = home.run(&["image", "pull", &dest]);
    out.assert_failure();
    assert!(out.stderr.contains("denied access"), "{}", out.stderr);

    let out = home.run(&["registry", "login", &host, "-u", &user, "-p", "wrong"]);
    out.assert_failure();
    assert!(out.stderr.contains("denied access"), "{}", out.stderr);
    assert!(!home.path().join("auth.json").exists());

    let mut cmd = home.cmd();
    cmd.args(["registry", "login", &host, "-u", &user, "--password-stdin"]);
    cmd.stdin(std::process::Stdio::piped());
    cmd.stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{pass}").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "login: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mode = fs::metadata(home.path().join("auth.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    home.run(&["image", "pull", &dest]).assert_ok();
    // Push under a new name, then cross-check with skopeo using the same credentials.
    let pushed = format!("{host}/private/copy:v2");
    home.run(&["image", "tag", &dest, &pushed]).assert_ok();
    home.run(&["image", "push", &pushed]).assert_ok();
    let raw = skopeo::inspect_raw(&pushed, reg.creds()).unwrap();
    assert_eq!(
        images::sha256_digest(raw.as_bytes()),
        layout.manifest_digest
    );

    home.run(&["registry", "logout", &host]).assert_ok();
    let fresh = format!("{host}/private/copy:v2");
    home.run(&["image", "rm", &fresh]).assert_ok();
    let out = home.run(&["image", "pull", &fresh]);
    out.assert_failure();
    assert!(out.stderr.contains("denied access"), "{}", out.stderr);
}

#[test]
fn push_is_cross_checked_by_skopeo() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let layout = images::layered(&t.path().join("src"), "l").unwrap();
    let src = publish(&reg, &layout, "src", "l");
    let home = ApexHome::new();
    home.run(&["image", "pull", &src]).assert_ok();
    let dst = format!("{}/team/copy:1", reg.host());
    home.run(&["image", "tag", &src, &dst]).assert_ok();
    let out = home.run(&["image", "push", &dst]);
    out.assert_ok();
    // skopeo reads back the same manifest bytes and can copy every blob.
    let raw = skopeo::inspect_raw(&dst, None).unwrap();
    assert_eq!(
        images::sha256_digest(raw.as_bytes()),
        layout.manifest_digest
    );
    let back = t.path().join("back");
    skopeo::pull_to_oci(&dst, &back, None).unwrap();
    for d in &layout.layer_digests {
        images::read_blob(&back, d).expect("layer pulled back by skopeo verifies");
    }
    // Pushing again uploads nothing new and still succeeds.
    home.run(&["image", "push", &dst]).assert_ok();
}

/// A registry with busybox (`a:1`) and the layered image (`b:1`), both pulled into a home.
struct TwoImages {
    reg: Registry,
    t: tempfile::TempDir,
    a: Layout,
    b: Layout,
    da: String,
    db: String,
    home: ApexHome,
}

fn two_images() -> TwoImages {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let a = images::busybox(&t.path().join("a"), "1", Compression::Gzip).unwrap();
    let b = images::layered(&t.path().join("b"), "1").unwrap();
    let da = publish(&reg, &a, "a", "1");
    let db = publish(&reg, &b, "b", "1");
    let home = ApexHome::new();
    home.run(&["image", "pull", &da]).assert_ok();
    home.run(&["image", "pull", &db]).assert_ok();
    TwoImages {
        reg,
        t,
        a,
        b,
        da,
        db,
        home,
    }
}

#[test]
fn save_and_load_roundtrip_and_corrupt_archive() {
    let TwoImages {
        reg: _reg,
        t,
        a: _,
        b,
        da,
        db,
        home,
    } = two_images();
    let archive = t.path().join("images.tar");
    home.run(&["image", "save", "-o", archive.to_str().unwrap(), &da, &db])
        .assert_ok();

    let other = ApexHome::new();
    let out = other.run(&["image", "load", "-i", archive.to_str().unwrap()]);
    out.assert_ok();
    assert!(
        out.stdout.contains(&format!("Loaded image: {da}")),
        "{}",
        out.stdout
    );
    assert_eq!(names(&other), names(&home));
    assert_eq!(inspect(&other, &db)["Digest"], b.manifest_digest.as_str());

    // Flip one byte inside the archive's layer data: load must fail and store nothing.
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0xff;
    let bad = t.path().join("bad.tar");
    fs::write(&bad, &bytes).unwrap();
    let third = ApexHome::new();
    let out = third.run(&["image", "load", "-i", bad.to_str().unwrap()]);
    out.assert_failure();
    assert!(names(&third).is_empty());

    let out = third.run(&["image", "load", "-i", "/etc/hostname"]);
    out.assert_failure();
}

#[test]
fn tag_rm_and_prune_reclaim_space() {
    let TwoImages {
        reg: _reg,
        t: _t,
        a,
        b: _,
        da,
        db: _,
        home,
    } = two_images();
    home.run(&["image", "tag", &da, "mine:latest"]).assert_ok();
    assert!(names(&home).contains(&"mine:latest".to_string()));

    // Two names: removing by ID needs --force; by name only untags.
    let id = &a.config_digest["sha256:".len()..][..12];
    let out = home.run(&["image", "rm", id]);
    out.assert_failure();
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    let out = home.run(&["image", "rm", "mine"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("Untagged: mine:latest"),
        "{}",
        out.stdout
    );
    assert!(inspect(&home, &da)["Digest"].is_string());

    let blobs_before = count_blobs(&home);
    let out = home.run(&["image", "rm", &da]);
    out.assert_ok();
    assert!(out.stdout.contains("Deleted: sha256:"), "{}", out.stdout);
    assert!(count_blobs(&home) < blobs_before);

    let out = home.run(&["image", "prune", "-a"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("Total reclaimed space"),
        "{}",
        out.stdout
    );
    assert!(names(&home).is_empty());
    assert_eq!(count_blobs(&home), 0);
    let erofs = fs::read_dir(home.path().join("rootfs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".erofs")
        })
        .count();
    assert_eq!(erofs, 0);

    let out = home.run(&["image", "rm", "nothing-here"]);
    out.assert_failure();
    assert!(out.stderr.contains("no such image"), "{}", out.stderr);
}

fn registry_blob_path(reg: &Registry, digest: &str) -> PathBuf {
    let hex = &digest["sha256:".len()..];
    reg.storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[test]
fn clear_errors_for_bad_input() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let host = reg.host();
    let t = tempfile::tempdir().unwrap();
    let home = ApexHome::new();
    let one_line = |o: &RunOutput, want: &str| {
        o.assert_failure();
        assert!(o.stderr.contains(want), "want {want:?}: {}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    };

    // Unknown repository and unknown tag.
    one_line(
        &home.run(&["image", "pull", &format!("{host}/nope:latest")]),
        "not found",
    );
    let layout = images::busybox(&t.path().join("bb"), "x", Compression::Gzip).unwrap();
    publish(&reg, &layout, "bb", "x");
    one_line(
        &home.run(&["image", "pull", &format!("{host}/bb:missing")]),
        "not found",
    );
    // Unreachable registry (nothing listens on port 9 on loopback).
    one_line(
        &home.run(&["image", "pull", "127.0.0.1:9/bb:x"]),
        "cannot reach registry 127.0.0.1:9",
    );
    // Invalid reference.
    one_line(
        &home.run(&["image", "pull", "Bad/Name"]),
        "invalid image reference",
    );

    // Unsupported layer media type.
    let odd = images::busybox(&t.path().join("odd"), "odd", Compression::Gzip).unwrap();
    images::rewrite_manifest(&odd, |m| {
        m["layers"][0]["mediaType"] = "application/vnd.example.unknown".into()
    })
    .unwrap();
    publish(&reg, &odd, "odd", "odd");
    one_line(
        &home.run(&["image", "pull", &format!("{host}/odd:odd")]),
        "unsupported media type application/vnd.example.unknown",
    );

    // Digest mismatch: corrupt the layer inside the registry's storage.
    let bad = images::busybox(&t.path().join("bad"), "bad", Compression::Gzip).unwrap();
    publish(&reg, &bad, "bad", "bad");
    let blob = registry_blob_path(&reg, &bad.layer_digests[0]);
    let mut data = fs::read(&blob).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    fs::write(&blob, &data).unwrap();
    let out = home.run(&["image", "pull", &format!("{host}/bad:bad")]);
    one_line(&out, "digest mismatch");
    assert!(!names(&home).iter().any(|n| n.contains("bad")));
    assert!(!home
        .path()
        .join("content/blobs/sha256")
        .join(&bad.layer_digests[0]["sha256:".len()..])
        .exists());

    // Unknown local image.
    one_line(&home.run(&["image", "inspect", "ghost:1"]), "no such image");
}

/// An image with one large, incompressible plain-tar layer.
fn big_layout(dir: &Path, mib: usize) -> Layout {
    let data: Vec<u8> = {
        // xorshift: deterministic, incompressible, fast.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        (0..mib * 1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("big.bin"), &data).unwrap();
    let base = images::busybox(dir, "big", Compression::None).unwrap();
    // Append a second plain layer holding big.bin.
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_path_with_name(src.path().join("big.bin"), "big.bin")
        .unwrap();
    let layer = tar.into_inner().unwrap();
    let ld = images::sha256_digest(&layer);
    fs::write(
        dir.join("blobs/sha256").join(&ld["sha256:".len()..]),
        &layer,
    )
    .unwrap();
    let cfg_raw = base.blob(&base.config_digest).unwrap();
    let mut cfg: Value = serde_json::from_slice(&cfg_raw).unwrap();
    cfg["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(ld.clone().into());
    let cfg_new = serde_json::to_vec(&cfg).unwrap();
    let cd = images::sha256_digest(&cfg_new);
    fs::write(
        dir.join("blobs/sha256").join(&cd["sha256:".len()..]),
        &cfg_new,
    )
    .unwrap();
    let md = images::rewrite_manifest(&base, |m| {
        m["config"]["digest"] = cd.clone().into();
        m["config"]["size"] = cfg_new.len().into();
        m["layers"].as_array_mut().unwrap().push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": ld,
            "size": layer.len(),
        }));
    })
    .unwrap();
    let mut layer_digests = base.layer_digests.clone();
    layer_digests.push(ld);
    Layout {
        dir: dir.to_path_buf(),
        manifest_digest: md,
        config_digest: cd,
        layer_digests,
        platforms: vec![],
    }
}

#[test]
fn interrupted_pull_resumes_and_kill_leaves_no_corrupt_state() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let t = tempfile::tempdir().unwrap();
    let layout = big_layout(&t.path().join("big"), 64);
    let dest = publish(&reg, &layout, "big", "big");
    let big = layout.layer_digests.last().unwrap().clone();
    let big_blob = layout.blob(&big).unwrap();

    // Resume: seed half of the big layer as a partial download, as a killed pull leaves it.
    let home = ApexHome::new();
    let ingest = home.path().join("content/ingest");
    fs::create_dir_all(&ingest).unwrap();
    let half = big_blob.len() / 2;
    fs::write(
        ingest.join(format!("{}.partial", &big["sha256:".len()..])),
        &big_blob[..half],
    )
    .unwrap();
    let out = home.run(&["image", "pull", "--no-unpack", &dest]);
    out.assert_ok();
    let total: u64 = layout
        .layer_digests
        .iter()
        .chain([&layout.config_digest])
        .map(|d| layout.blob(d).unwrap().len() as u64)
        .sum();
    // Only the missing half (plus the small blobs) crossed the wire.
    let downloaded = out
        .stdout
        .split(" downloaded")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .unwrap()
        .to_string();
    let mb: f64 = downloaded.trim_end_matches("MB").parse().unwrap();
    assert!(
        downloaded.ends_with("MB") && mb * 1e6 < (total as f64) * 0.75,
        "resumed pull downloaded {downloaded} of {total} bytes: {}",
        out.stdout
    );

    // A partial file that is already complete (killed between the last write and the
    // commit) is verified and published without a range request.
    let home = ApexHome::new();
    let ingest = home.path().join("content/ingest");
    fs::create_dir_all(&ingest).unwrap();
    fs::write(
        ingest.join(format!("{}.partial", &big["sha256:".len()..])),
        &big_blob,
    )
    .unwrap();
    home.run(&["image", "pull", "--no-unpack", &dest])
        .assert_ok();

    // kill -9 in the middle of a pull: no visible blob for the big layer, no image, and
    // the next pull completes.
    let home = ApexHome::new();
    let mut child = home
        .cmd()
        .args(["image", "pull", "--no-unpack", &dest])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = home
        .path()
        .join("content/ingest")
        .join(format!("{}.partial", &big["sha256:".len()..]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if fs::metadata(&partial).map(|m| m.len() > 0).unwrap_or(false) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let blob = home
        .path()
        .join("content/blobs/sha256")
        .join(&big["sha256:".len()..]);
    if !status.success() {
        if blob.exists() {
            // Published blobs are always complete and verified.
            assert_eq!(fs::read(&blob).unwrap(), big_blob);
        }
        assert!(names(&home).is_empty(), "killed pull left an image record");
    }
    home.run(&["image", "pull", &dest]).assert_ok();
    assert_eq!(fs::read(&blob).unwrap(), big_blob);
    assert_eq!(names(&home), vec![dest]);
}
