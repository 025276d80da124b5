//! Volumes, bind mounts, tmpfs, the persistent writable layer and `apex cp`, end to end:
//! the real CLI, apexd, the helper, QEMU with virtiofsd, and the guest init.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use apex_e2e::apex::{pid_alive, ApexHome, RunOutput};
use apex_e2e::env::{eventually, BusyboxEnv};
use apex_e2e::images::{self, Compression, VOLUMES_CONTENT, VOLUMES_SEED};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);

fn apex(e: &BusyboxEnv, args: &[&str]) -> RunOutput {
    e.home.run(args)
}

/// `apex inspect` of one container.
fn inspect(e: &BusyboxEnv, c: &str) -> Value {
    e.home.apex_json(&["inspect", c])[0].clone()
}

fn volumes_env() -> BusyboxEnv {
    BusyboxEnv::with_image("volimg", |dir| {
        images::volumes(dir, "latest", Compression::Gzip)
    })
}

/// Live processes whose command line mentions `needle` (zombies excluded).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Tears the home down and checks that no QEMU, vsock backend or virtiofsd of it
/// survives.
fn assert_nothing_left(home: &ApexHome) {
    home.teardown();
    let path = home.path().display().to_string();
    eventually(
        Duration::from_secs(10),
        "every process of the home to exit",
        || processes_mentioning(&path).is_empty().then_some(()),
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn bind_mounts_both_ways_ownership_ro_and_symlinks() {
    let e = BusyboxEnv::new();
    let host = e.tmp.path().join("project");
    std::fs::create_dir_all(host.join("open")).unwrap();
    std::fs::set_permissions(host.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(host.join("from-host.txt"), "hello from the host\n").unwrap();
    // A symlink inside the share that points at an absolute path: the guest resolves it
    // in its own filesystem, never the host's.
    std::os::unix::fs::symlink("/etc/passwd", host.join("passwd-link")).unwrap();
    let ro = e.tmp.path().join("readonly");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("keep.txt"), "unchanged\n").unwrap();
    let created = e.tmp.path().join("made/by/run");

    let script = "cat /work/from-host.txt; \
        echo written-in-guest > /work/from-guest.txt; mkdir /work/sub; \
        echo nested > /work/sub/n.txt; \
        if echo x > /ro/keep.txt; then echo RO-WRITE-OK; fi; \
        if busybox rm /ro/keep.txt; then echo RO-RM-OK; fi; \
        busybox cmp -s /work/passwd-link /etc/passwd && echo LINK-IS-GUEST; \
        test -d /made && echo MADE";
    let vol = |a: &Path, b: &str| format!("{}:{b}", a.display());
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "-v",
            &vol(&host, "/work"),
            "-v",
            &format!("{}:/ro:ro", ro.display()),
            "-v",
            &vol(&created, "/made"),
            &e.image,
            "sh",
            "-c",
            script,
        ],
    );
    out.assert_ok();
    assert!(out.stdout.contains("hello from the host"), "{out:?}");
    assert!(out.stdout.contains("LINK-IS-GUEST"), "{out:?}");
    assert!(
        out.stdout.contains("MADE"),
        "-v creates a missing source: {out:?}"
    );
    assert!(
        !out.stdout.contains("RO-WRITE-OK") && !out.stdout.contains("RO-RM-OK"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("Read-only file system"),
        "EROFS inside: {out:?}"
    );
    // Written in the guest, seen on the host, owned by root.
    let g = host.join("from-guest.txt");
    assert_eq!(std::fs::read_to_string(&g).unwrap(), "written-in-guest\n");
    assert_eq!(std::fs::metadata(&g).unwrap().uid(), 0);
    assert_eq!(
        std::fs::read_to_string(host.join("sub/n.txt")).unwrap(),
        "nested\n"
    );
    assert_eq!(
        std::fs::read_to_string(ro.join("keep.txt")).unwrap(),
        "unchanged\n"
    );
    assert!(created.is_dir());

    // As another user, files are owned by that uid and gid on the host.
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "-u",
            "1000:1000",
            "-v",
            &vol(&host, "/work"),
            &e.image,
            "sh",
            "-c",
            "echo mine > /work/open/u.txt && id -u",
        ],
    );
    out.assert_ok();
    let m = std::fs::metadata(host.join("open/u.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));

    // A single file can be bound, read-only.
    let conf = e.tmp.path().join("app.conf");
    std::fs::write(&conf, "setting=1\n").unwrap();
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{}:/etc/app.conf:ro", conf.display()),
            &e.image,
            "sh",
            "-c",
            "cat /etc/app.conf; ls /etc/app.conf.d 2>/dev/null; echo y >> /etc/app.conf || echo REFUSED",
        ],
    );
    out.assert_ok();
    assert!(
        out.stdout.contains("setting=1") && out.stdout.contains("REFUSED"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "setting=1\n");
    assert_nothing_left(&e.home);
}

#[test]
fn volumes_named_shared_anonymous_and_populated() {
    let e = volumes_env();
    // Two running containers share one named volume, created on first use.
    for (name, file) in [("va", "a"), ("vb", "b")] {
        let script = format!("echo {name} > /shared/{file}; while true; do sleep 1; done");
        apex(
            &e,
            &[
                "run",
                "-d",
                "--name",
                name,
                "-v",
                "shared:/shared",
                &e.image,
                "sh",
                "-c",
                &script,
            ],
        )
        .assert_ok();
    }
    for (c, other) in [("va", "b"), ("vb", "a")] {
        eventually(BOOT, &format!("{c} to see /shared/{other}"), || {
            apex(&e, &["exec", c, "cat", &format!("/shared/{other}")])
                .success()
                .then_some(())
        });
    }
    let vol = e.home.apex_json(&["volume", "inspect", "shared"])[0].clone();
    assert_eq!(vol["containers"].as_array().map(Vec::len), Some(2), "{vol}");
    let mountpoint = vol["mountpoint"].as_str().unwrap().to_string();
    assert_eq!(
        mountpoint,
        e.path().join("volumes/shared/_data").display().to_string()
    );
    // In use: refused, naming the container.
    let va_id = inspect(&e, "va")["id"].as_str().unwrap().to_string();
    let rm = apex(&e, &["volume", "rm", "shared"]);
    rm.assert_failure();
    assert!(
        rm.stderr.contains("volume is in use") && rm.stderr.contains(&va_id),
        "{rm:?}"
    );

    // The data outlives the container that wrote it.
    apex(&e, &["rm", "-f", "-v", "va", "vb"]).assert_ok();
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "-v",
            "shared:/s",
            &e.image,
            "cat",
            "/s/a",
            "/s/b",
        ],
    );
    out.assert_ok();
    assert_eq!(out.stdout, "va\nvb\n");
    apex(&e, &["volume", "rm", "shared"]).assert_ok();
    assert!(!Path::new(&mountpoint).exists());

    // The image's VOLUME /data becomes an anonymous volume holding the image's content
    // (owner and mode included); `rm -v` removes it.
    let id = apex(
        &e,
        &["create", "--name", "anon", &e.image, "cat", "/data/seed"],
    );
    id.assert_ok();
    let mounts = inspect(&e, "anon")["mounts"].clone();
    assert_eq!(mounts[0]["destination"], "/data", "{mounts}");
    assert_eq!(mounts[0]["type"], "volume");
    let anon_name = mounts[0]["name"].as_str().unwrap().to_string();
    assert_eq!(anon_name.len(), 64);
    let out = apex(&e, &["start", "-a", "anon"]);
    out.assert_ok();
    assert!(out.stdout.starts_with(VOLUMES_SEED), "{out:?}");
    let data = e.path().join("volumes").join(&anon_name).join("_data");
    let seed = std::fs::metadata(data.join("seed")).unwrap();
    assert_eq!(
        (seed.uid(), seed.gid(), seed.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    assert_eq!(
        mode(&data),
        0o750,
        "the volume root takes the image directory's mode"
    );
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), 1000);
    let ls = e.home.apex_json(&["volume", "ls", "--format", "json"]);
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == anon_name.as_str() && v["anonymous"] == true),
        "{ls}"
    );
    apex(&e, &["rm", "-v", "anon"]).assert_ok();
    assert!(!data.exists(), "rm -v removes the anonymous volume");

    // An empty named volume gets the image's content at its mount point; a second
    // container sees the (now non-empty) volume as it is.
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "-v",
            "pop:/srv",
            &e.image,
            "sh",
            "-c",
            "cat /srv/content; echo more > /srv/added",
        ],
    );
    out.assert_ok();
    assert_eq!(out.stdout, VOLUMES_CONTENT);
    let pop = e.path().join("volumes/pop/_data");
    assert_eq!(
        std::fs::read_to_string(pop.join("content")).unwrap(),
        VOLUMES_CONTENT
    );
    let out = apex(
        &e,
        &["run", "--rm", "-v", "pop:/srv", &e.image, "ls", "/srv"],
    );
    assert_eq!(out.stdout, "added\ncontent\n", "{out:?}");
    // nocopy: nothing is copied.
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "-v",
            "empty:/srv:nocopy",
            &e.image,
            "ls",
            "-A",
            "/srv",
        ],
    );
    out.assert_ok();
    assert_eq!(out.stdout, "", "{out:?}");
    // --rm takes anonymous volumes along, named ones stay.
    apex(&e, &["run", "--rm", &e.image, "true"]).assert_ok();
    let names: Vec<String> = e
        .home
        .apex_json(&["volume", "ls", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["empty", "pop"]);
    let pruned = apex(&e, &["volume", "prune", "-f", "-a"]);
    pruned.assert_ok();
    assert!(
        pruned.stdout.contains("empty") && pruned.stdout.contains("pop"),
        "{pruned:?}"
    );
    assert_nothing_left(&e.home);
}

#[test]
fn writable_layer_tmpfs_read_only_and_cp() {
    let e = BusyboxEnv::new();
    apex(
        &e,
        &[
            "run",
            "-d",
            "--name",
            "w",
            &e.image,
            "sh",
            "-c",
            "while true; do sleep 1; done",
        ],
    )
    .assert_ok();
    apex(
        &e,
        &[
            "exec",
            "w",
            "sh",
            "-c",
            "echo kept > /etc/kept && mkdir -p /opt/app && echo cfg > /opt/app/c",
        ],
    )
    .assert_ok();
    let bundle = e
        .path()
        .join("containers")
        .join(&inspect(&e, "w")["id"].as_str().unwrap()[..12]);
    assert!(
        bundle.join("upper.ext4").is_file(),
        "the writable layer is a disk in the bundle"
    );
    apex(&e, &["stop", "-t", "1", "w"]).assert_ok();
    apex(&e, &["start", "w"]).assert_ok();
    let out = apex(&e, &["exec", "w", "cat", "/etc/kept", "/opt/app/c"]);
    assert_eq!(
        out.stdout, "kept\ncfg\n",
        "the writable layer survives stop/start: {out:?}"
    );

    // cp, running container: out as a directory, in as a file with owner and mode.
    let dst = e.tmp.path().join("out");
    std::fs::create_dir_all(&dst).unwrap();
    apex(&e, &["cp", "w:/opt/app", dst.to_str().unwrap()]).assert_ok();
    assert_eq!(std::fs::read_to_string(dst.join("app/c")).unwrap(), "cfg\n");
    let src = e.tmp.path().join("in.txt");
    std::fs::write(&src, "from host\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::chown(&src, Some(1234), Some(5678)).unwrap();
    apex(&e, &["cp", src.to_str().unwrap(), "w:/opt/app/"]).assert_ok();
    let out = apex(&e, &["exec", "w", "ls", "-ln", "/opt/app/in.txt"]);
    assert!(
        out.stdout.starts_with("-rw----r--")
            && out.stdout.contains("1234")
            && out.stdout.contains("5678"),
        "{out:?}"
    );

    // cp, stopped container: both ways, through its disk.
    apex(&e, &["stop", "-t", "1", "w"]).assert_ok();
    let renamed = e.tmp.path().join("renamed.txt");
    apex(&e, &["cp", "w:/opt/app/in.txt", renamed.to_str().unwrap()]).assert_ok();
    let m = std::fs::metadata(&renamed).unwrap();
    assert_eq!(std::fs::read_to_string(&renamed).unwrap(), "from host\n");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1234, 5678, 0o604));
    let dir = e.tmp.path().join("tree");
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("a/b/f"), "deep\n").unwrap();
    apex(&e, &["cp", dir.to_str().unwrap(), "w:/srv-tree"]).assert_ok();
    let missing = apex(&e, &["cp", "w:/no/such/file", dst.to_str().unwrap()]);
    missing.assert_failure();
    assert!(
        missing
            .stderr
            .contains("Could not find the file /no/such/file in container w"),
        "{missing:?}"
    );
    assert_eq!(
        inspect(&e, "w")["state"],
        "exited",
        "cp does not start the container"
    );
    apex(&e, &["start", "w"]).assert_ok();
    let out = apex(&e, &["exec", "w", "cat", "/srv-tree/a/b/f", "/etc/kept"]);
    assert_eq!(out.stdout, "deep\nkept\n", "{out:?}");
    apex(&e, &["rm", "-f", "w"]).assert_ok();
    assert!(!bundle.exists(), "the writable layer goes with rm");

    // --read-only with a --tmpfs: only the tmpfs (and /dev/shm) can be written.
    let out = apex(
        &e,
        &[
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch:size=1m,mode=1770",
            &e.image,
            "sh",
            "-c",
            "echo x > /etc/x || echo ROOT-RO; echo y > /scratch/y && cat /scratch/y; \
             ls -ld /scratch; dd if=/dev/zero of=/scratch/big bs=1k count=2048 2>/dev/null || echo FULL",
        ],
    );
    out.assert_ok();
    assert!(
        out.stdout.contains("ROOT-RO") && out.stdout.contains("y\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("drwxrwx--T") && out.stdout.contains("FULL"),
        "{out:?}"
    );
    assert_nothing_left(&e.home);
}

#[test]
fn bad_mount_input_is_refused_and_leaves_nothing() {
    let e = BusyboxEnv::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--mount", "type=bind,source=/no/such/dir,target=/x"],
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir",
        ),
        (
            &["-v", "not/a/name:/x"],
            "includes invalid characters for a local volume name",
        ),
        (&["-v", "/tmp:relative"], "mount path must be absolute"),
        (
            &["-v", "goodname:/x", "-v", "other:/x"],
            "Duplicate mount point: /x",
        ),
        (&["--tmpfs", "/t:size=lots"], "invalid tmpfs option"),
        (
            &["--mount", "type=tmpfs,target=/t,source=/s"],
            "must not be specified",
        ),
        (&["--mount", "type=volume,source=x"], "target is required"),
    ];
    for (flags, msg) in cases {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend([e.image.as_str(), "true"]);
        let out = apex(&e, &args);
        assert_eq!(out.code, Some(125), "{out:?}");
        assert!(out.stderr.contains(msg), "{flags:?}: {out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out:?}");
    }
    let bad = apex(&e, &["volume", "create", "a b"]);
    bad.assert_failure();
    assert!(
        bad.stderr.contains("includes invalid characters"),
        "{bad:?}"
    );
    // Nothing was half-created: no container, no volume.
    assert_eq!(
        e.home.apex_json(&["ls", "-a", "--format", "json"]),
        Value::Array(vec![])
    );
    assert_eq!(
        e.home.apex_json(&["volume", "ls", "--format", "json"]),
        Value::Array(vec![])
    );

    // A bind source deleted under a running container: it keeps running and sees the
    // error inside.
    let src = e.tmp.path().join("vanishing");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    apex(
        &e,
        &[
            "run",
            "-d",
            "--name",
            "v",
            "-v",
            &format!("{}:/v", src.display()),
            &e.image,
            "sh",
            "-c",
            "while true; do sleep 1; done",
        ],
    )
    .assert_ok();
    apex(&e, &["exec", "v", "cat", "/v/f"]).assert_ok();
    std::fs::remove_dir_all(&src).unwrap();
    let out = apex(&e, &["exec", "v", "sh", "-c", "ls /v/f; touch /v/new"]);
    out.assert_failure();
    assert_eq!(inspect(&e, "v")["state"], "running");
    assert!(apex(&e, &["exec", "v", "true"]).success());
    // A restart of it now fails with Docker's message, and says so in one line.
    apex(&e, &["stop", "-t", "1", "v"]).assert_ok();
    let start = apex(&e, &["start", "v"]);
    start.assert_failure();
    assert!(
        start.stderr.contains("bind source path does not exist"),
        "{start:?}"
    );
    assert_nothing_left(&e.home);
}

#[test]
fn mounts_survive_restart_policies_and_daemon_restarts() {
    let e = BusyboxEnv::new();
    // A container that fails twice, restarted by its policy, counts into its volume.
    apex(
        &e,
        &[
            "run",
            "-d",
            "--name",
            "r",
            "--restart",
            "on-failure:2",
            "-v",
            "counter:/c",
            &e.image,
            "sh",
            "-c",
            "echo run >> /c/runs; exit 1",
        ],
    )
    .assert_ok();
    eventually(BOOT, "three runs of r", || {
        let rec = inspect(&e, "r");
        (rec["state"] == "exited" && rec["restart_count"] == 2).then_some(())
    });
    let runs = std::fs::read_to_string(e.path().join("volumes/counter/_data/runs")).unwrap();
    assert_eq!(runs, "run\nrun\nrun\n");

    // The daemon dies with a container running: after it restarts, the mounts are in the
    // record and still work, and a start after stop mounts them again.
    apex(
        &e,
        &[
            "run",
            "-d",
            "--name",
            "s",
            "-v",
            "counter:/c",
            "--tmpfs",
            "/t",
            &e.image,
            "sh",
            "-c",
            "while true; do sleep 1; done",
        ],
    )
    .assert_ok();
    let pid = e.home.daemon_pid().expect("daemon pid");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    eventually(Duration::from_secs(10), "apexd to die", || {
        (!pid_alive(pid)).then_some(())
    });
    let rec = inspect(&e, "s"); // starts a new daemon
    let targets: Vec<&str> = rec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["/c", "/t"]);
    let out = apex(&e, &["exec", "s", "cat", "/c/runs"]);
    assert_eq!(out.stdout, runs);
    apex(&e, &["restart", "-t", "1", "s"]).assert_ok();
    let out = apex(
        &e,
        &[
            "exec",
            "s",
            "sh",
            "-c",
            "wc -l < /c/runs; mount | grep -c ' /t '",
        ],
    );
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["3", "1"],
        "{out:?}"
    );

    // kill -9 of the helper takes the VM and its virtiofsd along.
    let volume_dir = e.path().join("volumes/counter/_data").display().to_string();
    assert!(
        !processes_mentioning(&volume_dir).is_empty(),
        "a virtiofsd serves the volume"
    );
    let shim = inspect(&e, "s")["shim_pid"].as_u64().unwrap() as i32;
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(shim).unwrap(),
        rustix::process::Signal::KILL,
    );
    eventually(
        Duration::from_secs(10),
        "virtiofsd to die with the helper",
        || processes_mentioning(&volume_dir).is_empty().then_some(()),
    );
    assert_nothing_left(&e.home);
}
