//! Tests of the e2e harness itself: real registries (no auth, basic, token), the image
//! builders, skopeo round trips, the hostile layers, the CLI helpers and `apex-fixtures`.
//! Needs docker-registry, skopeo, htpasswd and busybox-static (scripts/install-deps.sh).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use apex_e2e::apex::{apex_bin, ApexHome};
use apex_e2e::images::{self, media, sha256_digest, Compression, Hostile, Layout, REF_NAME};
use apex_e2e::registry::{http_get, Registry, RegistryAuth, TOKEN_ISSUER, TOKEN_SERVICE};
use apex_e2e::skopeo;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use tar::EntryType;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("apex-e2e-test-")
        .tempdir()
        .unwrap()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn blob_json(layout: &Layout, digest: &str) -> Value {
    serde_json::from_slice(&layout.blob(digest).unwrap()).unwrap()
}

/// Pushes and reads back: the registry serves exactly the bytes we built.
fn push_and_check(reg: &Registry, layout: &Layout, tag: &str, repo: &str) -> String {
    let dest = format!("{}/{repo}:{tag}", reg.host());
    skopeo::push(layout, tag, &dest, reg.creds()).unwrap();
    let raw = skopeo::inspect_raw(&dest, reg.creds()).unwrap();
    assert_eq!(
        sha256_digest(raw.as_bytes()),
        layout.manifest_digest,
        "served manifest: {raw}"
    );
    for digest in &layout.layer_digests {
        assert!(
            reg.blob_path(digest).is_file(),
            "layer {digest} not in registry storage"
        );
    }
    raw
}

#[test]
fn registry_answers_and_cleans_up_on_drop() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let host = reg.host();
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    let resp = http_get(&host, "/v2/", None).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let storage = reg.storage_dir().to_path_buf();
    assert!(storage.is_dir());
    let pid = reg.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(reg);
    assert!(
        !storage.exists(),
        "storage {} left behind",
        storage.display()
    );
    assert!(
        http_get(&host, "/v2/", None).is_err(),
        "registry still answering on {host}"
    );
    // Reaped, not a zombie: /proc/PID is gone (or the pid was reused by a non-registry).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("docker-registry"));
}

#[test]
fn two_registries_run_side_by_side() {
    let a = Registry::start(RegistryAuth::None).unwrap();
    let b = Registry::start(RegistryAuth::None).unwrap();
    assert_ne!(a.host(), b.host());
    assert_ne!(a.storage_dir(), b.storage_dir());
}

#[test]
fn push_busybox_gzip_and_zstd() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    for (compression, tag, media_type) in [
        (Compression::Gzip, "gzip", media::OCI_LAYER_GZIP),
        (Compression::Zstd, "zstd", media::OCI_LAYER_ZSTD),
    ] {
        let dir = tmp();
        let layout = images::busybox(dir.path(), tag, compression).unwrap();
        let raw = push_and_check(&reg, &layout, tag, "apex/busybox");
        let manifest = json(&raw);
        assert_eq!(manifest["layers"][0]["mediaType"], media_type);
        assert_eq!(manifest["config"]["digest"], layout.config_digest.as_str());
        assert!(reg.blob_path(&layout.config_digest).is_file());
    }
}

#[test]
fn push_multiarch_index() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let dir = tmp();
    let layout = images::multiarch(dir.path(), "v1").unwrap();
    let raw = push_and_check(&reg, &layout, "v1", "multi");
    let index = json(&raw);
    assert_eq!(index["mediaType"], media::OCI_INDEX);
    let served: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(served, layout.platforms);
    let platforms: Vec<&str> = layout.platforms.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for (_, digest) in &layout.platforms {
        let src = format!("{}/multi@{digest}", reg.host());
        let raw = skopeo::inspect_raw(&src, None).unwrap();
        assert_eq!(&sha256_digest(raw.as_bytes()), digest);
    }
}

#[test]
fn push_layered_oci_and_docker() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let dir = tmp();
    let oci = images::layered(dir.path(), "oci").unwrap();
    let docker = images::layered_docker(dir.path(), "docker").unwrap();
    assert_ne!(oci.manifest_digest, docker.manifest_digest);
    // Same content: same compressed layers, different media types.
    assert_eq!(oci.layer_digests, docker.layer_digests);
    let raw = push_and_check(&reg, &oci, "oci", "layered");
    assert_eq!(json(&raw)["mediaType"], media::OCI_MANIFEST);
    let raw = push_and_check(&reg, &docker, "docker", "layered");
    let m = json(&raw);
    assert_eq!(m["mediaType"], media::DOCKER_MANIFEST);
    assert_eq!(m["config"]["mediaType"], media::DOCKER_CONFIG);
    assert_eq!(m["layers"][1]["mediaType"], media::DOCKER_LAYER_GZIP);
}

#[test]
fn pull_round_trip_keeps_digests() {
    let reg = Registry::start(RegistryAuth::None).unwrap();
    let dir = tmp();
    let layout = images::busybox(dir.path(), "rt", Compression::Gzip).unwrap();
    push_and_check(&reg, &layout, "rt", "roundtrip");
    let out = tmp();
    skopeo::pull_to_oci(&format!("{}/roundtrip:rt", reg.host()), out.path(), None).unwrap();
    let index = json(&std::fs::read_to_string(out.path().join("index.json")).unwrap());
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"][REF_NAME], "rt");
    assert_eq!(entry["digest"], layout.manifest_digest.as_str());
    assert!(out
        .path()
        .join("blobs/sha256")
        .join(&layout.layer_digests[0][7..])
        .is_file());
}

#[test]
fn basic_auth_registry() {
    let reg = Registry::start(RegistryAuth::basic("alice", "s3cret")).unwrap();
    assert_eq!(reg.creds(), Some(("alice", "s3cret")));
    assert_eq!(http_get(&reg.host(), "/v2/", None).unwrap().status, 401);
    assert_eq!(
        http_get(&reg.host(), "/v2/", Some(("alice", "s3cret")))
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http_get(&reg.host(), "/v2/", Some(("alice", "nope")))
            .unwrap()
            .status,
        401
    );

    let dir = tmp();
    let layout = images::busybox(dir.path(), "b", Compression::Gzip).unwrap();
    push_and_check(&reg, &layout, "b", "private/busybox");

    let dest = format!("{}/private/busybox:wrong", reg.host());
    let err = skopeo::push(&layout, "b", &dest, Some(("alice", "nope"))).unwrap_err();
    assert!(format!("{err:#}").contains("unauthorized"), "{err:#}");
    assert!(skopeo::push(&layout, "b", &dest, None).is_err());
    assert!(skopeo::inspect_raw(&format!("{}/private/busybox:b", reg.host()), None).is_err());
}

fn jwt_part(jwt: &str, i: usize) -> Value {
    let part = jwt.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn token_auth_registry() {
    let reg = Registry::start(RegistryAuth::token("bob", "hunter2")).unwrap();
    let realm = reg.token_realm().unwrap().to_string();
    let challenge = http_get(&reg.host(), "/v2/", None).unwrap();
    assert_eq!(challenge.status, 401);
    let www = challenge.header("WWW-Authenticate").unwrap();
    assert!(www.starts_with("Bearer ") && www.contains(&realm), "{www}");

    // The token server itself.
    let token_host = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token");
    let query =
        format!("/token?service={TOKEN_SERVICE}&scope=repository%3Asecret%2Fbb%3Apull%2Cpush");
    assert_eq!(http_get(token_host, &query, None).unwrap().status, 401);
    assert_eq!(
        http_get(token_host, &query, Some(("bob", "wrong")))
            .unwrap()
            .status,
        401
    );
    let ok = http_get(token_host, &query, Some(("bob", "hunter2"))).unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    let body = json(&ok.body);
    assert_eq!(body["expires_in"], 300);
    let jwt = body["token"].as_str().unwrap();
    assert_eq!(body["access_token"], jwt);
    let header = jwt_part(jwt, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["x5c"].as_array().unwrap().len(), 1);
    let claims = jwt_part(jwt, 1);
    assert_eq!(claims["iss"], TOKEN_ISSUER);
    assert_eq!(claims["aud"], TOKEN_SERVICE);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "secret/bb", "actions": ["pull", "push"]}])
    );
    // The registry accepts the token (so signature, x5c chain and claims check out).
    let mut v2 = std::net::TcpStream::connect(reg.host()).unwrap();
    use std::io::{Read, Write};
    write!(
        v2,
        "GET /v2/ HTTP/1.0\r\nAuthorization: Bearer {jwt}\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    v2.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}\n{}",
        reg.log()
    );

    let dir = tmp();
    let layout = images::busybox(dir.path(), "t", Compression::Zstd).unwrap();
    push_and_check(&reg, &layout, "t", "secret/bb");
    let dest = format!("{}/secret/bb:wrong", reg.host());
    assert!(skopeo::push(&layout, "t", &dest, Some(("bob", "wrong"))).is_err());
    assert!(skopeo::push(&layout, "t", &dest, None).is_err());
    assert!(skopeo::inspect_raw(&format!("{}/secret/bb:t", reg.host()), None).is_err());
}

/// Layouts are self-consistent: index.json → manifest → config, diff_ids match layers.
fn check_image(layout: &Layout, manifest_digest: &str) {
    let manifest = blob_json(layout, manifest_digest);
    let config = blob_json(layout, manifest["config"]["digest"].as_str().unwrap());
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let blob = layout.blob(layer["digest"].as_str().unwrap()).unwrap();
        assert_eq!(layer["size"], blob.len());
        assert_eq!(
            sha256_digest(&images::decompress(&blob).unwrap()),
            diff_id.as_str().unwrap()
        );
    }
    assert_eq!(config["os"], "linux");
}

fn index_entry(layout: &Layout, tag: &str) -> Value {
    let index = json(&std::fs::read_to_string(layout.dir.join("index.json")).unwrap());
    assert!(layout.dir.join("oci-layout").is_file());
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"][REF_NAME] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .clone()
}

#[test]
fn layouts_are_consistent_and_deterministic() {
    let dir = tmp();
    let host_busybox = std::fs::read(images::HOST_BUSYBOX).unwrap();
    for (c, tag) in [
        (Compression::Gzip, "g"),
        (Compression::Zstd, "z"),
        (Compression::None, "n"),
    ] {
        let layout = images::busybox(dir.path(), tag, c).unwrap();
        let entry = index_entry(&layout, tag);
        assert_eq!(entry["digest"], layout.manifest_digest.as_str());
        check_image(&layout, &layout.manifest_digest);
        let manifest = blob_json(&layout, &layout.manifest_digest);
        assert_eq!(manifest["layers"][0]["mediaType"], c.media_type());
        let config = blob_json(&layout, &layout.config_digest);
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        let entries = layout.layer_entries(&layout.layer_digests[0]).unwrap();
        let get = |p: &str| {
            entries
                .iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("no {p}"))
        };
        assert_eq!(get("bin/busybox").data, host_busybox);
        assert_eq!(get("bin/sh").link.as_deref(), Some("busybox"));
        assert_eq!(get("tmp/").mode, 0o1777);
        assert!(String::from_utf8_lossy(&get("etc/passwd").data).contains("apex:x:1000:1000:"));
        // Deterministic: building again gives the same digest.
        let again = images::busybox(dir.path(), tag, c).unwrap();
        assert_eq!(again, layout);
    }
    // All three tags are kept in one index.json.
    let index = json(&std::fs::read_to_string(dir.path().join("index.json")).unwrap());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);

    let multi = images::multiarch(dir.path(), "multi").unwrap();
    assert_eq!(index_entry(&multi, "multi")["mediaType"], media::OCI_INDEX);
    for (platform, digest) in &multi.platforms {
        check_image(&multi, digest);
        let manifest = blob_json(&multi, digest);
        let last = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].clone();
        let entries = multi.layer_entries(last.as_str().unwrap()).unwrap();
        let arch = entries.iter().find(|e| e.path == "etc/apex-arch").unwrap();
        assert_eq!(
            format!("linux/{}", String::from_utf8_lossy(&arch.data).trim()),
            *platform
        );
    }
}

#[test]
fn layered_layers_have_the_unpack_cases() {
    let dir = tmp();
    let layout = images::layered(dir.path(), "l").unwrap();
    check_image(&layout, &layout.manifest_digest);
    assert_eq!(layout.layer_digests.len(), 3);
    let l: Vec<_> = layout
        .layer_digests
        .iter()
        .map(|d| layout.layer_entries(d).unwrap())
        .collect();
    let find = |i: usize, p: &str| {
        l[i].iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("no {p} in layer {}", i + 1))
            .clone()
    };
    assert_eq!(find(0, "a/file").data, b"hello");
    let owned = find(0, "a/owned");
    assert_eq!((owned.uid, owned.gid, owned.mode), (1000, 1000, 0o640));
    assert_eq!(find(0, "a/setuid").mode, 0o4755);
    let x = find(0, "a/xattr");
    assert!(
        x.pax
            .contains(&("SCHILY.xattr.user.apex".to_string(), b"test".to_vec())),
        "{:?}",
        x.pax
    );
    assert!(l[0].iter().any(|e| e.path == "c"));
    assert_eq!(find(1, ".wh.c").kind, EntryType::Regular);
    assert_eq!(find(1, "b/.wh..wh..opq").kind, EntryType::Regular);
    let hard = find(1, "a/hard");
    assert_eq!(
        (hard.kind, hard.link.as_deref()),
        (EntryType::Link, Some("a/file"))
    );
    let sym = find(1, "a/sym");
    assert_eq!(
        (sym.kind, sym.link.as_deref()),
        (EntryType::Symlink, Some("file"))
    );
    assert_eq!(find(1, "a/abs").link.as_deref(), Some("/etc/passwd"));
    assert_eq!(find(2, "a/file").data, b"world");
}

#[test]
fn hostile_layers_have_the_raw_entries() {
    let dir = tmp();
    let up = "../".repeat(images::HOSTILE_DEPTH);
    let empty_rootfs = tmp();
    let mut escape_paths = Vec::new();
    for kind in Hostile::ALL {
        let tag = format!("{kind:?}");
        let h = images::hostile(dir.path(), &tag, kind).unwrap();
        assert_eq!(h.kind, kind);
        check_image(&h.layout, &h.layout.manifest_digest);
        let entries = h.layout.layer_entries(&h.layout.layer_digests[0]).unwrap();
        let got: Vec<(String, Option<String>)> = entries
            .iter()
            .map(|e| (e.path.clone(), e.link.clone()))
            .collect();
        assert_eq!(got, h.entries);
        let esc = h.escape_path.to_str().unwrap().to_string();
        let name = esc.trim_start_matches("/tmp/");
        let expected: Vec<(String, Option<String>)> = match kind {
            Hostile::DotDot => vec![(format!("{up}tmp/{name}"), None)],
            Hostile::AbsolutePath => vec![(esc.clone(), None)],
            Hostile::SymlinkEscape => {
                assert!(
                    esc.starts_with("/tmp/apex-escape-") && esc.ends_with("-dir"),
                    "{esc}"
                );
                vec![
                    ("evil".into(), Some(esc.clone())),
                    ("evil/pwned".into(), None),
                ]
            }
            Hostile::HardlinkEscape => {
                assert_eq!(esc, "/etc/hostname");
                assert_eq!(entries[0].kind, EntryType::Link);
                vec![("hl".into(), Some(format!("{up}etc/hostname")))]
            }
            Hostile::SymlinkDirThenWrite => vec![
                ("up".into(), Some(up.trim_end_matches('/').to_string())),
                (format!("up/tmp/{name}"), None),
            ],
        };
        assert_eq!(got, expected, "{kind:?}");
        if kind != Hostile::HardlinkEscape {
            assert!(name.starts_with("apex-escape-"), "{esc}");
            assert!(!h.escape_path.exists(), "building must not create {esc}");
        }
        assert!(!h.escaped(empty_rootfs.path()), "{kind:?}");
        escape_paths.push(h.escape_path);
    }
    // Unique per call.
    let again = images::hostile(dir.path(), "again", Hostile::DotDot).unwrap();
    assert!(!escape_paths.contains(&again.escape_path));
}

#[test]
fn hostile_escaped_detects_an_escape() {
    let rootfs = tmp();
    let h = images::hostile(&rootfs.path().join("layout"), "x", Hostile::AbsolutePath).unwrap();
    assert!(!h.escaped(rootfs.path()));
    std::fs::write(&h.escape_path, "escaped").unwrap();
    let escaped = h.escaped(rootfs.path());
    std::fs::remove_file(&h.escape_path).unwrap();
    assert!(escaped);
}

#[test]
fn apex_home_runs_with_isolated_env() {
    let bin = apex_bin();
    if std::env::var_os("APEX_BIN").is_none() {
        assert_eq!(bin.file_name().unwrap(), "apex");
        assert_ne!(
            bin.parent().unwrap().file_name().unwrap(),
            "deps",
            "{}",
            bin.display()
        );
    }
    // Rust's std serializes env access with process spawning, so this is sound here.
    std::env::set_var("APEX_E2E_PROBE", "leak");
    let home = ApexHome::with_bin("/usr/bin/env");
    let out = home.run(&[]);
    out.assert_ok();
    let mut apex_vars: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("APEX_"))
        .collect();
    apex_vars.sort();
    assert_eq!(
        apex_vars,
        [
            format!("APEX_HOME={}", home.path().display()),
            "APEX_NETWORK_CLEANUP=1".to_string()
        ]
    );
    assert!(home.path().is_dir());

    let fail = ApexHome::with_bin("/bin/false").run(&["x"]);
    assert_eq!(fail.code, Some(1));
    fail.assert_failure();
    let panicked = std::panic::catch_unwind(|| {
        fail.assert_ok();
    });
    assert!(panicked.is_err());
    let missing = ApexHome::with_bin("/nonexistent/apex").run(&[]);
    assert!(
        !missing.success() && missing.stderr.contains("cannot run"),
        "{missing:?}"
    );
}

/// Starts `apex-fixtures registry` and returns it with its host, answering. With
/// `until_signal` it ignores stdin; otherwise stdin is a pipe whose closing stops it.
fn fixtures_registry(bin: &str, until_signal: bool) -> (std::process::Child, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("registry");
    if until_signal {
        cmd.arg("--until-signal").stdin(Stdio::null());
    } else {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut host = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut host)
        .unwrap();
    let host = host.trim().to_string();
    assert_eq!(http_get(&host, "/v2/", None).unwrap().status, 200);
    (child, host)
}

#[test]
fn fixtures_binary_busybox_and_registry() {
    let bin = env!("CARGO_BIN_EXE_apex-fixtures");
    let dir = tmp();
    let out = Command::new(bin)
        .args([
            "busybox",
            dir.path().to_str().unwrap(),
            "demo",
            "--compression",
            "zstd",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = images::busybox(&dir.path().join("again"), "demo", Compression::Zstd).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected.manifest_digest
    );

    // Stops when stdin closes.
    let (mut child, host) = fixtures_registry(bin, false);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(
        http_get(&host, "/v2/", None).is_err(),
        "registry outlived apex-fixtures"
    );

    // Stops on SIGTERM.
    let (mut child, host) = fixtures_registry(bin, true);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
    assert!(
        http_get(&host, "/v2/", None).is_err(),
        "registry outlived apex-fixtures"
    );

    // Even SIGKILL (no cleanup code runs) takes the registry down: it dies with its owner.
    let (mut child, host) = fixtures_registry(bin, true);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while http_get(&host, "/v2/", None).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        http_get(&host, "/v2/", None).is_err(),
        "registry outlived a SIGKILLed apex-fixtures"
    );
}
