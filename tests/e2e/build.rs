//! Dockerfile builds end to end: `apex build` and the real docker CLI and docker-compose
//! against apexd, every `RUN` in a real VM, base images from a loopback registry (the
//! docker.io mirror), the results pushed back and read with skopeo.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use apex_e2e::apex::RunOutput;
use apex_e2e::docker::DockerEnv;
use apex_e2e::images::sha256_digest;
use apex_e2e::skopeo;
use serde_json::Value;

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS build
ARG MSG=default
# Steps have the default network: an address and a default route.
RUN ip route | grep -q '^default via' && echo "built: $MSG" > /msg.txt

FROM busybox
COPY data/ /data/
COPY --from=build /msg.txt /app/msg.txt
# One RUN makes a whiteout (a file of the base) and an opaque directory (/data replaced).
RUN busybox rm /bin/yes && busybox rm -rf /data && mkdir /data && echo new > /data/new
COPY app.txt /app/
WORKDIR /app
ENV GREETING=hello \
    OTHER=${GREETING:-unset}
USER 1000
LABEL org.test.kind=e2e
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/msg.txt; ls /data; ls /bin/yes 2>&1; id -u; pwd; echo $GREETING $OTHER; cat app.txt"]
"#;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, data) in files {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn context(e: &DockerEnv, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = e.tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, files);
    dir
}

fn build(e: &DockerEnv, dir: &Path, extra: &[&str]) -> RunOutput {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    let d = dir.display().to_string();
    args.push(&d);
    e.home.run(&args)
}

/// The steps of a plain build log: number -> (text, cached).
fn steps(log: &str) -> BTreeMap<usize, (String, bool)> {
    let mut out: BTreeMap<usize, (String, bool)> = BTreeMap::new();
    for l in log.lines() {
        let Some(rest) = l.strip_prefix('#') else {
            continue;
        };
        let Some((n, what)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        if what.starts_with('[') {
            out.insert(n, (what.to_string(), false));
        } else if what == "CACHED" {
            out.get_mut(&n).expect("a started step").1 = true;
        }
    }
    out
}

/// The entries of a stored layer blob.
fn layer_entries(e: &DockerEnv, digest: &str) -> Vec<String> {
    let path = e
        .home
        .path()
        .join("content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ));
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn multi_stage_build_whiteouts_config_cache_and_push() {
    let e = DockerEnv::new();
    let dir = context(
        &e,
        "app",
        &[
            ("Dockerfile", DOCKERFILE),
            (".dockerignore", "secret.txt\n*.log\n"),
            ("data/a", "a\n"),
            ("data/b", "b\n"),
            ("app.txt", "v1\n"),
            ("secret.txt", "never sent\n"),
        ],
    );

    // A cold build: the first stage's RUN writes a file, the final stage copies it.
    let cold = build(&e, &dir, &["-t", "built:1", "--build-arg", "MSG=custom"]);
    cold.assert_ok();
    let cold_steps = steps(&cold.stderr);
    assert!(
        cold_steps
            .values()
            .any(|(t, _)| t.starts_with("[build 2/2] RUN ip route")),
        "{}",
        cold.dump()
    );
    let out = e.home.run(&["run", "--rm", "built:1"]);
    out.assert_ok();
    assert_eq!(
        out.stdout.trim(),
        "built: custom\nnew\nls: /bin/yes: No such file or directory\n1000\n/app\nhello unset\nv1",
        "{}",
        out.dump()
    );

    // The config carries what the Dockerfile set.
    let info = &e.home.apex_json(&["image", "inspect", "built:1"]);
    let info = if info.is_array() { &info[0] } else { info };
    let cfg = &info["Config"];
    assert_eq!(cfg["User"], "1000", "{info:#}");
    assert_eq!(cfg["WorkingDir"], "/app");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert!(cfg["Cmd"][0]
        .as_str()
        .unwrap()
        .starts_with("cat /app/msg.txt"));
    assert_eq!(cfg["Labels"]["org.test.kind"], "e2e");
    assert!(cfg["ExposedPorts"]["8080/tcp"].is_object());
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GREETING=hello"), "{env:?}");

    // The RUN's layer holds a whiteout for /bin/yes and an opaque /data.
    let layers: Vec<String> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let run_layer = layers
        .iter()
        .map(|d| layer_entries(&e, d))
        .find(|entries| entries.iter().any(|p| p == "bin/.wh.yes"))
        .expect("a layer with the whiteout of /bin/yes");
    assert!(
        run_layer.contains(&"data/.wh..wh..opq".to_string()),
        "{run_layer:?}"
    );
    assert!(run_layer.contains(&"data/new".to_string()), "{run_layer:?}");
    assert!(
        !run_layer
            .iter()
            .any(|p| p.starts_with("etc/") || p == "proc"),
        "the agent's own files leaked into the layer: {run_layer:?}"
    );

    // An unchanged rebuild takes every step from the cache.
    let t = Instant::now();
    let warm = build(&e, &dir, &["-t", "built:1", "--build-arg", "MSG=custom"]);
    let took = t.elapsed();
    warm.assert_ok();
    eprintln!(
        "fully cached rebuild: {took:?} (cold build steps: {})",
        cold_steps.len()
    );
    let warm_steps = steps(&warm.stderr);
    assert_eq!(warm_steps.len(), cold_steps.len(), "{}", warm.dump());
    assert!(
        warm_steps.values().all(|(_, cached)| *cached),
        "{}",
        warm.dump()
    );
    let id = |name: &str| {
        let v = e.home.apex_json(&["image", "inspect", name]);
        let v = if v.is_array() { v[0].clone() } else { v };
        v["Digest"].as_str().unwrap().to_string()
    };
    let first = id("built:1");

    // A changed file rebuilds from its COPY on; what comes before stays cached.
    write(&dir, &[("app.txt", "v2\n"), ("ignored.log", "x")]);
    let changed = build(&e, &dir, &["-t", "built:2", "--build-arg", "MSG=custom"]);
    changed.assert_ok();
    let ch = steps(&changed.stderr);
    let copy_app = ch
        .iter()
        .find(|(_, (t, _))| t.ends_with("COPY app.txt /app/"))
        .map(|(n, _)| *n)
        .expect("the COPY app.txt step");
    for (n, (t, cached)) in &ch {
        assert_eq!(*cached, *n < copy_app, "step {n} {t}:\n{}", changed.dump());
    }
    assert_ne!(id("built:2"), first);
    assert_eq!(id("built:1"), first, "the old tag keeps its image");

    // Pushed to the registry and read back by skopeo: the same digests.
    let remote = format!("{}/team/built:1", e.registry.host());
    e.home
        .run(&["image", "tag", "built:1", &remote])
        .assert_ok();
    e.home.run(&["image", "push", &remote]).assert_ok();
    let raw = skopeo::inspect_raw(&remote, None).unwrap();
    assert_eq!(sha256_digest(raw.as_bytes()), first);
    let oci = e.tmp.path().join("pulled");
    skopeo::pull_to_oci(&remote, &oci, None).unwrap();
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(oci.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], first.as_str());
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    let pushed: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        pushed,
        layers.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for d in &pushed {
        let blob = oci
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        let mut data = Vec::new();
        std::fs::File::open(blob)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(&sha256_digest(&data), d);
    }

    // No step container is left, and the cache can be reclaimed.
    assert_eq!(e.home.run(&["ps", "-a", "-q"]).stdout.trim(), "");
    let pruned = e.home.run(&["builder", "prune", "-f"]);
    pruned.assert_ok();
    assert!(
        pruned.stdout.contains("Deleted build cache objects"),
        "{}",
        pruned.dump()
    );
    let after = build(
        &e,
        &dir,
        &[
            "-t",
            "built:2",
            "--build-arg",
            "MSG=custom",
            "--target",
            "build",
        ],
    );
    after.assert_ok();
    assert!(
        steps(&after.stderr)
            .values()
            .any(|(t, c)| t.contains("RUN ip route") && !c),
        "the pruned cache is not used: {}",
        after.dump()
    );
}

#[test]
fn build_errors_are_clear_and_leave_nothing() {
    let e = DockerEnv::new();
    let fails = |name: &str, files: &[(&str, &str)], extra: &[&str], needle: &str| {
        let dir = context(&e, name, files);
        let out = build(&e, &dir, extra);
        out.assert_failure();
        assert!(
            out.stderr.contains(needle),
            "{name}: want {needle:?}\n{}",
            out.dump()
        );
        out
    };
    fails(
        "none",
        &[("x", "y")],
        &[],
        "Cannot locate specified Dockerfile",
    );
    fails(
        "unknown",
        &[("Dockerfile", "FROM busybox\nFOO bar\n")],
        &[],
        "line 2: unknown instruction: FOO",
    );
    fails(
        "syntax",
        &[("Dockerfile", "FROM busybox\nENV\n")],
        &[],
        "line 2",
    );
    fails(
        "nomatch",
        &[("Dockerfile", "FROM busybox\nCOPY *.nope /x/\n")],
        &[],
        "no source files were specified",
    );
    fails(
        "escape",
        &[("Dockerfile", "FROM busybox\nCOPY ../x /x\n")],
        &[],
        "forbidden path outside the build context: ../x",
    );
    fails(
        "ignored",
        &[
            ("Dockerfile", "FROM busybox\nCOPY secret.txt /\n"),
            (".dockerignore", "secret.txt\n"),
            ("secret.txt", "s"),
        ],
        &[],
        "excluded by .dockerignore",
    );
    fails(
        "target",
        &[("Dockerfile", "FROM busybox AS a\n")],
        &["--target", "nope"],
        "failed to reach build target nope in Dockerfile",
    );
    fails(
        "base",
        &[("Dockerfile", "FROM no-such-base-image:1\n")],
        &[],
        "failed to resolve base image no-such-base-image:1",
    );
    // A RUN that fails shows its last output and exit code, and tags nothing.
    let out = fails(
        "run",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo first-line && echo last-words && exit 7\n",
        )],
        &["-t", "failed:1"],
        "returned a non-zero code: 7",
    );
    assert!(out.stderr.contains("last-words"), "{}", out.dump());
    assert_eq!(out.code, Some(1));
    e.home
        .run(&["image", "inspect", "failed:1"])
        .assert_failure();
    assert_eq!(e.home.run(&["ps", "-a", "-q"]).stdout.trim(), "");
}

#[test]
fn docker_cli_and_compose_build_through_docker_sock() {
    let e = DockerEnv::new();
    let dockerfile = "FROM busybox\nARG WHO=nobody\nRUN echo \"hello $WHO\" > /greeting\nCMD [\"cat\", \"/greeting\"]\n";
    let dir = context(&e, "dk", &[("Dockerfile", dockerfile)]);
    let docker_build = |args: &[&str]| {
        let mut cmd = e.client("docker");
        cmd.env("DOCKER_BUILDKIT", "0")
            .current_dir(&dir)
            .arg("build")
            .args(args)
            .arg(".");
        apex_e2e::docker::run_bounded(cmd, apex_e2e::docker::CLIENT_TIMEOUT)
    };
    let out = docker_build(&["-t", "dk:1", "--build-arg", "WHO=docker"]);
    out.assert_ok();
    // ARG is no step of its own (as with BuildKit).
    assert!(out.stdout.contains("Step 2/3 : RUN echo"), "{}", out.dump());
    assert!(
        out.stdout.contains("Successfully tagged dk:1"),
        "{}",
        out.dump()
    );
    assert_eq!(e.docker_ok(&["run", "--rm", "dk:1"]), "hello docker");
    let again = docker_build(&["-t", "dk:1", "--build-arg", "WHO=docker"]);
    again.assert_ok();
    assert!(again.stdout.contains("Using cache"), "{}", again.dump());
    // A failing step: docker's exit code and the step's error.
    let bad = context(&e, "bad", &[("Dockerfile", "FROM busybox\nRUN exit 4\n")]);
    let mut cmd = e.client("docker");
    cmd.env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q"])
        .arg(&bad);
    let out = apex_e2e::docker::run_bounded(cmd, apex_e2e::docker::CLIENT_TIMEOUT);
    out.assert_failure();
    assert!(
        out.stderr.contains("returned a non-zero code: 4"),
        "{}",
        out.dump()
    );

    // docker-compose's build: section.
    let compose = "services:\n  app:\n    build:\n      context: .\n      args:\n        WHO: compose\n    image: composed:latest\n";
    write(&dir, &[("docker-compose.yml", compose)]);
    let mut cmd = e.client("docker-compose");
    cmd.env("DOCKER_BUILDKIT", "0")
        .env("COMPOSE_DOCKER_CLI_BUILD", "0")
        .current_dir(&dir)
        .args(["--no-ansi", "-p", "bld", "build"]);
    let out = apex_e2e::docker::run_bounded(cmd, apex_e2e::docker::CLIENT_TIMEOUT);
    out.assert_ok();
    assert_eq!(
        e.docker_ok(&["run", "--rm", "composed:latest"]),
        "hello compose"
    );
    let images: BTreeSet<String> = e
        .docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .map(String::from)
        .collect();
    assert!(
        images.contains("dk:1") && images.contains("composed:latest"),
        "{images:?}"
    );
    assert!(
        !images.iter().any(|i| i.contains("<none>")),
        "step images are listed: {images:?}"
    );
}

/// Path, mode, uid, gid and contents of every entry of the image's layers, last layer last.
fn image_entries(e: &DockerEnv, name: &str) -> Vec<(String, u32, u64, u64, Vec<u8>)> {
    let v = e.home.apex_json(&["image", "inspect", name]);
    let v = if v.is_array() { v[0].clone() } else { v };
    let mut out = Vec::new();
    for l in v["Layers"].as_array().unwrap() {
        let path = e
            .home
            .path()
            .join("content/blobs/sha256")
            .join(l["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(path).unwrap(),
        ));
        for entry in a.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                data,
            ));
        }
    }
    out
}

/// Everything but RUN, which needs no VM: COPY with owners (by name) and modes, ADD of a
/// local archive and of a URL, heredocs, ONBUILD, SHELL, HEALTHCHECK, STOPSIGNAL,
/// VOLUME, `FROM scratch`, and `--no-cache`.
#[test]
fn instructions_that_need_no_vm() {
    let e = DockerEnv::new();
    // A loopback HTTP server for ADD's URL source.
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let _ = req.respond(tiny_http::Response::from_string("from the web\n"));
        }
    });
    let mut tgz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut b = tar::Builder::new(&mut tgz);
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o640);
        h.set_uid(42);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, "pkg/inner.txt", &b"inner\n"[..])
            .unwrap();
        b.finish().unwrap();
    }
    let base = context(
        &e,
        "onbase",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD COPY trigger.txt /from-trigger.txt\nLABEL base=yes\n",
        )],
    );
    build(&e, &base, &["-t", "onbase:1"]).assert_ok();
    let dockerfile = format!(
        "FROM onbase:1\n\
         SHELL [\"/bin/sh\", \"-ec\"]\n\
         COPY --chmod=700 --chown=apex tool.sh /usr/local/bin/tool\n\
         COPY --chown=1234:5678 dir/ /d/\n\
         ADD pkg.tar.gz /opt/\n\
         ADD http://127.0.0.1:{port}/remote.txt /remote/\n\
         ENV WHO=heredoc\n\
         COPY <<END /etc/motd\n\
         hello \"quoted\" ${{WHO:-world}}\n\
         END\n\
         HEALTHCHECK --interval=5s --retries=2 CMD [\"true\"]\n\
         STOPSIGNAL SIGUSR1\n\
         VOLUME /vol\n"
    );
    let dir = context(
        &e,
        "novm",
        &[
            ("Dockerfile", &dockerfile),
            ("trigger.txt", "t\n"),
            ("tool.sh", "#!/bin/sh\n"),
            ("dir/sub/f", "f\n"),
        ],
    );
    std::fs::write(dir.join("pkg.tar.gz"), tgz.finish().unwrap()).unwrap();
    build(&e, &dir, &["-t", "novm:1"]).assert_ok();
    let entries = image_entries(&e, "novm:1");
    let find = |p: &str| {
        let (_, mode, uid, gid, data) = entries
            .iter()
            .rev()
            .find(|(path, ..)| path == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p} not in the image"));
        (mode, uid, gid, String::from_utf8_lossy(&data).into_owned())
    };
    assert_eq!(find("from-trigger.txt").3, "t\n", "the ONBUILD trigger ran");
    assert_eq!(
        find("usr/local/bin/tool"),
        (0o700, 1000, 1000, "#!/bin/sh\n".into())
    );
    assert_eq!(find("d/sub/f"), (0o644, 1234, 5678, "f\n".into()));
    assert_eq!(find("opt/pkg/inner.txt"), (0o640, 42, 0, "inner\n".into()));
    assert_eq!(
        find("remote/remote.txt"),
        (0o600, 0, 0, "from the web\n".into())
    );
    // The heredoc keeps its quotes and expands its variables.
    assert_eq!(find("etc/motd").3, "hello \"quoted\" heredoc\n");
    let v = e.home.apex_json(&["image", "inspect", "novm:1"]);
    let cfg = if v.is_array() {
        v[0]["Config"].clone()
    } else {
        v["Config"].clone()
    };
    assert_eq!(
        cfg["Shell"],
        serde_json::json!(["/bin/sh", "-ec"]),
        "{cfg:#}"
    );
    assert_eq!(cfg["StopSignal"], "SIGUSR1");
    assert!(cfg["Volumes"]["/vol"].is_object());
    assert_eq!(
        cfg["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "true"])
    );
    assert_eq!(cfg["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(cfg["Healthcheck"]["Retries"], 2);
    assert!(cfg.get("OnBuild").is_none_or(Value::is_null), "{cfg:#}");
    assert_eq!(cfg["Labels"]["base"], "yes");

    // --no-cache runs every step again (only the FROM finds its base in place).
    let again = build(&e, &dir, &["-t", "novm:1", "--no-cache"]);
    again.assert_ok();
    for (t, cached) in steps(&again.stderr).values() {
        assert_eq!(*cached, t.contains("] FROM "), "{t}:\n{}", again.dump());
    }

    // FROM scratch: only what was copied.
    let scratch = context(
        &e,
        "scratch",
        &[
            ("Dockerfile", "FROM scratch\nCOPY hello /\n"),
            ("hello", "hi\n"),
        ],
    );
    build(&e, &scratch, &["-t", "scratchy:1"]).assert_ok();
    let names: Vec<String> = image_entries(&e, "scratchy:1")
        .into_iter()
        .map(|(p, ..)| p)
        .collect();
    assert_eq!(names, ["hello"]);

    // The same context as a tar on stdin (`apex build -`).
    let tar_path = e.tmp.path().join("scratch.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        b.append_dir_all(".", &scratch).unwrap();
        b.finish().unwrap();
    }
    let out = e
        .home
        .cmd()
        .args(["build", "-q", "-t", "stdin:1", "-"])
        .stdin(std::fs::File::open(&tar_path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    let v = e.home.apex_json(&["image", "inspect", "scratchy:1"]);
    let v = if v.is_array() { v[0].clone() } else { v };
    assert_eq!(
        v["Id"].as_str(),
        Some(id.as_str()),
        "the same build, from the cache"
    );
}

/// The containers of the home (only running ones unless `all`), as `apex ps -q` lists
/// them.
fn containers(e: &DockerEnv, all: bool) -> Vec<String> {
    let out = e.home.run(if all {
        &["ps", "-a", "-q"]
    } else {
        &["ps", "-q"]
    });
    out.assert_ok();
    out.stdout.split_whitespace().map(String::from).collect()
}

/// Ctrl-C of `apex build` cancels the build and removes its step container; a daemon
/// killed mid-step removes the leftovers (container, scratch space) when it restarts.
#[test]
fn interrupted_builds_leave_nothing() {
    let e = DockerEnv::new();
    let dir = context(
        &e,
        "slow",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo started && sleep 120\n",
        )],
    );
    let start = || {
        let mut cmd = e.home.cmd();
        cmd.args(["build", "--progress", "plain", "-t", "slow:1"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        apex_e2e::env::eventually(
            std::time::Duration::from_secs(120),
            "the step's container to run",
            || (!containers(&e, false).is_empty()).then_some(()),
        );
        child
    };
    let gone = |what: &str| {
        apex_e2e::env::eventually(std::time::Duration::from_secs(60), what, || {
            containers(&e, true).is_empty().then_some(())
        })
    };

    // Ctrl-C: the CLI goes, the daemon cancels the build and removes the container.
    let mut cli = start();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(cli.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    assert!(!cli.wait().unwrap().success());
    gone("the cancelled build's container to go");
    e.home.run(&["image", "inspect", "slow:1"]).assert_failure();

    // kill -9 of apexd mid-step: the next daemon removes what the build left.
    let mut cli = start();
    let daemon = e.home.daemon_pid().expect("a daemon");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(!cli.wait().unwrap().success());
    gone("the restarted daemon to remove the step's container");
    let scratch: Vec<_> = std::fs::read_dir(e.home.path().join("builds"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "build scratch left: {scratch:?}");
    assert!(e.home.shim_pids().is_empty(), "a helper is left");
}
