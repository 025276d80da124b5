//! Real VM tests (QEMU microvm; TCG unless `APEX_ACCEL=kvm`). Skipped with a message
//! when the kernel assets, QEMU or the vsock backend are not installed.

use apex_vm::initramfs::{self, ExtraFile};
use apex_vm::{
    accel, wait_for_agent, Accel, Disk, KernelAssets, QemuProvider, Vm, VmConfig, VmError,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    kernel: KernelAssets,
    provider: QemuProvider,
    tmp: tempfile::TempDir,
}

fn env() -> Option<Env> {
    let kernel = match KernelAssets::locate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("SKIP: {e:#}");
            return None;
        }
    };
    let provider = match QemuProvider::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP: {e:#}");
            return None;
        }
    };
    Some(Env {
        kernel,
        provider,
        tmp: tempfile::tempdir().unwrap(),
    })
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// An initramfs whose /init is `script` run by busybox, plus `extra` files.
    fn initrd(&self, script: &str, extra: &[ExtraFile]) -> PathBuf {
        let init = self.path("init.sh");
        std::fs::write(&init, format!("#!/bin/busybox sh\n{PRELUDE}{script}")).unwrap();
        let mut files = vec![ExtraFile {
            dest: "/bin/busybox".into(),
            src: "/bin/busybox".into(),
            mode: 0o755,
        }];
        files.extend_from_slice(extra);
        initramfs::build_with(&init, &self.kernel, &self.path("cache"), &files).unwrap()
    }

    fn config(&self, initrd: &Path) -> VmConfig {
        let mut cfg = VmConfig::new("test", &self.kernel, initrd, &self.path("state"));
        cfg.accel = accel::from_env().unwrap_or(Accel::Tcg);
        cfg
    }
}

/// Mounts the API filesystems, prints the marker, loads the modules in load order (if any).
const PRELUDE: &str = r#"
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo APEX-TEST-BOOT-OK
# A distribution kernel's drivers are modules; Apex's kernel has them built in (no list).
[ -f /lib/modules/load-order ] && while read -r a b; do
  m=${b:-$a}  # on-demand lines read "@group path": load those too
  insmod "$m" 2>/tmp/err || echo "MODULE-FAIL $m $(cat /tmp/err)"
done < /lib/modules/load-order
echo "MODULES-LOADED $(wc -l < /proc/modules)"
"#;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn console(vm: &dyn Vm) -> String {
    std::fs::read_to_string(vm.console_log())
        .unwrap_or_default()
        .replace('\r', "")
}

/// Polls the console until `marker` appears; returns the time it took.
async fn time_to_marker(vm: &dyn Vm, marker: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if console(vm).contains(marker) {
            return Some(t0.elapsed());
        }
        if vm.exit_status().is_some() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn boots_and_sees_its_devices_and_disks() {
    let Some(env) = env() else { return };
    let content = env.path("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello.txt"), "hello-from-erofs\n").unwrap();
    let erofs = env.path("root.erofs");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&erofs)
        .arg(&content));
    let ext4 = env.path("scratch.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&ext4)
        .arg("8M"));

    let initrd = env.initrd(
        r#"
echo "VIRTIO-COUNT $(ls /sys/bus/virtio/devices | wc -l)"
for d in /sys/bus/virtio/devices/*; do echo "VIRTIO-DEV $(cat $d/device)"; done
for b in vda vdb; do echo "DISK $b $(cat /sys/block/$b/serial) ro=$(cat /sys/block/$b/ro)"; done
mount -t erofs -o ro /dev/vda /mnt && echo "EROFS $(cat /mnt/hello.txt)"
echo APEX-TEST-DONE
reboot -f
"#,
        &[],
    );
    let mut cfg = env.config(&initrd);
    cfg.disks = vec![
        Disk {
            path: erofs,
            read_only: true,
            id: "rootfs".into(),
        },
        Disk {
            path: ext4,
            read_only: false,
            id: "scratch".into(),
        },
    ];
    let t0 = Instant::now();
    let mut vm = env.provider.start_vm(cfg).await.unwrap();
    let (qemu_pid, backend_pid) = (vm.pid(), vm.backend_pid());
    assert!(alive(qemu_pid) && alive(backend_pid));

    let marker = time_to_marker(&vm, "APEX-TEST-BOOT-OK", Duration::from_secs(60)).await;
    eprintln!("boot to marker: {marker:?}");
    let status = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .unwrap_or_else(|_| panic!("VM did not exit:\n{}", vm.boot_log_tail(40)))
        .unwrap();
    eprintln!("boot to exit: {:?}", t0.elapsed());
    let log = console(&vm);
    assert!(status.success(), "{status}\n{log}");
    assert!(marker.is_some(), "{log}");
    assert!(log.contains("APEX-TEST-DONE"), "{log}");
    assert!(!log.contains("MODULE-FAIL"), "{log}");
    // vsock, the balloon and two disks.
    assert!(log.contains("VIRTIO-COUNT 4"), "{log}");
    assert!(log.contains("VIRTIO-DEV 0x0013"), "vsock missing: {log}");
    assert!(log.contains("VIRTIO-DEV 0x0005"), "balloon missing: {log}");
    assert!(log.contains("DISK vda rootfs ro=1"), "{log}");
    assert!(log.contains("DISK vdb scratch ro=0"), "{log}");
    assert!(log.contains("EROFS hello-from-erofs"), "{log}");

    // Everything is gone once wait() returned; the state dir can be removed.
    assert!(!alive(qemu_pid), "qemu {qemu_pid} still running");
    assert!(!alive(backend_pid), "backend {backend_pid} still running");
    let state = vm.state_dir().to_path_buf();
    assert!(!state.join("vsock.sock").exists() && !state.join("vhost.sock").exists());
    drop(vm);
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test]
async fn watchdog_reports_boot_timeout_with_console_tail() {
    let Some(env) = env() else { return };
    let initrd = env.initrd(
        "echo APEX-TEST-WAITING\nwhile true; do sleep 1000; done\n",
        &[],
    );
    let vm = env.provider.start_vm(env.config(&initrd)).await.unwrap();
    let (qemu_pid, backend_pid) = (vm.pid(), vm.backend_pid());
    let timeout = Duration::from_secs(10);
    let t0 = Instant::now();
    let err = wait_for_agent(&vm, 1023, 1024, timeout).await.unwrap_err();
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(3),
        "{elapsed:?}"
    );
    let msg = err.to_string();
    assert!(matches!(err, VmError::BootTimeout { .. }), "{msg}");
    assert!(msg.contains("APEX-TEST-WAITING"), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    drop(vm);
    assert!(
        !alive(qemu_pid) && !alive(backend_pid),
        "processes survived drop"
    );
}

#[tokio::test]
async fn watchdog_reports_early_exit() {
    let Some(env) = env() else { return };
    let initrd = env.initrd("echo APEX-TEST-GOING-DOWN\nreboot -f\n", &[]);
    let vm = env.provider.start_vm(env.config(&initrd)).await.unwrap();
    let t0 = Instant::now();
    let err = wait_for_agent(&vm, 1023, 1024, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(40));
    let msg = err.to_string();
    assert!(matches!(err, VmError::QemuExited { .. }), "{msg}");
    assert!(msg.contains("APEX-TEST-GOING-DOWN"), "{msg}");
}

const VSOCK_ECHO_C: &str = r#"
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = 5000};
    int c = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) == 0) {
        if (write(c, "hello-from-guest\n", 17) != 17) perror("write");
    } else perror("connect to host");
    close(c);
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    a.svm_cid = VMADDR_CID_ANY;
    a.svm_port = 1024;
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8)) { perror("listen"); return 1; }
    printf("VSOCK-LISTENING\n");
    fflush(stdout);
    /* The readiness signal wait_for_agent waits for. */
    int r = socket(AF_VSOCK, SOCK_STREAM, 0);
    a.svm_cid = 2;
    a.svm_port = 1023;
    if (connect(r, (struct sockaddr *)&a, sizeof a)) perror("ready");
    close(r);
    for (;;) {
        int f = accept(s, 0, 0);
        char buf[4096];
        ssize_t n;
        while ((n = read(f, buf, sizeof buf)) > 0) write(f, buf, n);
        close(f);
    }
}
"#;

/// Builds the static vsock echo helper with gcc; `None` (skip) without gcc.
fn vsock_echo(env: &Env) -> Option<ExtraFile> {
    let src = env.path("vsock-echo.c");
    let bin = env.path("vsock-echo");
    std::fs::write(&src, VSOCK_ECHO_C).unwrap();
    match Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Some(ExtraFile {
            dest: "/bin/vsock-echo".into(),
            src: bin,
            mode: 0o755,
        }),
        other => {
            eprintln!("SKIP: cannot build static vsock helper with gcc: {other:?}");
            None
        }
    }
}

#[tokio::test]
async fn vsock_both_directions() {
    let Some(env) = env() else { return };
    let Some(echo) = vsock_echo(&env) else { return };
    let initrd = env.initrd("exec /bin/vsock-echo\n", &[echo]);
    let t0 = Instant::now();
    let mut vm = env.provider.start_vm(env.config(&initrd)).await.unwrap();
    let listener = vm.listen(5000).unwrap();

    let mut s = wait_for_agent(&vm, 1023, 1024, Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!("start to agent connection: {:?}", t0.elapsed());
    s.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping\n");

    // Guest -> host connection (made before the guest started listening).
    let (mut g, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut hello = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(10), g.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&hello, b"hello-from-guest\n");
    // The guest closed its end: the host sees EOF.
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut rest)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "no EOF after guest close: {eof:?}"
    );

    // Closing the first connection ends the (single-threaded) guest echo loop; a
    // second connection on the same port then works too.
    drop(s);
    let mut s2 = vm.connect(1024, Duration::from_secs(10)).await.unwrap();
    s2.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s2.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"again");

    let (qemu_pid, backend_pid) = (vm.pid(), vm.backend_pid());
    vm.kill().await;
    assert!(!alive(qemu_pid) && !alive(backend_pid));
    assert!(vm.exit_status().is_some());
}

#[tokio::test]
async fn kvm_probe_terminates() {
    let Some(env) = env() else { return };
    let Some(echo) = vsock_echo(&env) else { return };
    let initrd = env.initrd("exec /bin/vsock-echo\n", &[echo]);
    let base = env.config(&initrd);
    let t0 = Instant::now();
    let timeout = Duration::from_secs(8);
    let accel = accel::probe_kvm(&env.provider, &base, timeout).await;
    eprintln!("probe: {accel} in {:?}", t0.elapsed());
    assert!(t0.elapsed() < timeout + Duration::from_secs(5));
    let leftovers = Command::new("pgrep")
        .args(["-f", &base.state_dir.to_string_lossy()])
        .output();
    if let Ok(o) = leftovers {
        assert!(
            o.stdout.is_empty(),
            "probe left processes: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
