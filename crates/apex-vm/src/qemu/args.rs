//! QEMU command line and guest kernel command line construction (pure functions).

use super::{virtiofs, NicBackend, VmConfig, CONSOLE_LOG, VHOST_SOCK};
use crate::accel::Accel;
use crate::assets::KernelFlavor;
use std::ffi::OsString;
use std::path::Path;

/// Guest `HZ` of the Debian cloud kernel; `lpj` is loops per jiffy.
/// `-sandbox` of every VM (see `qemu-system-x86_64 -sandbox`).
pub const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

const GUEST_HZ: u64 = 250;

/// Host TSC frequency in kHz for `tsc_early_khz=`: `$APEX_TSC_KHZ`, else the first
/// "cpu MHz" line of /proc/cpuinfo. Without it, TCG guests can hang in timer
/// calibration on a busy host (see PLATFORM-FACTS.md).
pub fn host_tsc_khz() -> Option<u64> {
    if let Some(v) = std::env::var("APEX_TSC_KHZ")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(v);
    }
    parse_cpuinfo_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_cpuinfo_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// What a kernel without ACPI skips (measured under TCG, see PLATFORM-FACTS.md): SMP
/// alternatives patching (~80 ms), LAPIC timer calibration (~108 ms; valid only without
/// ACPI) and the timer check (~108 ms). `quiet` keeps the kernel's informational lines
/// off the emulated UART, which takes one trap per character (~0.14 s of the boot under
/// TCG); warnings and errors still print, and `loglevel=7` later on the line (as
/// `APEX_GUEST_DEBUG` adds) brings everything back.
const MINIMAL_KERNEL_ARGS: [&str; 4] =
    ["noreplace-smp", "nolapic_timer", "no_timer_check", "quiet"];

/// The guest kernel command line: fixed console/panic/reboot/self-test settings, the
/// flavor's shortcuts, the calibration shortcut when `tsc_khz` is known, then
/// `cfg.cmdline`. (QEMU appends the virtio-mmio devices for a kernel without ACPI.)
pub fn kernel_cmdline(cfg: &VmConfig, tsc_khz: Option<u64>) -> String {
    // cryptomgr.notests skips the crypto self-tests: ~0.7 s of a ~2 s TCG boot.
    // random.trust_cpu seeds the crng from RDRAND (TCG's `max` CPU has it, as has every
    // x86-64 host CPU since 2012) so getrandom() does not wait about a second for jitter
    // entropy; a virtio-rng would take one of microvm's eight virtio-mmio slots.
    let mut parts: Vec<String> = [
        "console=ttyS0",
        "panic=-1",
        "reboot=t",
        "cryptomgr.notests",
        "random.trust_cpu=on",
    ]
    .map(String::from)
    .into();
    if cfg.kernel_flavor == KernelFlavor::Minimal {
        parts.extend(MINIMAL_KERNEL_ARGS.map(String::from));
    }
    if let Some(khz) = tsc_khz {
        parts.push(format!("tsc_early_khz={khz}"));
        parts.push(format!("lpj={}", khz * 1000 / GUEST_HZ));
    }
    parts.extend(cfg.cmdline.iter().cloned());
    parts.join(" ")
}

/// `APEX_QEMU_SANDBOX=off` (in apexd's environment) runs QEMU without its seccomp
/// filter: a diagnostic switch, and what `scripts/bench-sandbox.sh` compares against.
fn sandbox_disabled() -> bool {
    std::env::var("APEX_QEMU_SANDBOX").is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false"))
}

/// QEMU's option parser splits on `,`; a literal comma is written `,,`.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Full `qemu-system-x86_64` argument list for `cfg`.
pub fn qemu_args(cfg: &VmConfig, tsc_khz: Option<u64>) -> Vec<OsString> {
    let mib = cfg.memory_mib;
    let (accel, cpu) = match cfg.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mut a: Vec<String> = vec![
        "-accel".into(),
        accel.into(),
        "-M".into(),
        match cfg.kernel_flavor {
            KernelFlavor::Minimal => "microvm,acpi=off,memory-backend=mem".into(),
            KernelFlavor::Distro => "microvm,memory-backend=mem".into(),
        },
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        cfg.cpus.to_string(),
        "-m".into(),
        format!("{mib}M"),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        // QEMU's own seccomp filter: no obsolete syscalls, no privilege changes, no
        // fork/exec, no scheduler or resource-limit changes once the guest runs.
        "-sandbox".into(),
        if sandbox_disabled() {
            "off".into()
        } else {
            QEMU_SANDBOX.into()
        },
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-chardev".into(),
        format!("file,id=con,path={}", esc(&cfg.state_dir.join(CONSOLE_LOG))),
        "-serial".into(),
        "chardev:con".into(),
        "-chardev".into(),
        format!(
            "socket,id=vsock,path={}",
            esc(&cfg.state_dir.join(VHOST_SOCK))
        ),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
        // Pages the guest frees go back to the host (free page reporting).
        "-device".into(),
        "virtio-balloon-device,free-page-reporting=on".into(),
    ];
    for (i, d) in cfg.disks.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        a.push("-drive".into());
        a.push(format!(
            "id=disk{i},file={},format=raw,if=none{ro}",
            esc(&d.path)
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive=disk{i},serial={}", d.id));
    }
    for (i, sh) in cfg.shares.iter().enumerate() {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id={},path={}",
            virtiofs::chardev(i),
            esc(&virtiofs::socket(&cfg.state_dir, i))
        ));
        a.push("-device".into());
        a.push(format!(
            "vhost-user-fs-device,chardev={},tag={}",
            virtiofs::chardev(i),
            sh.tag
        ));
    }
    for n in &cfg.nics {
        a.push("-netdev".into());
        a.push(match &n.backend {
            NicBackend::Tap { ifname } => {
                format!("tap,id={},ifname={ifname},script=no,downscript=no", n.id)
            }
            NicBackend::User => format!("user,id={}", n.id),
        });
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev={},mac={}", n.id, n.mac));
    }
    let mut out: Vec<OsString> = a.into_iter().map(OsString::from).collect();
    out.push("-kernel".into());
    out.push(cfg.kernel.clone().into_os_string());
    out.push("-initrd".into());
    out.push(cfg.initrd.clone().into_os_string());
    out.push("-append".into());
    out.push(kernel_cmdline(cfg, tsc_khz).into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Disk;

    fn cfg() -> VmConfig {
        VmConfig {
            id: "t1".into(),
            cpus: 2,
            memory_mib: 256,
            kernel: "/k/vmlinuz".into(),
            kernel_flavor: KernelFlavor::Distro,
            initrd: "/c/initrd.cpio".into(),
            cmdline: vec!["quiet".into(), "apex.debug=1".into()],
            disks: vec![
                Disk {
                    path: "/img/root,1.erofs".into(),
                    read_only: true,
                    id: "rootfs".into(),
                },
                Disk {
                    path: "/img/upper.ext4".into(),
                    read_only: false,
                    id: "upper".into(),
                },
            ],
            state_dir: "/run/apex/t1".into(),
            accel: Accel::Tcg,
            guest_cid: 3,
            nics: vec![],
            shares: vec![],
        }
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn cpuinfo_parsing() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2299.998\ncache size\t: 1 KB\n";
        assert_eq!(parse_cpuinfo_khz(info), Some(2_299_998));
        assert_eq!(parse_cpuinfo_khz("processor: 0\n"), None);
    }

    #[test]
    fn cmdline() {
        let c = cfg();
        assert_eq!(
            kernel_cmdline(&c, Some(2_299_998)),
            "console=ttyS0 panic=-1 reboot=t cryptomgr.notests random.trust_cpu=on tsc_early_khz=2299998 lpj=9199992 quiet apex.debug=1"
        );
        assert_eq!(
            kernel_cmdline(&c, None),
            "console=ttyS0 panic=-1 reboot=t cryptomgr.notests random.trust_cpu=on quiet apex.debug=1"
        );
    }

    #[test]
    fn tcg_args() {
        let a = strings(qemu_args(&cfg(), Some(1000)));
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(after(&a, "-M"), ["microvm,memory-backend=mem"]);
        assert_eq!(after(&a, "-m"), ["256M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert!(a.contains(&"-nodefaults".to_string()) && a.contains(&"-no-reboot".to_string()));
        assert!(a
            .windows(2)
            .any(|w| w[0] == "-sandbox" && w[1] == QEMU_SANDBOX));
        assert_eq!(
            after(&a, "-chardev"),
            [
                "file,id=con,path=/run/apex/t1/console.log",
                "socket,id=vsock,path=/run/apex/t1/vhost.sock"
            ]
        );
        assert_eq!(after(&a, "-serial"), ["chardev:con"]);
        assert_eq!(
            after(&a, "-drive"),
            [
                "id=disk0,file=/img/root,,1.erofs,format=raw,if=none,readonly=on",
                "id=disk1,file=/img/upper.ext4,format=raw,if=none"
            ]
        );
        assert_eq!(
            after(&a, "-device"),
            [
                "vhost-user-vsock-device,chardev=vsock",
                "virtio-balloon-device,free-page-reporting=on",
                "virtio-blk-device,drive=disk0,serial=rootfs",
                "virtio-blk-device,drive=disk1,serial=upper"
            ]
        );
        assert_eq!(after(&a, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(after(&a, "-initrd"), ["/c/initrd.cpio"]);
        assert_eq!(after(&a, "-append"), [kernel_cmdline(&cfg(), Some(1000))]);
        assert!(after(&a, "-append")[0].contains("lpj=4000 "));
        assert!(!after(&a, "-append")[0].contains("nolapic_timer"));
    }

    #[test]
    fn minimal_kernel_boots_without_acpi() {
        let c = VmConfig {
            kernel_flavor: KernelFlavor::Minimal,
            ..cfg()
        };
        let a = strings(qemu_args(&c, None));
        assert_eq!(after(&a, "-M"), ["microvm,acpi=off,memory-backend=mem"]);
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0 panic=-1 reboot=t cryptomgr.notests random.trust_cpu=on noreplace-smp nolapic_timer no_timer_check quiet quiet apex.debug=1"]
        );
    }

    #[test]
    fn nic_args() {
        use crate::qemu::Nic;
        let a = strings(qemu_args(&cfg(), None));
        assert!(after(&a, "-netdev").is_empty());
        let mut c = cfg();
        c.nics = vec![
            Nic {
                id: "net0".into(),
                mac: "02:42:0a:58:00:02".into(),
                backend: NicBackend::Tap {
                    ifname: "apxt0".into(),
                },
            },
            Nic {
                id: "net1".into(),
                mac: "02:00:00:00:00:09".into(),
                backend: NicBackend::User,
            },
        ];
        let a = strings(qemu_args(&c, None));
        assert_eq!(
            after(&a, "-netdev"),
            [
                "tap,id=net0,ifname=apxt0,script=no,downscript=no",
                "user,id=net1"
            ]
        );
        assert_eq!(
            &after(&a, "-device")[4..],
            [
                "virtio-net-device,netdev=net0,mac=02:42:0a:58:00:02",
                "virtio-net-device,netdev=net1,mac=02:00:00:00:00:09"
            ]
        );
        // NICs come after the disks, before the kernel.
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert!(pos("-netdev") > pos("-drive") && pos("-netdev") < pos("-kernel"));
    }

    #[test]
    fn share_args() {
        use crate::qemu::{Share, ShareKind};
        let mut c = cfg();
        c.shares = vec![Share {
            tag: "apexfs0".into(),
            path: "/srv".into(),
            kind: ShareKind::Dir,
            read_only: true,
        }];
        let a = strings(qemu_args(&c, None));
        assert_eq!(
            after(&a, "-chardev")[2],
            "socket,id=fs0,path=/run/apex/t1/fs0.sock"
        );
        assert_eq!(
            after(&a, "-device")[4],
            "vhost-user-fs-device,chardev=fs0,tag=apexfs0"
        );
    }

    #[test]
    fn kvm_args() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        let a = strings(qemu_args(&c, None));
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }
}
