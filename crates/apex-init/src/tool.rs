//! The agent's built-in tools (`apex-init tool NAME ARGS...`): short-lived processes the
//! host starts like any container process (chrooted in the container root, stdio on
//! vsock) to copy files in and out of a container. See
//! [`apex_agent_proto::api::tools`] for the contract.

use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use apex_agent_proto::api::{tools, PathStat, ProcessInfo};

/// Filesystems never archived when a copy walks into them (they are views of the kernel,
/// not files of the container): proc, sysfs, cgroup2, devpts.
const PSEUDO_FS: &[i64] = &[0x9fa0, 0x6265_6572, 0x6367_7270, 0x1cd1];

/// Runs the tool named by `args[0]`; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let res = match args {
        [name, path] if name == tools::STAT => stat(path).and_then(|st| {
            let mut out = io::stdout().lock();
            serde_json::to_writer(&mut out, &st)?;
            out.write_all(b"\n")
        }),
        [name, path] if name == tools::ARCHIVE_GET => archive_get(path),
        [name] if name == tools::PS => ps(),
        [name] if name == tools::PAUSE => loop {
            // SAFETY: pause(2) only waits for a signal; the default actions end the process.
            unsafe { libc::pause() };
        },
        [name, upper, lower, epoch] if name == tools::LAYER_DIFF => match epoch.parse() {
            Ok(epoch) => {
                let out = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
                crate::layer_diff::write(Path::new(upper), Path::new(lower), epoch, out)
                    .and_then(|mut w| w.flush())
            }
            Err(_) => {
                eprintln!("layer-diff: bad epoch {epoch}");
                return tools::EXIT_USAGE;
            }
        },
        [name, rest @ ..] if name == tools::ARCHIVE_PUT && !rest.is_empty() => {
            let (opts, dir) = rest.split_at(rest.len() - 1);
            let owner = opts.iter().any(|o| o == tools::OPT_OWNER);
            let no_clobber = opts
                .iter()
                .any(|o| o == tools::OPT_NO_OVERWRITE_DIR_NON_DIR);
            if let Some(bad) = opts
                .iter()
                .find(|o| *o != tools::OPT_OWNER && *o != tools::OPT_NO_OVERWRITE_DIR_NON_DIR)
            {
                eprintln!("unknown option {bad}");
                return tools::EXIT_USAGE;
            }
            archive_put(&dir[0], owner, no_clobber)
        }
        _ => {
            eprintln!("usage: apex-init tool (stat PATH | archive-get PATH | archive-put [--owner] [--no-overwrite-dir-non-dir] DIR | ps | pause | layer-diff UPPER LOWER EPOCH)");
            return tools::EXIT_USAGE;
        }
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            match e.kind() {
                io::ErrorKind::NotFound => tools::EXIT_NOT_FOUND,
                io::ErrorKind::NotADirectory => tools::EXIT_NOT_DIR,
                _ => tools::EXIT_FAILED,
            }
        }
    }
}

/// `path` without `.` components and with `..` applied lexically (above `/` stays `/`).
fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The metadata of `path`, not following a final symlink unless the path ends in `/`.
fn stat(path: &str) -> io::Result<PathStat> {
    let p = clean(path);
    let meta = if path.ends_with('/') {
        std::fs::metadata(&p)
    } else {
        std::fs::symlink_metadata(&p)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let link_target = if meta.file_type().is_symlink() {
        std::fs::read_link(&p)?.to_string_lossy().into_owned()
    } else {
        String::new()
    };
    Ok(PathStat {
        name: p
            .file_name()
            .map_or_else(|| "/".into(), |n| n.to_string_lossy().into_owned()),
        size: meta.len(),
        mode: meta.mode(),
        mtime: meta.mtime(),
        link_target,
    })
}

fn archive_get(path: &str) -> io::Result<()> {
    let st = stat(path)?;
    let p = clean(path);
    let mut out = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
    serde_json::to_writer(&mut out, &st)?;
    out.write_all(b"\n")?;
    let contents_only = path.ends_with("/.") || path == ".";
    let name = if contents_only || p == Path::new("/") {
        PathBuf::from(".")
    } else {
        PathBuf::from(&st.name)
    };
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    append(&mut b, &p, &name, st.is_dir() && !st.is_symlink())?;
    b.into_inner()?.flush()
}

/// Whether `dir` is on one of [`PSEUDO_FS`].
fn pseudo_fs(dir: &Path) -> bool {
    let Ok(c) = crate::sys::cstring(dir) else {
        return false;
    };
    // SAFETY: statfs is plain old data, filled by statfs(2) from a valid C string.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut sfs) } == 0;
    ok && PSEUDO_FS.contains(&(sfs.f_type as i64))
}

fn append<W: Write>(b: &mut tar::Builder<W>, src: &Path, name: &Path, dir: bool) -> io::Result<()> {
    b.append_path_with_name(src, name)?;
    if !dir || pseudo_fs(src) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let is_dir = e.file_type()?.is_dir();
        append(b, &e.path(), &name.join(e.file_name()), is_dir)?;
    }
    Ok(())
}

/// User names by uid, from the container's `/etc/passwd`.
fn user_names() -> std::collections::HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

/// One line of `/proc/PID/stat` split after the command: (ppid, tty_nr, utime+stime,
/// starttime), in the kernel's units.
fn stat_fields(stat: &str) -> Option<(u32, i64, u64, u64)> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command start at 3 (state): ppid 4, tty_nr 7, utime 14,
    // stime 15, starttime 22.
    let get = |n: usize| f.get(n - 3).copied();
    Some((
        get(4)?.parse().ok()?,
        get(7)?.parse().ok()?,
        get(14)?.parse::<u64>().ok()? + get(15)?.parse::<u64>().ok()?,
        get(22)?.parse().ok()?,
    ))
}

/// The container's processes, `ps -ef` style: the agent itself and kernel threads are
/// left out.
fn ps() -> io::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let btime: u64 = std::fs::read_to_string("/proc/stat")?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .unwrap_or(0);
    let users = user_names();
    let me = std::process::id();
    let mut out = io::stdout().lock();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((ppid, tty, cpu, start)) = stat_fields(&stat) else {
            continue;
        };
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        // Kernel threads have no command line; pid 1 outside a container namespace is
        // the agent, and this process is the tool itself.
        if cmdline.is_empty() || pid == me || (pid == 1 && ppid == 0 && is_agent(&dir)) {
            continue;
        }
        let cmd = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let uid = std::fs::metadata(&dir).map(|m| m.uid()).unwrap_or(0);
        let started = btime + start / hz;
        let secs = cpu / hz;
        let info = ProcessInfo {
            user: users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
            pid,
            ppid,
            stime: hh_mm(started),
            tty: if tty == 0 {
                "?".into()
            } else {
                format!("pts/{}", (tty & 0xff) | ((tty >> 12) & 0xfff00))
            },
            time: format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
            cmd,
        };
        serde_json::to_writer(&mut out, &info)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Whether `/proc/PID` is apex-init itself (its executable is the agent's).
fn is_agent(dir: &Path) -> bool {
    std::fs::read_link(dir.join("exe"))
        .map(|p| p == Path::new("/init") || p.ends_with("apex-init"))
        .unwrap_or(true)
}

/// `HH:MM` (UTC) of a Unix time.
fn hh_mm(t: u64) -> String {
    format!("{:02}:{:02}", t / 3600 % 24, t / 60 % 60)
}

fn archive_put(dir: &str, owner: bool, no_clobber: bool) -> io::Result<()> {
    let d = clean(dir);
    let meta =
        std::fs::metadata(&d).map_err(|e| io::Error::new(e.kind(), format!("{dir}: {e}")))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{dir}: not a directory"),
        ));
    }
    let mut ar = tar::Archive::new(BufReader::with_capacity(256 * 1024, io::stdin().lock()));
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_preserve_ownerships(owner);
    ar.set_overwrite(true);
    // Directories get their modes and times last (deepest first), as tar(1) does, so a
    // read-only directory does not stop its own content.
    let mut dirs = Vec::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let is_dir = entry.header().entry_type().is_dir();
        if no_clobber {
            let rel = entry.path()?.into_owned();
            if let Ok(existing) = std::fs::symlink_metadata(d.join(&rel)) {
                if existing.is_dir() != is_dir {
                    return Err(io::Error::other(format!(
                        "cannot overwrite {} {} with a {}",
                        if existing.is_dir() {
                            "directory"
                        } else {
                            "non-directory"
                        },
                        Path::new(dir).join(&rel).display(),
                        if is_dir { "directory" } else { "non-directory" },
                    )));
                }
            }
        }
        if is_dir {
            dirs.push(entry);
        } else {
            entry.unpack_in(&d)?;
        }
    }
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut e in dirs {
        e.unpack_in(&d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields() {
        let line =
            "42 (sh -c x) S 1 42 42 34816 42 4194304 100 0 0 0 7 3 0 0 20 0 1 0 1234 1000 100";
        assert_eq!(stat_fields(line), Some((1, 34816, 10, 1234)));
        assert_eq!(hh_mm(3600 * 25 + 61), "01:01");
    }

    #[test]
    fn paths_clean_lexically() {
        assert_eq!(clean("/a/./b/../c/"), PathBuf::from("/a/c"));
        assert_eq!(clean("/../../etc"), PathBuf::from("/etc"));
        assert_eq!(clean("/"), PathBuf::from("/"));
        assert_eq!(clean("rel/x"), PathBuf::from("/rel/x"));
    }

    #[test]
    fn stat_reports_links_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("target", d.path().join("l")).unwrap();
        let s = stat(d.path().join("l").to_str().unwrap()).unwrap();
        assert!(s.is_symlink() && s.link_target == "target" && s.name == "l");
        let s = stat(d.path().to_str().unwrap()).unwrap();
        assert!(s.is_dir());
        let e = stat(d.path().join("none").to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
