//! Builds the guest initramfs: `/init`, the base directories, and the kernel modules
//! the guest needs, with `/lib/modules/load-order` listing them dependency-first.
//!
//! Archives are cached as `<cache_dir>/initramfs-<sha256>.cpio`; the hash covers the
//! init binary, the kernel version, the resolved module list (paths and sizes) and
//! any extra files, so a changed input yields a new file and an unchanged one is
//! reused without rebuilding.

pub mod newc;

use crate::assets::KernelAssets;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Kernel modules the guest loads (dependencies are added automatically).
pub const WANTED_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "libcrc32c",
    "erofs",
    "overlay",
];

/// Modules shipped in the initramfs but loaded only when a feature needs them, by group
/// name: each costs boot time under TCG, and most containers never use them. In the
/// load-order file their lines read `@<group> <path>`.
pub const ON_DEMAND_MODULES: &[(&str, &[&str])] = &[
    ("net", &["failover", "net_failover", "virtio_net"]),
    ("virtiofs", &["fuse", "virtiofs"]),
];

/// Trailer of a signed kernel module (see the kernel's `module_signature.h`).
const MODULE_SIG_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature` precedes the magic; its last field is the BE signature length.
const MODULE_SIG_INFO_LEN: usize = 12;

/// A module without its appended signature. The guest kernel does not enforce module
/// signatures, and verifying RSA signatures under TCG costs ~60 ms per boot; the only
/// effect of loading unsigned modules is the "module verification failed" taint.
pub fn strip_module_signature(module: &[u8]) -> &[u8] {
    let Some(rest) = module.strip_suffix(MODULE_SIG_MAGIC) else {
        return module;
    };
    let Some(info_start) = rest.len().checked_sub(MODULE_SIG_INFO_LEN) else {
        return module;
    };
    let sig_len = u32::from_be_bytes(rest[rest.len() - 4..].try_into().expect("4 bytes")) as usize;
    match info_start.checked_sub(sig_len) {
        Some(end) => &module[..end],
        None => module,
    }
}

/// Path of the module load-order list inside the initramfs.
pub const LOAD_ORDER_PATH: &str = "/lib/modules/load-order";

/// Directories created at the root of every initramfs.
const BASE_DIRS: &[&str] = &["proc", "sys", "dev", "run", "tmp", "mnt", "etc"];

/// Bumped whenever the archive layout changes, to invalidate cached archives.
const FORMAT_VERSION: &str = "apex-initramfs-v2";

/// An additional file to place in the initramfs (tests, debugging tools).
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute destination path inside the initramfs, e.g. `/bin/busybox`.
    pub dest: PathBuf,
    /// Host file to copy.
    pub src: PathBuf,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
}

/// Builds (or reuses) the initramfs with `init` as `/init`; returns its path.
pub fn build(init: &Path, kernel: &KernelAssets, cache_dir: &Path) -> Result<PathBuf> {
    build_with(init, kernel, cache_dir, &[])
}

/// Like [`build`], plus `extra` files (parent directories are created as needed).
pub fn build_with(
    init: &Path,
    kernel: &KernelAssets,
    cache_dir: &Path,
    extra: &[ExtraFile],
) -> Result<PathBuf> {
    let init_bytes =
        std::fs::read(init).with_context(|| format!("reading init binary {}", init.display()))?;
    // A kernel with everything built in has no modules to ship.
    let mut modules: Vec<(String, Option<&str>)> = Vec::new();
    if let Some(modules_dir) = kernel.modules_dir() {
        modules.extend(
            resolve_modules(&modules_dir, WANTED_MODULES)?
                .into_iter()
                .map(|m| (m, None)),
        );
        for (group, names) in ON_DEMAND_MODULES {
            for m in resolve_modules(&modules_dir, names)? {
                if !modules.iter().any(|(have, _)| *have == m) {
                    modules.push((m, Some(*group)));
                }
            }
        }
    }
    let mut extras = Vec::with_capacity(extra.len());
    for e in extra {
        let dest = archive_path(&e.dest)?;
        if dest == "init" || dest.starts_with("lib/modules/") {
            bail!(
                "extra file {} collides with a generated entry",
                e.dest.display()
            );
        }
        let data = std::fs::read(&e.src)
            .with_context(|| format!("reading extra file {}", e.src.display()))?;
        extras.push((dest, e.mode & 0o7777, data));
    }

    let mut h = Sha256::new();
    for part in [
        FORMAT_VERSION.as_bytes(),
        &init_bytes,
        kernel.version.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let modules_dir = kernel.modules_dir().unwrap_or_default();
    for (m, group) in &modules {
        h.update(group.unwrap_or("").as_bytes());
        let size = std::fs::metadata(modules_dir.join(m))
            .with_context(|| format!("module {m}"))?
            .len();
        h.update(format!("module {m} {size}\n"));
    }
    for (dest, mode, data) in &extras {
        h.update(format!("extra {dest} {mode:o} {}\n", data.len()));
        h.update(data);
    }
    let hash = hex::encode(h.finalize());
    let out = cache_dir.join(format!("initramfs-{}.cpio", &hash[..32]));
    if out.is_file() {
        keep_fresh(&out);
        return Ok(out);
    }

    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating cache dir {}", cache_dir.display()))?;
    let tmp = cache_dir.join(format!(
        ".initramfs-{}.{}.{:?}.tmp",
        &hash[..32],
        std::process::id(),
        std::thread::current().id()
    ));
    let result = write_archive(&tmp, &init_bytes, kernel, &modules, &extras)
        .and_then(|()| std::fs::rename(&tmp, &out).context("renaming initramfs into place"));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing initramfs {}", out.display()))?;
    prune_unused(cache_dir, &out);
    Ok(out)
}

/// An initramfs not used for this long is removed when a new one is written (another
/// apex-init or kernel version made it obsolete).
const UNUSED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Marks a cached initramfs as in use: its mtime is refreshed once a day at most.
fn keep_fresh(path: &Path) {
    let stale = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(24 * 3600))
        .unwrap_or(false);
    if stale {
        let _ = File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(SystemTime::now()));
    }
}

/// Removes the cache's other initramfs files unused for [`UNUSED_FOR`].
fn prune_unused(cache_dir: &Path, keep: &Path) {
    let Ok(dir) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in dir.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if path == keep || !(name.starts_with("initramfs-") && name.ends_with(".cpio")) {
            continue;
        }
        let unused = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > UNUSED_FOR);
        if unused {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn write_archive(
    tmp: &Path,
    init: &[u8],
    kernel: &KernelAssets,
    modules: &[(String, Option<&str>)],
    extras: &[(String, u32, Vec<u8>)],
) -> Result<()> {
    let file = File::create(tmp)?;
    let mut w = newc::NewcWriter::new(BufWriter::new(file));
    let mut dirs = BTreeSet::new();
    let mut mkdirs = |w: &mut newc::NewcWriter<_>, path: &str| -> std::io::Result<()> {
        let mut acc = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            if dirs.insert(acc.clone()) {
                w.dir(&acc, 0o755)?;
            }
        }
        Ok(())
    };
    for d in BASE_DIRS {
        mkdirs(&mut w, d)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("init", 0o755, init)?;

    let modules_dir = kernel.modules_dir().unwrap_or_default();
    let base = format!("lib/modules/{}", kernel.version);
    let mut load_order = String::new();
    for (m, group) in modules {
        let dest = format!("{base}/{m}");
        mkdirs(&mut w, parent(&dest))?;
        let src = modules_dir.join(m);
        let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        w.file(&dest, 0o644, strip_module_signature(&data))?;
        if let Some(g) = group {
            load_order.push_str(&format!("@{g} "));
        }
        load_order.push('/');
        load_order.push_str(&dest);
        load_order.push('\n');
    }
    // No list at all for a kernel without modules: the guest then skips module loading.
    if !modules.is_empty() {
        mkdirs(&mut w, "lib/modules")?;
        w.file(LOAD_ORDER_PATH, 0o644, load_order.as_bytes())?;
    }

    for (dest, mode, data) in extras {
        mkdirs(&mut w, parent(dest))?;
        w.file(dest, *mode, data)?;
    }
    let mut out = w.finish()?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Normalizes an absolute destination path to an archive path (no leading `/`).
fn archive_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))?;
    let rel = s.trim_start_matches('/');
    if !s.starts_with('/')
        || rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("extra file destination must be a clean absolute path: {s:?}");
    }
    Ok(rel.to_string())
}

/// Module name as the kernel sees it: file stem, `-` folded to `_`.
fn module_name(rel_path: &str) -> String {
    let file = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Resolves `wanted` module names against `modules.dep` in `modules_dir`, returning
/// module paths relative to `modules_dir` in a dependency-correct load order.
/// Modules listed in `modules.builtin` are skipped; unknown modules are an error.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep_file = modules_dir.join("modules.dep");
    let deps_text = std::fs::read_to_string(&dep_file).with_context(|| {
        format!(
            "reading {} (run depmod -b on the kernel assets)",
            dep_file.display()
        )
    })?;
    let builtin_text =
        std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    resolve_from(&deps_text, &builtin_text, wanted)
}

fn resolve_from(deps_text: &str, builtin_text: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in deps_text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim();
        deps.insert(module, rest.split_whitespace().collect());
        by_name.insert(module_name(module), module);
    }
    let builtin: HashSet<String> = builtin_text.lines().map(module_name).collect();

    let mut order = Vec::new();
    let mut done = HashSet::new();
    for want in wanted {
        let name = want.replace('-', "_");
        match by_name.get(&name) {
            Some(path) => visit(path, &deps, &mut done, &mut Vec::new(), &mut order)?,
            None if builtin.contains(&name) => {}
            None => bail!("kernel module {want} is neither in modules.dep nor modules.builtin"),
        }
    }
    Ok(order)
}

/// Depth-first post-order walk: every module comes after all of its dependencies.
/// `modules.dep` lists the closest dependency first, so walk it in reverse (as modprobe
/// loads them) to keep the order natural.
fn visit<'a>(
    module: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    done: &mut HashSet<&'a str>,
    stack: &mut Vec<&'a str>,
    order: &mut Vec<String>,
) -> Result<()> {
    if done.contains(module) {
        return Ok(());
    }
    if stack.contains(&module) {
        bail!(
            "dependency cycle in modules.dep: {} -> {module}",
            stack.join(" -> ")
        );
    }
    stack.push(module);
    for dep in deps
        .get(module)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .rev()
    {
        if !deps.contains_key(dep) {
            bail!("modules.dep: {module} depends on {dep}, which has no entry");
        }
        visit(dep, deps, done, stack, order)?;
    }
    stack.pop();
    done.insert(module);
    order.push(module.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/fuse/fuse.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn module_signatures_are_stripped() {
        let mut signed = b"ELF-module-body".to_vec();
        let sig = [7u8; 20];
        signed.extend_from_slice(&sig);
        signed.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(MODULE_SIG_MAGIC);
        assert_eq!(strip_module_signature(&signed), b"ELF-module-body");
        assert_eq!(strip_module_signature(b"plain"), b"plain");
        // A bogus length never panics or cuts into nothing.
        let mut bogus = vec![1u8; 4];
        bogus.extend_from_slice(&[0xff; 12]);
        bogus.extend_from_slice(MODULE_SIG_MAGIC);
        assert_eq!(strip_module_signature(&bogus), &bogus[..]);
    }

    #[test]
    fn dependency_order() {
        let order = resolve_from(DEP, "", &["virtio_net", "virtiofs", "virtio_rng"]).unwrap();
        let names: Vec<_> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "fuse",
                "virtiofs",
                "virtio_rng"
            ]
        );
    }

    #[test]
    fn builtin_skipped_unknown_fails() {
        let builtin = "kernel/fs/ext4/ext4.ko\n";
        assert!(resolve_from(DEP, builtin, &["ext4"]).unwrap().is_empty());
        let err = resolve_from(DEP, builtin, &["nope"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn cycle_detected() {
        let dep = "a.ko: b.ko\nb.ko: a.ko\n";
        assert!(resolve_from(dep, "", &["a"])
            .unwrap_err()
            .to_string()
            .contains("cycle"));
    }

    #[test]
    fn archive_paths() {
        assert_eq!(
            archive_path(Path::new("/bin/busybox")).unwrap(),
            "bin/busybox"
        );
        assert!(archive_path(Path::new("bin/x")).is_err());
        assert!(archive_path(Path::new("/a/../b")).is_err());
        assert_eq!(module_name("kernel/x/virtio-rng.ko.xz"), "virtio_rng");
    }

    /// A fake init binary in `dir`, and a kernel with everything built in (no modules).
    fn fake_init_and_built_in_kernel(dir: &Path) -> (PathBuf, KernelAssets) {
        let init = dir.join("init-bin");
        std::fs::write(&init, b"\x7fELF fake init").unwrap();
        let kernel = KernelAssets {
            image: dir.join("vmlinux"),
            modules_root: None,
            version: "6.1.0-apex".into(),
            flavor: crate::assets::KernelFlavor::Minimal,
        };
        (init, kernel)
    }

    #[test]
    fn unused_initramfs_files_are_pruned_when_a_new_one_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let aged = |name: &str, age_days: u64| {
            let p = cache.join(name);
            std::fs::write(&p, b"x").unwrap();
            let t = SystemTime::now() - Duration::from_secs(age_days * 24 * 3600);
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            p
        };
        let old = aged("initramfs-0000.cpio", 30);
        let recent = aged("initramfs-1111.cpio", 2);
        let other = aged("accel.json", 30);
        let (init, kernel) = fake_init_and_built_in_kernel(tmp.path());
        let made = build(&init, &kernel, &cache).unwrap();
        assert!(made.is_file() && recent.is_file() && other.is_file());
        assert!(!old.exists(), "a month-old initramfs was kept");

        // A cache hit on an old file refreshes it, so that it is not pruned while in use.
        let t = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        File::options()
            .write(true)
            .open(&made)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(build(&init, &kernel, &cache).unwrap(), made);
        let age = std::fs::metadata(&made)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap();
        assert!(age < Duration::from_secs(60), "{age:?}");
    }

    /// A kernel with everything built in gets an initramfs with no modules and no list.
    #[test]
    fn built_in_kernel_gets_no_modules() {
        let tmp = tempfile::tempdir().unwrap();
        let (init, kernel) = fake_init_and_built_in_kernel(tmp.path());
        let a = build(&init, &kernel, &tmp.path().join("cache")).unwrap();
        let entries = newc::parse(&std::fs::read(&a).unwrap()).unwrap();
        assert!(entries.iter().any(|e| e.name == "init"));
        assert!(
            !entries.iter().any(|e| e.name.starts_with("lib/modules")),
            "{:?}",
            entries.iter().map(|e| &e.name).collect::<Vec<_>>()
        );
    }

    /// Builds against the installed distribution kernel (modules) when present.
    #[test]
    fn builds_real_initramfs_and_caches() {
        let Ok(kernel) = KernelAssets::resolve(&crate::assets::KernelChoice::Debian) else {
            eprintln!("kernel assets not installed; skipping");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let init = tmp.path().join("init-bin");
        std::fs::write(&init, b"\x7fELF fake init").unwrap();
        let extra = tmp.path().join("hello");
        std::fs::write(&extra, b"hi").unwrap();
        let extras = [ExtraFile {
            dest: "/usr/share/hello".into(),
            src: extra.clone(),
            mode: 0o640,
        }];
        let cache = tmp.path().join("cache");
        let a = build_with(&init, &kernel, &cache, &extras).unwrap();
        let b = build_with(&init, &kernel, &cache, &extras).unwrap();
        assert_eq!(a, b);
        let plain = build(&init, &kernel, &cache).unwrap();
        assert_ne!(a, plain);

        let entries = newc::parse(&std::fs::read(&a).unwrap()).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n);
        assert_eq!(get("init").unwrap().mode, 0o100_755);
        assert_eq!(get("init").unwrap().data, b"\x7fELF fake init");
        for d in BASE_DIRS {
            assert_eq!(get(d).unwrap().mode, 0o040_755, "{d}");
        }
        assert_eq!(get("usr/share/hello").unwrap().mode, 0o100_640);
        assert!(get("usr/share").is_some());
        let order = String::from_utf8(get("lib/modules/load-order").unwrap().data.clone()).unwrap();
        // On-demand lines read `@<group> <path>`; boot lines are just the path.
        let path_of = |l: &str| l.rsplit(' ').next().unwrap().to_string();
        let names: Vec<_> = order.lines().map(|l| module_name(&path_of(l))).collect();
        assert!(
            order.contains("@net /") && order.contains("@virtiofs /"),
            "{order}"
        );
        assert!(!order
            .lines()
            .any(|l| l.starts_with('/') && l.contains("virtio_net")));
        for (i, m) in names.iter().enumerate() {
            assert!(names[..i].iter().all(|x| x != m), "duplicate {m}");
        }
        let pos = |m: &str| names.iter().position(|x| x == m).unwrap_or(usize::MAX);
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_mmio"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
        assert!(pos("libcrc32c") < pos("erofs") && pos("fuse") < pos("virtiofs"));
        assert!(pos("overlay") != usize::MAX);
        for line in order.lines() {
            let path = path_of(line);
            let e = get(path.trim_start_matches('/')).unwrap_or_else(|| panic!("{line} missing"));
            assert!(e.data.len() > 1000, "{line}");
        }
    }
}
