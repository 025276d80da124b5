//! VM-level benchmarks (not tests), driven by `scripts/bench-run.sh`:
//! - `bare`: QEMU + kernel + an init that powers off at once (the lower bound), with
//!   Apex's kernel and with Debian's, alternating in one run;
//! - `agent`: QEMU start to the guest agent answering `ping` on vsock (apex-init);
//! - `memory`: host PSS of QEMU and its vsock backend per idle container VM.
//!
//! Usage: vm-bench --rootfs IMG.erofs [--runs N] [--vms K]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apex_agent_proto::{CONTROL_PORT, READY_PORT};
use apex_runtime::agent::AgentClient;
use apex_runtime::sandbox::{cache_dir, locate_init};
use apex_vm::{
    initramfs, wait_for_agent, Disk, KernelAssets, KernelChoice, QemuProvider, Vm, VmConfig,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Proportional set size in KiB (`/proc/PID/smaps_rollup`): QEMU's binary and libraries
/// are shared between VMs, so RSS would count them once per VM.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn config(id: &str, kernel: &KernelAssets, initrd: &Path, rootfs: &Path, dir: &Path) -> VmConfig {
    let mut c = VmConfig::new(id, kernel, initrd, &dir.join(id));
    c.disks.push(Disk {
        id: "root".into(),
        path: rootfs.to_path_buf(),
        read_only: true,
    });
    c.cmdline = vec![
        "apex.root=/dev/vda".into(),
        "apex.rootfstype=erofs".into(),
        "apex.hostname=bench".into(),
    ];
    c
}

#[tokio::main]
async fn main() -> Result<()> {
    let rootfs = PathBuf::from(arg("--rootfs").context("--rootfs IMG.erofs required")?);
    let runs: usize = arg("--runs").map_or(Ok(5), |s| s.parse())?;
    let vms: usize = arg("--vms").map_or(Ok(3), |s| s.parse())?;
    let kernel = KernelAssets::locate()?;
    let debian = KernelAssets::resolve(&KernelChoice::Debian)?;
    let init = locate_init()?;
    let poweroff = init.with_file_name("apex-poweroff");
    let cache = cache_dir();
    let real = initramfs::build(&init, &kernel, &cache)?;
    let bare = initramfs::build(&poweroff, &kernel, &cache)?;
    let bare_debian = initramfs::build(&poweroff, &debian, &cache)?;
    let provider = QemuProvider::new()?;
    let work = tempfile::tempdir()?;

    let (mut bare_t, mut bare_debian_t) = (Vec::new(), Vec::new());
    // Alternating, so that both bounds see the same machine load.
    for i in 0..runs {
        for (tag, k, initrd, times) in [
            ("b", &kernel, &bare, &mut bare_t),
            ("d", &debian, &bare_debian, &mut bare_debian_t),
        ] {
            let cfg = config(&format!("{tag}{i}"), k, initrd, &rootfs, work.path());
            let t0 = Instant::now();
            let mut vm = provider.start_vm(cfg).await?;
            vm.wait().await?;
            times.push(t0.elapsed().as_secs_f64());
        }
    }

    let (mut agent_t, mut down_t) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let cfg = config(&format!("a{i}"), &kernel, &real, &rootfs, work.path());
        let t0 = Instant::now();
        let mut vm = provider.start_vm(cfg).await?;
        let s = wait_for_agent(&vm, READY_PORT, CONTROL_PORT, Duration::from_secs(60)).await?;
        let agent = AgentClient::new(s);
        agent.ping().await?;
        agent_t.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        agent.shutdown().await?;
        vm.wait().await?;
        down_t.push(t1.elapsed().as_secs_f64());
    }

    let mut running = Vec::new();
    for i in 0..vms {
        let cfg = config(&format!("m{i}"), &kernel, &real, &rootfs, work.path());
        let vm = provider.start_vm(cfg).await?;
        let s = wait_for_agent(&vm, READY_PORT, CONTROL_PORT, Duration::from_secs(120)).await?;
        running.push((vm, AgentClient::new(s)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut qemu_kib, mut backend_kib) = (0, 0);
    for (vm, _) in &running {
        qemu_kib += pss_kib(vm.pid());
        backend_kib += pss_kib(vm.backend_pid());
    }
    let guest_used = running[0].1.stats().await?.memory_usage_bytes;
    for (mut vm, agent) in running {
        let _ = agent.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), vm.wait()).await;
        vm.kill().await;
    }

    println!("bare_boot_s {:.3}", median(bare_t));
    println!("bare_boot_debian_s {:.3}", median(bare_debian_t));
    println!("boot_to_agent_s {:.3}", median(agent_t));
    println!("agent_shutdown_s {:.3}", median(down_t));
    println!("idle_vms {vms}");
    println!(
        "qemu_pss_mib_per_vm {:.1}",
        qemu_kib as f64 / 1024.0 / vms as f64
    );
    println!(
        "backend_pss_mib_per_vm {:.1}",
        backend_kib as f64 / 1024.0 / vms as f64
    );
    println!("guest_used_mib {:.1}", guest_used as f64 / (1 << 20) as f64);
    Ok(())
}
