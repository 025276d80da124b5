//! End-to-end tests of the agent in test mode (`--serve-unix`), as root.

mod harness;

use std::io::Write;
use std::time::{Duration, Instant};

use apex_agent_proto::api::{
    self, Call, ExitStatus, KillProcess, Namespaces, PingResult, ProcessRef, ProcessStarted,
    ResizeTty, Stats, User,
};
use apex_agent_proto::rpc::{codes, ProcessStartFailed};
use harness::*;

macro_rules! need_root {
    () => {
        if !is_root() {
            return;
        }
    };
}

fn pref(id: &str) -> ProcessRef {
    ProcessRef { id: id.into() }
}

#[test]
fn ping() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let r: PingResult = c.call_ok(&Call::Ping);
    assert_eq!(r.protocol_version, apex_agent_proto::PROTOCOL_VERSION);
    // A second connection works at the same time.
    let c2 = agent.connect();
    let _: PingResult = c2.call_ok(&Call::Ping);
}

#[test]
fn echo_exit_codes_and_stderr() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let (st, out, err) = run(&c, &agent, spec(&["echo", "hello"]));
    assert_eq!((st, out.as_str(), err.as_str()), (ok(0), "hello\n", ""));

    let (st, _, _) = run(&c, &agent, spec(&["sh", "-c", "exit 3"]));
    assert_eq!(st, ok(3));

    let (st, out, err) = run(
        &c,
        &agent,
        spec(&["sh", "-c", "echo out; echo err >&2; exit 1"]),
    );
    assert_eq!((st, out.as_str(), err.as_str()), (ok(1), "out\n", "err\n"));
}

fn ok(code: i32) -> ExitStatus {
    ExitStatus {
        exit_code: code,
        signal: None,
    }
}

#[test]
fn stdin_is_piped_and_eof_ends_it() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["cat"]);
    let mut io = create(&c, &agent, &mut s, true, true, true).unwrap();
    start(&c, &s.id).unwrap();
    io.write_stdin(b"some data\nmore");
    io.close_stdin();
    assert_eq!(io.stdout.as_ref().unwrap().finish(), "some data\nmore");
    assert_eq!(c.wait(&s.id), ok(0));

    // close_stdin while the host keeps its end open.
    let mut s = spec(&["cat"]);
    let mut io = create(&c, &agent, &mut s, true, true, false).unwrap();
    start(&c, &s.id).unwrap();
    io.write_stdin(b"abc");
    io.stdout.as_ref().unwrap().wait_for("abc");
    c.call(&Call::CloseStdin(pref(&s.id))).unwrap();
    assert_eq!(c.wait(&s.id), ok(0));
    assert_eq!(io.stdout.as_ref().unwrap().finish(), "abc");
}

#[test]
fn env_cwd_and_user() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["sh", "-c", "env | sort; pwd"]);
    s.env = vec!["PATH=/bin".into(), "FOO=bar baz".into()];
    s.cwd = "/work/sub".into();
    let (st, out, err) = run(&c, &agent, s);
    assert_eq!(st, ok(0), "{err}");
    // Exactly the given environment plus HOME (from passwd); busybox sh adds PWD/SHLVL.
    let vars: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .collect();
    assert_eq!(
        vars,
        ["FOO=bar baz", "HOME=/root", "PATH=/bin", "/work/sub"]
    );
    assert!(agent.root.join("work/sub").is_dir());

    let id_script = "id -u; id -g; id -G; echo $HOME; pwd";
    let mut s = spec(&["sh", "-c", id_script]);
    s.user = User {
        spec: Some("apex".into()),
        ..User::default()
    };
    s.cwd = "/home/apex".into();
    let (st, out, err) = run(&c, &agent, s);
    assert_eq!(st, ok(0), "{err}");
    assert_eq!(out, "1000\n1000\n1000 50\n/home/apex\n/home/apex\n");

    let mut s = spec(&["sh", "-c", id_script]);
    s.user = User {
        spec: Some("1000:1000".into()),
        additional_gids: vec![5],
        ..User::default()
    };
    s.env.push("HOME=/custom".into());
    let (st, out, _) = run(&c, &agent, s);
    assert_eq!(st, ok(0));
    assert_eq!(out, "1000\n1000\n1000 5\n/custom\n/\n");

    // Numeric ids without a spec; HOME from the passwd entry of that uid.
    let mut s = spec(&["sh", "-c", id_script]);
    s.user = User {
        uid: 65534,
        gid: 65534,
        additional_gids: vec![],
        spec: None,
    };
    let (_, out, _) = run(&c, &agent, s);
    assert_eq!(out, "65534\n65534\n65534\n/nonexistent\n/\n");
}

#[test]
fn start_failures() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let check = |mut s: ProcessStartSpec, code: i32, needle: &str| {
        let io = create(&c, &agent, &mut s.0, false, true, true).unwrap();
        let e = start(&c, &s.0.id).unwrap_err();
        assert_eq!(e.code, codes::PROCESS_START_FAILED, "{e:?}");
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
        assert_eq!(e.data_as::<ProcessStartFailed>().unwrap().exit_code, code);
        // The host sees EOF and the exit code is kept for wait.
        assert_eq!(io.stdout.unwrap().finish(), "");
        assert_eq!(c.wait(&s.0.id), ok(code));
    };
    let mut s = spec(&["id"]);
    s.user.spec = Some("foo".into());
    check(
        ProcessStartSpec(s),
        126,
        "unable to find user foo: no matching entries in passwd file",
    );
    check(
        ProcessStartSpec(spec(&["nosuchcmd"])),
        127,
        "exec: \"nosuchcmd\": executable file not found in $PATH",
    );
    check(
        ProcessStartSpec(spec(&["/bin/nope"])),
        127,
        "no such file or directory",
    );
    check(
        ProcessStartSpec(spec(&["/etc/not-executable"])),
        126,
        "permission denied",
    );

    // exec_process reports the same way.
    let e = c
        .call(&Call::ExecProcess(spec(&["nosuchcmd"])))
        .unwrap_err();
    assert_eq!(e.data_as::<ProcessStartFailed>().unwrap().exit_code, 127);
}

struct ProcessStartSpec(api::ProcessSpec);

#[test]
fn kill_and_concurrent_wait_on_one_connection() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["sleep", "100"]);
    let _io = create(&c, &agent, &mut s, false, true, true).unwrap();
    let started: ProcessStarted = serde_json::from_value(start(&c, &s.id).unwrap()).unwrap();
    assert!(started.pid > 0);
    // wait first, then ping and kill on the same connection: they must not be blocked.
    let wait = c.send(&Call::WaitProcess(pref(&s.id)));
    std::thread::sleep(Duration::from_millis(100));
    let _: PingResult = c.call_ok(&Call::Ping);
    assert!(wait.try_recv().is_err(), "wait returned early");
    c.call(&Call::KillProcess(KillProcess {
        id: s.id.clone(),
        signal: 15,
    }))
    .unwrap();
    let resp = wait.recv_timeout(TIMEOUT).unwrap();
    let st: ExitStatus = resp.into_result().unwrap();
    assert_eq!(
        st,
        ExitStatus {
            exit_code: 143,
            signal: Some(15)
        }
    );
    // The exit was also announced as a notification.
    let n = c.events.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(n.method, "process_exited");
    assert_eq!(n.params["id"], s.id.as_str());
    assert_eq!(n.params["exit_code"], 143);
    // Killing an exited process is an error; waiting again still works.
    let e = c
        .call(&Call::KillProcess(KillProcess {
            id: s.id.clone(),
            signal: 9,
        }))
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_STATE);
    assert_eq!(c.wait(&s.id).exit_code, 143);
}

#[test]
fn wait_after_exit_and_from_another_connection() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["sh", "-c", "exit 7"]);
    let io = create(&c, &agent, &mut s, false, true, false).unwrap();
    start(&c, &s.id).unwrap();
    io.stdout.unwrap().finish();
    let n = c.events.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(n.params["exit_code"], 7);
    std::thread::sleep(Duration::from_millis(100));
    let c2 = agent.connect();
    assert_eq!(c2.wait(&s.id), ok(7));
    assert_eq!(c.wait(&s.id), ok(7));
    let e = c.call(&Call::WaitProcess(pref("nope"))).unwrap_err();
    assert_eq!(e.code, codes::NOT_FOUND);
}

#[test]
fn tty_process() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["sh", "-c", "tty; stty size; read x; stty size; echo got:$x"]);
    s.terminal = true;
    let mut io = create(&c, &agent, &mut s, true, true, false).unwrap();
    c.call(&Call::ResizeTty(ResizeTty {
        id: s.id.clone(),
        rows: 40,
        cols: 100,
    }))
    .unwrap();
    start(&c, &s.id).unwrap();
    let out = io.stdout.take().unwrap();
    let text = out.wait_for("40 100\r\n");
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    c.call(&Call::ResizeTty(ResizeTty {
        id: s.id.clone(),
        rows: 33,
        cols: 77,
    }))
    .unwrap();
    io.write_stdin(b"hi\n");
    let text = out.finish();
    assert!(text.contains("33 77\r\ngot:hi\r\n"), "{text:?}");
    assert_eq!(c.wait(&s.id), ok(0));

    // close_stdin on a tty sends EOF (^D) to a canonical-mode reader.
    let mut s = spec(&["cat"]);
    s.terminal = true;
    let mut io = create(&c, &agent, &mut s, true, true, false).unwrap();
    start(&c, &s.id).unwrap();
    io.write_stdin(b"line\n");
    io.stdout.as_ref().unwrap().wait_for("line\r\nline\r\n");
    c.call(&Call::CloseStdin(pref(&s.id))).unwrap();
    assert_eq!(c.wait(&s.id), ok(0));

    // resize_tty on a non-tty process is refused.
    let mut s = spec(&["true"]);
    let _io = create(&c, &agent, &mut s, false, false, false).unwrap();
    let e = c
        .call(&Call::ResizeTty(ResizeTty {
            id: s.id.clone(),
            rows: 1,
            cols: 1,
        }))
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_STATE);
}

#[test]
fn orphans_are_reaped() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    // The background sleep outlives its parent and is reparented to the agent (subreaper).
    let (st, out, _) = run(
        &c,
        &agent,
        spec(&["sh", "-c", "sleep 0.3 >/dev/null 2>&1 </dev/null & echo $!"]),
    );
    assert_eq!(st, ok(0));
    let pid: i32 = out.trim().parse().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match proc_state(pid) {
            None => break,
            Some((state, ppid)) => {
                assert_eq!(ppid, agent.pid(), "orphan not reparented to the agent");
                assert!(
                    Instant::now() < deadline,
                    "pid {pid} stuck in state {state}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_stats_files_and_errors() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["sleep", "100"]);
    let io = HostStdio::new(&agent, false, false, false);
    io.apply(&mut s);
    let started: ProcessStarted = c.call_ok(&Call::ExecProcess(s.clone()));
    assert!(started.pid > 0);
    let stats: Stats = c.call_ok(&Call::Stats);
    assert!(stats.pids >= 1 && stats.memory_limit_bytes > 0, "{stats:?}");
    assert!(stats.memory_usage_bytes > 0 && stats.cpu_usage_ns > 0);

    let e = c.call(&Call::CreateProcess(s.clone())).unwrap_err();
    assert_eq!(e.code, codes::ALREADY_EXISTS);
    let e = c.call(&Call::StartProcess(pref(&s.id))).unwrap_err();
    assert_eq!(e.code, codes::INVALID_STATE);
    c.call(&Call::KillProcess(KillProcess {
        id: s.id.clone(),
        signal: 9,
    }))
    .unwrap();
    assert_eq!(c.wait(&s.id).signal, Some(9));

    let dir = agent.dir.path().join("made/here");
    c.call(&Call::Mkdir(api::Mkdir {
        path: dir.to_str().unwrap().into(),
        mode: 0o750,
    }))
    .unwrap();
    let f = dir.join("file");
    c.call(&Call::WriteFile(api::WriteFile {
        path: f.to_str().unwrap().into(),
        contents: b"content".to_vec(),
        mode: 0o600,
    }))
    .unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"content");
    let e = c
        .call(&Call::WriteFile(api::WriteFile {
            path: "/nonexistent-dir/x".into(),
            contents: vec![],
            mode: 0o600,
        }))
        .unwrap_err();
    assert_eq!(e.code, codes::OS_ERROR);

    // Mount a tmpfs (inside the agent's private mount namespace) and use it from a process.
    let m = agent.root.join("mnt");
    c.call(&Call::Mkdir(api::Mkdir {
        path: m.to_str().unwrap().into(),
        mode: 0o755,
    }))
    .unwrap();
    c.call(&Call::Mount(api::Mount {
        source: "tmpfs".into(),
        target: m.to_str().unwrap().into(),
        fstype: "tmpfs".into(),
        flags: vec!["nosuid".into()],
        data: Some("size=1m".into()),
    }))
    .unwrap();
    let (_, out, _) = run(
        &c,
        &agent,
        spec(&["sh", "-c", "grep ' /mnt ' /proc/mounts | cut -d' ' -f3"]),
    );
    assert_eq!(out, "tmpfs\n");
    c.call(&Call::Umount(api::Umount {
        target: m.to_str().unwrap().into(),
        detach: false,
    }))
    .unwrap();
    let e = c
        .call(&Call::Mount(api::Mount {
            source: "x".into(),
            target: "/x".into(),
            fstype: "tmpfs".into(),
            flags: vec!["bogus".into()],
            data: None,
        }))
        .unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMS);

    c.call(&Call::Sync).unwrap();

    // Garbage on the wire gets an error response and the connection stays usable.
    let mut raw = std::os::unix::net::UnixStream::connect(&agent.sock).unwrap();
    apex_agent_proto::frame::write_frame(&mut raw, b"{not json").unwrap();
    let resp = apex_agent_proto::read_message(&mut raw).unwrap().unwrap();
    assert!(
        matches!(resp, apex_agent_proto::Message::Response(r) if r.outcome.as_ref().unwrap_err().code == codes::PARSE_ERROR)
    );
    apex_agent_proto::frame::write_frame(
        &mut raw,
        &apex_agent_proto::encode_request(5, &Call::Ping),
    )
    .unwrap();
    raw.flush().unwrap();
    assert!(apex_agent_proto::read_message(&mut raw).unwrap().is_some());
}

#[test]
fn shutdown_stops_processes_and_exits() {
    need_root!();
    let mut agent = Agent::start();
    let c = agent.connect();
    let mut s = spec(&["sh", "-c", "trap '' TERM; sleep 100"]);
    let io = create(&c, &agent, &mut s, false, true, false).unwrap();
    start(&c, &s.id).unwrap();
    let t = Instant::now();
    c.call(&Call::Shutdown).unwrap();
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The process ignored SIGTERM, so it was SIGKILLed after the grace period.
    assert!(t.elapsed() < Duration::from_secs(10));
    io.stdout.unwrap().finish();
}

#[test]
fn set_network_in_test_mode_writes_files_and_forwards_ports() {
    use apex_agent_proto::forward::{encode_header, read_line, Answer, Proto, MAX_LINE};
    use std::io::Read;
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut net = api::SetNetwork {
        hostname: Some("web".into()),
        dns: api::Dns {
            nameservers: vec!["10.0.2.3".into()],
            ..Default::default()
        },
        hosts: vec![api::HostEntry {
            ip: "10.0.2.2".into(),
            names: vec!["gw".into()],
        }],
        ..Default::default()
    };
    c.call(&Call::SetNetwork(net.clone())).unwrap();
    let (_, out, _) = run(&c, &agent, spec(&["cat", "/etc/hosts", "/etc/resolv.conf"]));
    assert_eq!(
        out,
        "127.0.0.1\tlocalhost web\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         10.0.2.2\tgw\nnameserver 10.0.2.3\n"
    );
    // Links and routes would change the host's network: refused in test mode.
    net.interfaces.push(api::Interface {
        name: "eth0".into(),
        mac: None,
        addresses: vec![],
        mtu: None,
    });
    let e = c.call(&Call::SetNetwork(net)).unwrap_err();
    assert_eq!(e.code, codes::INVALID_PARAMS, "{e:?}");
    let e = c
        .call(&Call::SetNetwork(api::SetNetwork {
            hostname: Some("bad name".into()),
            ..Default::default()
        }))
        .unwrap_err();
    assert!(e.message.contains("hostname"), "{e:?}");

    // Port forwarding listens on PATH@1025 in test mode.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let fwd = format!(
        "{}@{}",
        agent.sock.display(),
        apex_agent_proto::FORWARD_PORT
    );
    let mut s = std::os::unix::net::UnixStream::connect(&fwd).unwrap();
    s.write_all(&encode_header(Proto::Tcp, port)).unwrap();
    let (mut conn, _) = server.accept().unwrap();
    assert_eq!(
        Answer::parse(&read_line(&mut s, MAX_LINE).unwrap()).unwrap(),
        Answer::Ok
    );
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    conn.write_all(b"pong").unwrap();
    drop(conn);
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"pong");
}

#[test]
fn main_process_gets_its_own_namespaces_and_execs_join_them() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    let mut main = spec(&["sh", "-c", "echo pid=$$; hostname ctr; read x; echo bye"]);
    main.namespaces = Namespaces::New;
    let mut io = create(&c, &agent, &mut main, true, true, true).unwrap();
    start(&c, &main.id).unwrap();
    io.stdout.as_ref().unwrap().wait_for("pid=1\n");

    // An exec sees the same PID namespace, /proc and hostname; the guest keeps its own.
    let mut ex = spec(&["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'; hostname"]);
    ex.namespaces = Namespaces::Join(main.id.clone());
    let (st, out, err) = run(&c, &agent, ex);
    assert_eq!(st, ok(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let exec_pid: u32 = lines[0].parse().unwrap();
    assert!(exec_pid > 1 && exec_pid < 10, "{out}");
    // sh (main), sh (exec), ls and grep: nothing from outside.
    assert_eq!(lines[1], "4", "{out}");
    assert_eq!(lines[2], "ctr");
    assert_ne!(nix_hostname(), "ctr");

    io.write_stdin(b"\n");
    assert_eq!(c.wait(&main.id), ok(0));
    io.stdout.as_ref().unwrap().wait_for("bye\n");

    // Joining a process that has exited is refused.
    let mut late = spec(&["true"]);
    late.namespaces = Namespaces::Join(main.id.clone());
    let late_io = HostStdio::new(&agent, false, false, false);
    late_io.apply(&mut late);
    c.call(&Call::CreateProcess(late.clone())).unwrap();
    let _ = late_io.accept();
    let e = start(&c, &late.id).unwrap_err();
    assert!(e.message.contains("not running"), "{}", e.message);
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn init_reaps_forwards_signals_and_reports_exec_failures() {
    need_root!();
    let agent = Agent::start();
    let c = agent.connect();
    // PID 1 of its namespace without a handler: SIGTERM is ignored.
    let mut bare = spec(&["sleep", "30"]);
    bare.namespaces = Namespaces::New;
    let _io = create(&c, &agent, &mut bare, false, true, true).unwrap();
    start(&c, &bare.id).unwrap();
    c.call(&Call::KillProcess(KillProcess {
        id: bare.id.clone(),
        signal: libc::SIGTERM,
    }))
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.call(&Call::KillProcess(KillProcess {
        id: bare.id.clone(),
        signal: libc::SIGKILL,
    }))
    .unwrap();
    assert_eq!(c.wait(&bare.id).signal, Some(libc::SIGKILL));

    // Behind --init the program is PID 2 and gets SIGTERM's default action.
    let mut s = spec(&["sh", "-c", "echo $$; sleep 30 & wait"]);
    s.namespaces = Namespaces::New;
    s.init = true;
    let io = create(&c, &agent, &mut s, false, true, true).unwrap();
    start(&c, &s.id).unwrap();
    io.stdout.as_ref().unwrap().wait_for("2\n");
    c.call(&Call::KillProcess(KillProcess {
        id: s.id.clone(),
        signal: libc::SIGTERM,
    }))
    .unwrap();
    assert_eq!(c.wait(&s.id), ok(128 + libc::SIGTERM));

    // A program that does not exist fails the start, as without --init.
    let mut missing = spec(&["no-such-program"]);
    missing.namespaces = Namespaces::New;
    missing.init = true;
    let _io = create(&c, &agent, &mut missing, false, true, true).unwrap();
    let e = start(&c, &missing.id).unwrap_err();
    assert_eq!(
        e.message,
        "exec: \"no-such-program\": executable file not found in $PATH"
    );
}
