//! The Docker Engine API end to end: the real docker CLI, docker-compose 1.29, docker-py
//! and testcontainers-python against apexd's docker.sock, every container in its own VM.
//! docker.io names (`busybox:latest`) come from a loopback registry acting as the mirror.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_e2e::apex::RunOutput;
use apex_e2e::docker::{run_bounded, DockerEnv, CLIENT_TIMEOUT};
use apex_e2e::env::eventually;
use apex_e2e::registry::http_get;

const WEB: &str =
    "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `docker ARGS` under `script`, so the CLI has a terminal (30x100) as with `-it`.
/// Its input stays open and silent (at EOF, `script` would type into the terminal).
fn docker_in_pty(e: &DockerEnv, args: &str) -> RunOutput {
    let mut cmd = e.client("script");
    cmd.args([
        "-qec",
        &format!("stty rows 30 cols 100; docker {args}"),
        "/dev/null",
    ]);
    cmd.stdin(std::process::Stdio::piped());
    run_bounded(cmd, CLIENT_TIMEOUT)
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn docker_cli_runs_containers_in_their_own_vms() {
    let e = DockerEnv::new();
    let d = |args: &[&str]| e.docker_ok(args);

    // Version negotiation, then exit codes as docker's: the container's own, 125 for an
    // image that exists nowhere.
    assert_eq!(
        d(&["version", "--format", "{{.Server.APIVersion}}"]),
        "1.47"
    );
    assert_eq!(
        e.docker(&["run", "--rm", "busybox", "sh", "-c", "exit 3"])
            .code,
        Some(3)
    );
    let missing = e.docker(&["run", "--rm", "no-such-image-anywhere:1"]);
    assert_eq!(missing.code, Some(125), "{}", missing.dump());
    // Below the memory floor: refused by the daemon, with docker's wording, before any VM.
    let small = e.docker(&["run", "--rm", "-m", "16m", "busybox", "true"]);
    assert_eq!(small.code, Some(125), "{}", small.dump());
    assert!(
        small.stderr.contains("Minimum memory limit allowed is"),
        "{}",
        small.dump()
    );

    // Our edge: the container's kernel is the guest's, not the host's.
    let kernel = d(&["run", "--rm", "busybox", "uname", "-r"]);
    assert!(!kernel.is_empty() && kernel != host_kernel(), "{kernel}");

    // run -d -p: a web server reached from the host through the published port.
    d(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1::80",
        "busybox",
        "sh",
        "-c",
        WEB,
    ]);
    let addr = d(&["port", "web", "80"]);
    let addr = addr.lines().next().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let body = eventually(Duration::from_secs(60), "the web server to answer", || {
        http_get(&addr, "/index.html", None)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
    });
    assert_eq!(body, "hello-from-web\n");

    // One lifecycle: a docker container is in `apex ls`, an apex one in `docker ps`.
    let apex_names = e.home.run(&["ls", "--format", "json"]);
    assert!(
        apex_names.stdout.contains("\"web\""),
        "{}",
        apex_names.dump()
    );
    e.home
        .run(&["run", "-d", "--name", "native", "busybox", "sleep", "300"])
        .assert_ok();
    let ps = d(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("native Up") && ps.contains("web Up"), "{ps}");

    // exec, top, stats, inspect.
    assert_eq!(d(&["exec", "web", "sh", "-c", "echo $((6*7))"]), "42");
    let exec_fail = e.docker(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(exec_fail.code, Some(4));
    let top = d(&["top", "web"]);
    assert!(top.contains("httpd"), "{top}");
    let stats = d(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
        "web",
    ]);
    assert!(stats.starts_with("web ") && stats.contains("iB"), "{stats}");
    let state = d(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.Pid}} {{.Config.Image}}",
        "web",
    ]);
    assert!(
        state.starts_with("running ") && state.ends_with(" busybox"),
        "{state}"
    );

    // -it through a pseudo-terminal: run and exec.
    let tty = docker_in_pty(&e, "run --rm -it busybox sh -c 'tty; stty size; exit 7'");
    assert_eq!(tty.code, Some(7), "{}", tty.dump());
    assert!(
        tty.stdout.contains("/dev/pts/") && tty.stdout.contains("30 100"),
        "{}",
        tty.dump()
    );
    let tty = docker_in_pty(&e, "exec -it web sh -c 'tty; echo $$'");
    assert_eq!(tty.code, Some(0), "{}", tty.dump());
    assert!(tty.stdout.contains("/dev/pts/"), "{}", tty.dump());

    // cp, both ways.
    let file = e.tmp.path().join("note.txt");
    std::fs::write(&file, "copied in\n").unwrap();
    d(&["cp", file.to_str().unwrap(), "web:/tmp/note.txt"]);
    assert_eq!(d(&["exec", "web", "cat", "/tmp/note.txt"]), "copied in");
    let out = e.tmp.path().join("index.html");
    d(&["cp", "web:/www/index.html", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello-from-web\n");

    // logs -f follows until the container ends.
    d(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3; do echo tick $i; sleep 1; done",
    ]);
    let logs = d(&["logs", "-f", "ticker"]);
    assert_eq!(logs, "tick 1\ntick 2\ntick 3");

    // stop, then rm -f of everything; nothing is left in either front door.
    d(&["stop", "-t", "1", "web"]);
    assert_eq!(d(&["inspect", "-f", "{{.State.Status}}", "web"]), "exited");
    d(&["rm", "-f", "web", "native", "ticker"]);
    assert_eq!(d(&["ps", "-aq"]), "");
    let left = e.home.run(&["ls", "-a", "-q"]);
    assert_eq!(left.stdout.trim(), "", "{}", left.dump());
}

#[test]
fn docker_cli_images_networks_volumes_and_events() {
    let e = DockerEnv::new();
    let d = |args: &[&str]| e.docker_ok(args);
    let since = unix_now().to_string();

    // Images: pull through the mirror, tag, push to the registry by its own name,
    // save | load.
    let pull = d(&["pull", "busybox"]);
    assert!(pull.contains("docker.io/library/busybox:latest"), "{pull}");
    let images = d(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.lines().any(|l| l == "busybox:latest"), "{images}");
    let pushed = format!("{}/mine/box:v1", e.registry.host());
    d(&["tag", "busybox", &pushed]);
    d(&["push", &pushed]);
    let tags = http_get(&e.registry.host(), "/v2/mine/box/tags/list", None).unwrap();
    assert!(tags.body.contains("\"v1\""), "{}", tags.body);
    let archive = e.tmp.path().join("images.tar");
    d(&["save", "-o", archive.to_str().unwrap(), &pushed]);
    d(&["rmi", &pushed]);
    let loaded = d(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(&pushed), "{loaded}");

    // Networks: a container connected before it starts reaches another by name.
    d(&["network", "create", "n1"]);
    d(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "n1",
        "busybox",
        "sh",
        "-c",
        WEB,
    ]);
    d(&[
        "create",
        "--name",
        "b",
        "busybox",
        "sh",
        "-c",
        "for i in $(seq 30); do wget -qO- http://a/ && exit 0; sleep 1; done; exit 1",
    ]);
    d(&["network", "connect", "n1", "b"]);
    let fetched = e.docker(&["start", "-a", "b"]);
    assert_eq!(fetched.code, Some(0), "{}", fetched.dump());
    assert_eq!(fetched.stdout, "hello-from-web\n");

    // Volumes: data outlives its containers.
    d(&["volume", "create", "v1"]);
    d(&[
        "run",
        "--rm",
        "-v",
        "v1:/data",
        "busybox",
        "sh",
        "-c",
        "echo persisted > /data/f",
    ]);
    assert_eq!(
        d(&["run", "--rm", "-v", "v1:/data", "busybox", "cat", "/data/f"]),
        "persisted"
    );
    assert!(d(&["volume", "ls", "-q"]).lines().any(|l| l == "v1"));

    // A restart policy, counted as docker does.
    d(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "exit 1",
    ]);
    let inspect = || {
        d(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky",
        ])
    };
    eventually(Duration::from_secs(240), "flaky to give up", || {
        (inspect() == "2 exited").then_some(())
    });

    let df = d(&["system", "df"]);
    assert!(
        df.contains("Images") && df.contains("Local Volumes"),
        "{df}"
    );

    // Events: what happened to `a` and `flaky`.
    let until = (unix_now() + 1).to_string();
    let events = d(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    for want in ["create a", "start a", "create flaky", "die flaky"] {
        assert!(
            events.lines().any(|l| l == want),
            "no {want:?} in\n{events}"
        );
    }

    d(&["rm", "-f", "a", "b", "flaky"]);
    d(&["network", "rm", "n1"]);
    d(&["volume", "rm", "v1"]);
    assert!(!d(&["volume", "ls", "-q"]).lines().any(|l| l == "v1"));
}

const COMPOSE_FILE: &str = r#"version: "2.4"
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"]
  db:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3; echo ready > /data/state; while :; do sleep 1; done"]
    volumes:
      - dbdata:/data
    healthcheck:
      test: ["CMD", "test", "-f", "/data/state"]
      interval: 1s
      retries: 60
  client:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do wget -qO- http://web/ && cat /data/state; sleep 2; done"]
    volumes:
      - dbdata:/data:ro
    depends_on:
      web:
        condition: service_started
      db:
        condition: service_healthy
volumes:
  dbdata:
"#;

#[test]
fn docker_compose_up_ps_logs_exec_down() {
    let e = DockerEnv::new();
    let dir = e.tmp.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), COMPOSE_FILE).unwrap();
    let compose = |args: &[&str]| {
        let out = e.compose(&dir, "demo", args);
        out.assert_ok();
        out
    };

    // `up -d` waits for db to be healthy before it starts client.
    compose(&["up", "-d"]);
    let health = e.docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", "demo_db_1"]);
    assert_eq!(health, "healthy");
    let ps = compose(&["ps"]).stdout;
    for svc in ["demo_web_1", "demo_db_1", "demo_client_1"] {
        assert!(
            ps.lines().any(|l| l.starts_with(svc) && l.contains("Up")),
            "{ps}"
        );
    }
    assert!(ps.contains("(healthy)"), "{ps}");

    // The client reaches web by its service name and reads db's volume.
    eventually(Duration::from_secs(120), "the client's output", || {
        let logs = compose(&["logs", "--no-color", "client"]).stdout;
        (logs.contains("hello-from-web") && logs.contains("ready")).then_some(())
    });
    let exec = compose(&["exec", "-T", "client", "wget", "-qO-", "http://web/"]);
    assert_eq!(exec.stdout, "hello-from-web\n");

    // down -v leaves nothing: containers, the network, the volume.
    compose(&["down", "-v"]);
    assert_eq!(e.docker_ok(&["ps", "-aq"]), "");
    let nets = e.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("demo"), "{nets}");
    let vols = e.docker_ok(&["volume", "ls", "-q"]);
    assert!(!vols.contains("demo"), "{vols}");
}

fn client_script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("e2e/clients")
        .join(name)
}

#[test]
fn docker_py_and_testcontainers() {
    let e = DockerEnv::new();
    let out = e.python(&client_script("docker_py.py"), &[]);
    out.assert_ok();
    assert!(out.stdout.ends_with("ok\n"), "{}", out.dump());

    let out = e.python(
        &client_script("testcontainers_py.py"),
        &[
            ("TESTCONTAINERS_RYUK_DISABLED", "true"),
            // This machine has /.dockerenv: without this, testcontainers would look for
            // the container through a gateway instead of DOCKER_HOST.
            ("TESTCONTAINERS_CONNECTION_MODE", "docker_host"),
        ],
    );
    out.assert_ok();
    assert!(out.stdout.ends_with("ok\n"), "{}", out.dump());
    // Its container ran the guest's kernel.
    let kernel = out.stdout.lines().find_map(|l| l.strip_prefix("kernel "));
    assert!(kernel.is_some_and(|k| k != host_kernel()), "{}", out.dump());
    assert_eq!(e.docker_ok(&["ps", "-aq"]), "");
}
