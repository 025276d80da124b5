//! The PID 1 boot sequence: pseudo filesystems, kernel parameters, loopback, hostname,
//! modules (a distribution kernel only), free page reporting, the image rootfs under an
//! overlay on the writable layer, and the container root's mounts.
//! Every step is logged with its duration; failures are logged and the boot goes on, so
//! the agent comes up and the host can see what went wrong.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline::BootParams;
use crate::log::step;
use crate::mounts::{mkdir_p, setup_container_root, write_etc_files};
use crate::{modules, net, sys};

/// The guest's own state: mount points of the container's layers and shares.
const APEX_RUN: &str = "/run/apex";
/// Read-only image rootfs mount point.
pub const LOWER: &str = "/run/apex/lower";
/// The writable layer holding the overlay's `upper/` and `work/`: the container's ext4
/// disk, or a tmpfs.
pub const RW: &str = "/run/apex/rw";
/// The container root (overlay of the two).
pub const ROOT: &str = "/run/apex/root";
/// Hostname when the command line sets none.
pub const DEFAULT_HOSTNAME: &str = "apex";

/// What the boot produced.
pub struct Booted {
    /// The container root.
    pub root: PathBuf,
    /// Mount points to unmount at shutdown, innermost last.
    pub mounts: Vec<PathBuf>,
}

fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    mkdir_p(Path::new(target), 0o755)?;
    match sys::mount(source, Path::new(target), fstype, flags, data) {
        // Already mounted (e.g. devtmpfs automounted by the kernel).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

/// Runs the boot sequence.
pub fn boot() -> Booted {
    let t0 = Instant::now();
    let common = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // /dev first, so that the console can be opened if the kernel found none.
    let dev_ok = mount_at(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    );
    sys::ensure_std_fds();
    crate::info!("starting (version {})", env!("CARGO_PKG_VERSION"));
    if let Err(e) = dev_ok {
        crate::info!("mount /dev: FAILED: {e}");
    }
    step("mount /proc", || {
        mount_at("proc", "/proc", "proc", common, None)
    });
    step("mount /sys", || {
        mount_at("sysfs", "/sys", "sysfs", common, None)
    });
    step("mount /dev/pts", || {
        mount_at(
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
    });
    step("mount /dev/shm", || {
        mount_at("shm", "/dev/shm", "tmpfs", common, Some("mode=1777"))
    });
    step("mount /run", || {
        mount_at(
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        )
    });
    step("mount /sys/fs/cgroup", || {
        mount_at("cgroup2", "/sys/fs/cgroup", "cgroup2", common, None)
    });

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = BootParams::parse(&cmdline);
    crate::log::set_debug(params.debug);
    crate::debug!("kernel command line: {}", cmdline.trim());

    step("loopback up", || net::link_up("lo"));
    let hostname = params
        .hostname
        .clone()
        .unwrap_or_else(|| DEFAULT_HOSTNAME.into());
    step(&format!("hostname {hostname}"), || {
        net::set_hostname(&hostname)
    });
    // Apex's own kernel has every driver built in and ships no modules; a distribution
    // kernel (`apex system kernel set --debian`) has its virtio drivers as modules.
    if Path::new(modules::LOAD_ORDER).exists() {
        step("load modules", || -> Result<String, String> {
            let (ok, failed) = modules::load_all();
            match failed {
                0 => Ok(format!("{ok} loaded")),
                n => Err(format!("{n} failed, {ok} loaded")),
            }
        });
    }

    step(
        "free page reporting in 2 MiB blocks",
        report_free_pages_by_2mib,
    );

    let mut mounts = Vec::new();
    match &params.root {
        Some(dev) => {
            let upper = params.upper.as_deref();
            let what = match upper {
                Some(u) => format!("rootfs {dev} ({}), writable layer {u}", params.rootfstype),
                None => format!(
                    "rootfs {dev} ({}), writable layer in RAM",
                    params.rootfstype
                ),
            };
            if step(&what, || mount_rootfs(dev, &params.rootfstype, upper)).is_some() {
                mounts.extend([LOWER, RW, ROOT].map(PathBuf::from));
            }
        }
        None => {
            crate::info!("no apex.root= on the command line: empty container root");
            let _ = mkdir_p(Path::new(ROOT), 0o755);
        }
    }
    mounts.extend(setup_container_root(Path::new(ROOT)));
    step("container /etc/hostname and /etc/hosts", || {
        write_etc_files(Path::new(ROOT), &hostname)
    });
    crate::info!("boot done in {:.1} ms", t0.elapsed().as_secs_f64() * 1000.0);
    Booted {
        root: PathBuf::from(ROOT),
        mounts,
    }
}

/// The balloon driver reports free pages to the host in blocks of the pageblock order,
/// 4 MiB in a kernel without huge pages, so memory freed in a fragmented way largely
/// stays with the guest. 2 MiB blocks (order 9) hand most of it back; the setting is a
/// module parameter that may be changed at run time. A kernel without reporting has no
/// such file: nothing to do.
fn report_free_pages_by_2mib() -> io::Result<()> {
    const PARAM: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
    match std::fs::write(PARAM, "9") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Waits for `dev` to appear (virtio probing may lag module loading).
fn wait_device(dev: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(dev).exists() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{dev} did not appear"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Mounts `dev` read-only at [`LOWER`], the writable layer at [`RW`] (the ext4 disk
/// `upper`, else a tmpfs) and the overlay at [`ROOT`].
fn mount_rootfs(dev: &str, fstype: &str, upper: Option<&str>) -> io::Result<()> {
    wait_device(dev)?;
    mount_at(dev, LOWER, fstype, libc::MS_RDONLY, None)
        .map_err(|e| io::Error::new(e.kind(), format!("mount {dev} on {LOWER}: {e}")))?;
    match upper {
        // noinit_itable: the host made the filesystem sparse and lazily initialized; do
        // not spend guest CPU zeroing inode tables in the background.
        Some(u) => wait_device(u)
            .and_then(|()| mount_at(u, RW, "ext4", libc::MS_NOATIME, Some("noinit_itable")))
            .map_err(|e| io::Error::new(e.kind(), format!("mount {u} on {RW}: {e}")))?,
        None => mount_at("tmpfs", RW, "tmpfs", 0, Some("mode=0755,size=50%"))
            .map_err(|e| io::Error::new(e.kind(), format!("mount tmpfs on {RW}: {e}")))?,
    }
    mkdir_p(&Path::new(RW).join("upper"), 0o755)?;
    mkdir_p(&Path::new(RW).join("work"), 0o755)?;
    // Paths relative to /run/apex: the options show in the container's mount table, which
    // should not name the guest's directories.
    let data = "lowerdir=lower,upperdir=rw/upper,workdir=rw/work";
    std::env::set_current_dir(APEX_RUN)?;
    let mounted = mount_at("overlay", ROOT, "overlay", 0, Some(data));
    std::env::set_current_dir("/")?;
    mounted.map_err(|e| io::Error::new(e.kind(), format!("mount overlay on {ROOT}: {e}")))
}
