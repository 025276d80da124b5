//! Host-side resource caps of one container: its helper, QEMU and backends share a
//! cgroup of their own, `apex/<bundle name>` below the cgroup the helper was started in, with
//! CPU capped to the VM's vCPUs and memory to the guest's RAM plus [`VMM_OVERHEAD_MIB`].
//! A runaway guest or VMM then cannot take more of the host than it was given.
//!
//! Both layouts are handled: the unified (v2) hierarchy when it has the `cpu` and
//! `memory` controllers, else the v1 `cpu` and `memory` hierarchies (the hybrid layout
//! of hosts whose v2 mount has no controllers). Where neither is writable, containers
//! run uncapped and the helper logs why.
//!
//! Hand-written (a few files under /sys/fs/cgroup): the cgroups crates on crates.io
//! either wrap systemd or pull in far more than these writes need.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Memory the VMM needs beyond the guest's RAM: QEMU's code and heap, TCG's translation
/// cache, the vsock backend and virtiofsd, and the helper (measured: 100-140 MiB for an
/// idle container under TCG).
pub const VMM_OVERHEAD_MIB: u64 = 256;
/// The CFS period the CPU quota is expressed in (microseconds).
const CPU_PERIOD_US: u64 = 100_000;

/// What a container may use on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Host CPUs (the VM's vCPUs).
    pub cpus: u32,
    /// Guest RAM in MiB ([`VMM_OVERHEAD_MIB`] is added).
    pub memory_mib: u64,
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_mib + VMM_OVERHEAD_MIB) << 20
    }
}

/// One container's cgroup: a directory per hierarchy that carries its controllers.
#[derive(Debug)]
pub struct Cgroup {
    /// The CPU controller's directory.
    cpu: PathBuf,
    /// The memory controller's directory (the same as `cpu` on v2).
    memory: PathBuf,
    /// The unified hierarchy.
    v2: bool,
}

/// Where the controllers of this process live: `(cpu dir, memory dir, v2)`.
fn current(mounts: &str, cgroups: &str) -> Option<(PathBuf, PathBuf, bool)> {
    // mountinfo: ... mount-point ... - fstype source super-options
    let mut v1: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let mut v2: Option<PathBuf> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (point, fstype) = (f.get(4)?, f.get(dash + 1)?);
        match *fstype {
            "cgroup2" => v2 = Some(PathBuf::from(point)),
            "cgroup" => {
                let opts = f.get(dash + 3).copied().unwrap_or_default();
                v1.push((
                    PathBuf::from(point),
                    opts.split(',').map(String::from).collect(),
                ));
            }
            _ => {}
        }
    }
    let path_of = |key: &str| {
        cgroups.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            ctrls
                .split(',')
                .any(|c| c == key)
                .then(|| path.trim_start_matches('/').to_string())
        })
    };
    if let Some(root) = &v2 {
        let ctrls = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| ctrls.split_whitespace().any(|x| x == c);
        if has("cpu") && has("memory") {
            let dir = root.join(path_of("").unwrap_or_default());
            return Some((dir.clone(), dir, true));
        }
    }
    let find = |ctrl: &str| {
        let (point, _) = v1.iter().find(|(_, o)| o.iter().any(|x| x == ctrl))?;
        Some(point.join(path_of(ctrl)?))
    };
    Some((find("cpu")?, find("memory")?, false))
}

/// [`current`] for this process.
fn own() -> Option<(PathBuf, PathBuf, bool)> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    current(&mounts, &cgroups)
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

impl Cgroup {
    /// Creates (or reuses) `apex/<name>` next to this process's cgroup, with `limits`.
    pub fn create(name: &str, limits: Limits) -> io::Result<Cgroup> {
        let (cpu_base, mem_base, v2) = own().ok_or_else(|| {
            io::Error::other("no cgroup hierarchy with the cpu and memory controllers")
        })?;
        let sub = Path::new("apex").join(name);
        let (cpu, memory) = (cpu_base.join(&sub), mem_base.join(&sub));
        fs::create_dir_all(&cpu)?;
        fs::create_dir_all(&memory)?;
        let cg = Cgroup { cpu, memory, v2 };
        if let Err(e) = cg.set(&cpu_base, limits) {
            // Nothing joined it yet: leave no empty cgroup behind.
            let _ = fs::remove_dir(&cg.cpu);
            let _ = fs::remove_dir(&cg.memory);
            return Err(e);
        }
        Ok(cg)
    }

    fn set(&self, cpu_base: &Path, limits: Limits) -> io::Result<()> {
        let quota = u64::from(limits.cpus.max(1)) * CPU_PERIOD_US;
        let memory = limits.memory_bytes().to_string();
        if self.v2 {
            // Controllers must be enabled in every parent below the one we started in.
            for dir in [cpu_base.to_path_buf(), cpu_base.join("apex")] {
                let _ = write(&dir, "cgroup.subtree_control", "+cpu +memory");
            }
            write(&self.cpu, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            write(&self.memory, "memory.max", &memory)?;
            let _ = write(&self.memory, "memory.swap.max", "0");
        } else {
            write(&self.cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&self.cpu, "cpu.cfs_quota_us", &quota.to_string())?;
            write(&self.memory, "memory.limit_in_bytes", &memory)?;
            // Swap may not be accounted on this host (no memsw files): then RAM alone.
            let _ = write(&self.memory, "memory.memsw.limit_in_bytes", &memory);
        }
        Ok(())
    }

    /// Moves the process `pid` (all its threads) into the cgroup; its children follow.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        write(&self.cpu, "cgroup.procs", &pid.to_string())?;
        if !self.v2 {
            write(&self.memory, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The cgroup directories (CPU, memory; the same on v2).
    pub fn dirs(&self) -> (&Path, &Path) {
        (&self.cpu, &self.memory)
    }

    /// Moves `pid` back to the parent cgroup, then removes the (empty) cgroup.
    pub fn leave_and_remove(&self, pid: u32) {
        for dir in [&self.cpu, &self.memory] {
            if let Some(parent) = dir.parent().and_then(Path::parent) {
                let _ = write(parent, "cgroup.procs", &pid.to_string());
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

/// (usage, cap) in bytes of the memory cgroup this process is in, when it is one of
/// Apex's (`apex/<name>`).
pub fn own_memory() -> Option<(u64, u64)> {
    let (_, dir, v2) = own()?;
    if dir.parent()?.file_name()? != "apex" {
        return None;
    }
    let (usage, cap) = if v2 {
        ("memory.current", "memory.max")
    } else {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    };
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok();
    Some((read(usage)?, read(cap)?))
}

/// Removes the cgroup of container `name` if it is empty (its helper was killed).
pub fn remove_stale(name: &str) {
    if let Some((cpu, memory, _)) = own() {
        for base in [cpu, memory] {
            let _ = fs::remove_dir(base.join("apex").join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
36 30 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
    const HYBRID_CGROUPS: &str = "\
4:memory:/process_api/abc
1:cpu:/
0::/
";

    #[test]
    fn finds_the_v1_hierarchies_of_a_hybrid_layout() {
        let (cpu, mem, v2) = current(HYBRID_MOUNTS, HYBRID_CGROUPS).unwrap();
        assert!(!v2, "the unified mount has no controllers here");
        assert_eq!(cpu, Path::new("/sys/fs/cgroup/cpu/"));
        assert_eq!(mem, Path::new("/sys/fs/cgroup/memory/process_api/abc"));
    }

    #[test]
    fn the_memory_cap_adds_the_vmm_overhead() {
        let l = Limits {
            cpus: 2,
            memory_mib: 512,
        };
        assert_eq!(l.memory_bytes(), (512 + VMM_OVERHEAD_MIB) << 20);
    }
}
