//! Container lifecycle through apexd and its per-container helpers, end to end: the real
//! `apex` CLI, `apexd`, `apex-shim`, QEMU (TCG here) and the guest init.

use std::time::Duration;

use apex_e2e::apex::RunOutput;
use apex_e2e::env::{eventually, BusyboxEnv};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(90);

fn apex(e: &BusyboxEnv, args: &[&str]) -> RunOutput {
    e.home.run(args)
}

fn json(e: &BusyboxEnv, args: &[&str]) -> Value {
    let out = apex(e, args);
    out.assert_ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|err| panic!("{err}: {out:?}"))
}

/// `apex inspect` of one container.
fn inspect(e: &BusyboxEnv, c: &str) -> Value {
    json(e, &["inspect", c])[0].clone()
}

fn state(e: &BusyboxEnv, c: &str) -> String {
    inspect(e, c)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the container's log contains `needle`.
fn wait_log(e: &BusyboxEnv, c: &str, needle: &str) -> String {
    eventually(BOOT, &format!("{needle:?} in the logs of {c}"), || {
        let out = apex(e, &["logs", c]);
        out.stdout.contains(needle).then_some(out.stdout)
    })
}

#[test]
fn detached_containers_names_logs_exec_stop_start_rm() {
    let e = BusyboxEnv::new();
    let script = "echo started; echo to-stderr >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done";
    let out = apex(
        &e,
        &["run", "-d", "--name", "web", &e.image, "sh", "-c", script],
    );
    out.assert_ok();
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {out:?}");

    // Names are unique.
    let dup = apex(&e, &["create", "--name", "web", &e.image, "true"]);
    dup.assert_failure();
    assert!(dup.stderr.contains("already in use"), "{dup:?}");

    // Listed as running; reachable by name and by a short id prefix.
    let ls = json(&e, &["ls", "--format", "json"]);
    let rows = ls.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{ls}");
    assert_eq!(rows[0]["name"], "web");
    assert_eq!(rows[0]["state"], "running");
    assert_eq!(inspect(&e, &id[..6])["name"], "web");

    let logs = wait_log(&e, "web", "tick 2");
    assert!(logs.starts_with("started\n"), "{logs}");
    let err_only = apex(&e, &["logs", "web"]).stderr;
    assert!(
        err_only.contains("to-stderr"),
        "stderr lines go to stderr: {err_only}"
    );
    let tail = apex(&e, &["logs", "--tail", "1", "web"]);
    assert_eq!(tail.stdout.lines().count(), 1, "{tail:?}");
    let ts = apex(&e, &["logs", "-t", "--tail", "1", "web"]).stdout;
    let stamp = ts.split_whitespace().next().unwrap_or_default();
    assert!(
        chrono_like(stamp),
        "timestamps are RFC 3339 with nanoseconds: {ts:?}"
    );

    // exec: output, exit code, environment and hostname of the container, stdin.
    let out = apex(&e, &["exec", "web", "cat", "/etc/hostname"]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "web");
    let out = apex(&e, &["exec", "web", "sh", "-c", "echo $PATH; exit 7"]);
    assert_eq!(out.code, Some(7), "{out:?}");
    assert!(out.stdout.contains("/bin"), "{out:?}");
    let out = apex(&e, &["exec", "web", "no-such-binary"]);
    assert_eq!(out.code, Some(127), "{out:?}");

    // stats come from the guest.
    let st = json(&e, &["stats", "--no-stream", "--format", "json", "web"]);
    let row = &st.as_array().expect("stats rows")[0];
    assert!(row.to_string().contains("memory"), "{st}");

    // logs -f follows until the container stops.
    let mut follow = e.home.cmd();
    follow.args(["logs", "-f", "web"]);
    follow.stdout(std::process::Stdio::piped());
    let child = follow.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let stop = apex(&e, &["stop", "-t", "2", "web"]);
    stop.assert_ok();
    let followed = child.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.contains("started") && followed.contains("tick"),
        "{followed}"
    );

    // Stopped: not in `ls`, in `ls -a` with its exit code; logs are kept.
    assert_eq!(json(&e, &["ls", "--format", "json"]), Value::Array(vec![]));
    let rec = inspect(&e, "web");
    assert_eq!(rec["state"], "exited");
    assert!(
        matches!(rec["exit_code"].as_i64(), Some(143) | Some(137)),
        "{rec}"
    );
    assert!(apex(&e, &["logs", "web"]).stdout.contains("tick 1"));

    // Start again: the same container runs anew and its log continues.
    apex(&e, &["start", "web"]).assert_ok();
    assert_eq!(state(&e, "web"), "running");
    eventually(BOOT, "a second 'started' line", || {
        (apex(&e, &["logs", "web"]).stdout.matches("started").count() == 2).then_some(())
    });

    // rm refuses a running container without -f.
    let rm = apex(&e, &["rm", "web"]);
    rm.assert_failure();
    assert!(rm.stderr.contains("running"), "{rm:?}");
    apex(&e, &["rm", "-f", "web"]).assert_ok();
    let gone = apex(&e, &["inspect", "web"]);
    gone.assert_failure();
    assert!(gone.stderr.contains("no such container"), "{gone:?}");
    assert!(!e.path().join("containers").join(&id[..12]).exists());

    // prune removes exited and created containers only.
    apex(&e, &["create", "--name", "idle", &e.image, "true"]).assert_ok();
    let out = apex(&e, &["run", "--name", "done", &e.image, "true"]);
    out.assert_ok();
    apex(&e, &["container", "prune", "-f"]).assert_ok();
    assert_eq!(
        json(&e, &["ls", "-a", "--format", "json"]),
        Value::Array(vec![])
    );
}

fn chrono_like(s: &str) -> bool {
    // 2026-11-24T18:51:30.134483909Z
    s.len() == 30 && s.as_bytes()[10] == b'T' && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

#[test]
fn restart_policies() {
    let e = BusyboxEnv::new();
    // on-failure:2 restarts a failing container twice, then leaves it exited.
    apex(
        &e,
        &[
            "run",
            "-d",
            "--name",
            "flaky",
            "--restart",
            "on-failure:2",
            &e.image,
            "sh",
            "-c",
            "echo attempt; exit 3",
        ],
    )
    .assert_ok();
    let rec = eventually(Duration::from_secs(120), "flaky to give up", || {
        let r = inspect(&e, "flaky");
        (r["state"] == "exited" && r["restart_count"] == 2).then_some(r)
    });
    assert_eq!(rec["exit_code"], 3, "{rec}");
    assert_eq!(
        apex(&e, &["logs", "flaky"])
            .stdout
            .matches("attempt")
            .count(),
        3
    );

    // always restarts even a successful exit; an explicit stop ends it.
    apex(
        &e,
        &[
            "run",
            "-d",
            "--name",
            "loop",
            "--restart",
            "always",
            &e.image,
            "true",
        ],
    )
    .assert_ok();
    eventually(Duration::from_secs(120), "loop to be restarted", || {
        (inspect(&e, "loop")["restart_count"].as_u64() >= Some(1)).then_some(())
    });
    apex(&e, &["stop", "loop"]).assert_ok();
    let r = inspect(&e, "loop");
    let count = r["restart_count"].as_u64();
    std::thread::sleep(Duration::from_secs(2));
    let r2 = inspect(&e, "loop");
    assert_eq!(r2["state"], "exited", "{r2}");
    assert_eq!(
        r2["restart_count"].as_u64(),
        count,
        "no restart after stop: {r} {r2}"
    );

    // no (the default): an exit stays an exit.
    let out = apex(
        &e,
        &["run", "--name", "once", &e.image, "sh", "-c", "exit 4"],
    );
    assert_eq!(out.code, Some(4), "{out:?}");
    let r = inspect(&e, "once");
    assert_eq!(
        (r["state"].as_str(), r["restart_count"].as_u64()),
        (Some("exited"), Some(0))
    );
}
