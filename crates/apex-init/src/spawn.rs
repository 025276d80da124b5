//! fork + exec of a container process.
//!
//! Everything the child needs is prepared in an [`ExecPlan`] before fork(2): after forking a
//! multi-threaded process the child may only make async-signal-safe calls (no allocation, no
//! locks), so it runs straight-line libc calls over pre-built C strings. Failures are sent
//! to the parent as `(stage, errno)` over a close-on-exec pipe; EOF on that pipe means the
//! exec succeeded.
//!
//! Child steps: reset signal mask and SIGPIPE, namespaces (below), setsid, stdio on fds 0-2
//! (plus the controlling tty), umask 022, chroot + chdir /, `mkdir -p cwd`, rlimits, chdir
//! cwd (before dropping privileges, retried after on EACCES/EPERM, like runc),
//! setgroups/setgid/setuid, then execve of each `PATH` candidate in turn (like execvp,
//! without the `/bin/sh` fallback for ENOEXEC, like Docker).
//!
//! Namespaces ([`Namespaces`]):
//! - `New`: the child is created by clone(2) with new PID, mount, UTS and IPC namespaces,
//!   so it is PID 1 of its own PID namespace; it makes its mounts private and replaces the
//!   root's `/proc` with one of the new PID namespace. The root is entered with chroot, not
//!   pivot_root: the guest's root is the initramfs, which cannot be pivoted away, and
//!   `/proc/self/mounts` lists only mounts below a process's root anyway.
//! - `Join`: a forked intermediate enters the target's namespaces with setns(2) on its
//!   pidfd, then clones the real child with `CLONE_PARENT` (so the agent stays its parent
//!   and reaps it, as runc's nsexec does) and exits after sending the child's pid.
//!
//! With `init`, the program exec'd is the agent's reaper ([`crate::reaper`]), which forks
//! the real program; its exec failures come back over the same status pipe, whose write
//! end the reaper inherits (named by [`STATUS_FD_ENV`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use apex_agent_proto::api::{Namespaces, ProcessSpec};
use apex_agent_proto::RpcError;

use crate::sys::{self, cstring, errno_text};
use crate::user::ExecUser;

/// `argv[0]` of an agent tool process.
pub const TOOL_ARGV0: &str = "apex-init";
/// `argv[1]` of an agent tool process: the mode that runs [`crate::tool`].
pub const TOOL_ARG: &str = "tool";
/// `argv[1]` of the reaping init ([`crate::reaper`]): `apex-init -- PROGRAM ARGS...`.
pub const INIT_ARG: &str = "--";
/// The environment variable naming the reaper's status pipe fd.
pub const STATUS_FD_ENV: &str = "APEX_INIT_STATUS_FD";

/// The namespaces created for a container's main process.
const NEW_NAMESPACES: libc::c_int =
    libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;

/// `PATH` used for the lookup when the environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The step of the child setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// setsid(2).
    Setsid = 1,
    /// TIOCSCTTY.
    Tty = 2,
    /// chroot(2).
    Chroot = 3,
    /// setrlimit(2).
    Rlimit = 4,
    /// chdir(2) to the cwd.
    Chdir = 5,
    /// setgroups(2).
    Setgroups = 6,
    /// setgid(2).
    Setgid = 7,
    /// setuid(2).
    Setuid = 8,
    /// execve(2).
    Exec = 9,
    /// Creating or entering namespaces.
    Namespaces = 10,
    /// Mounting the new PID namespace's `/proc`.
    Proc = 11,
}

impl Stage {
    fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        [
            Setsid, Tty, Chroot, Rlimit, Chdir, Setgroups, Setgid, Setuid, Exec, Namespaces, Proc,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

/// A failed child setup, as reported over the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecFailure {
    /// Where it failed.
    pub stage: Stage,
    /// The errno.
    pub errno: i32,
}

/// The child's stdio: fds (in the parent) to put on 0, 1 and 2.
pub struct ChildStdio<'a> {
    /// Becomes fd 0.
    pub stdin: BorrowedFd<'a>,
    /// Becomes fd 1.
    pub stdout: BorrowedFd<'a>,
    /// Becomes fd 2.
    pub stderr: BorrowedFd<'a>,
    /// fd 0 is a pty slave to make the controlling terminal.
    pub tty: bool,
}

/// Everything the child needs, prepared before fork.
pub struct ExecPlan {
    program: String,
    searched_path: bool,
    root_display: String,
    cwd_display: String,
    root: CString,
    cwd: CString,
    cwd_prefixes: Vec<CString>,
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    empty_mask: libc::sigset_t,
    /// For an agent tool or the reaper: this binary (`/proc/self/exe`, opened `O_PATH`),
    /// exec'd with execveat(2) after the chroot, where no path could reach it.
    tool_exe: Option<OwnedFd>,
    /// New namespaces: the root's `/proc`, remounted for the new PID namespace.
    new_ns_proc: Option<CString>,
    /// Joining namespaces (the target's pidfd is given to [`ExecPlan::fork`]).
    join: bool,
    /// The status pipe, made before fork so the reaper's argv can name its write end.
    status: Option<(OwnedFd, OwnedFd)>,
    /// With `init`: clear close-on-exec on the status pipe's write end for the reaper.
    pass_status: bool,
}

// SAFETY: the raw pointers point into the CStrings owned by the same plan, which are never
// mutated; the plan is only read.
unsafe impl Send for ExecPlan {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for ExecPlan {}

/// Maps an OCI rlimit name (`RLIMIT_NOFILE`) to its resource number.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// The paths execve is tried on, in order, and whether `PATH` was searched.
pub fn exec_candidates(program: &str, env: &[String]) -> (Vec<String>, bool) {
    if program.contains('/') {
        return (vec![program.to_owned()], false);
    }
    if program.is_empty() {
        return (Vec::new(), true);
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let list = path
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{program}", dir.trim_end_matches('/'))
        })
        .collect();
    (list, true)
}

/// Each ancestor of `cwd` plus `cwd` itself (`/a`, `/a/b`), for `mkdir -p` in the child.
pub fn dir_prefixes(cwd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in cwd.split('/').filter(|p| !p.is_empty() && *p != ".") {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

impl ExecPlan {
    /// Prepares the exec of `spec` in `root` as `user`. `HOME` is added from `user` if the
    /// environment has none. Errors describe invalid input (NUL bytes, unknown rlimits).
    pub fn new(spec: &ProcessSpec, root: &Path, user: &ExecUser) -> Result<Self, String> {
        let c = |s: &str| cstring(s).map_err(|e| e.to_string());
        let status = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        let agent_exe = || {
            sys::open(Path::new("/proc/self/exe"), libc::O_PATH)
                .map_err(|e| format!("opening the agent binary: {e}"))
        };
        let (args, tool_exe) = if spec.agent_tool {
            let args = [TOOL_ARGV0, TOOL_ARG].map(String::from).into_iter();
            (
                args.chain(spec.args.iter().cloned()).collect(),
                Some(agent_exe()?),
            )
        } else if spec.init {
            let args = [TOOL_ARGV0, INIT_ARG].map(String::from).into_iter();
            (
                args.chain(spec.args.iter().cloned()).collect(),
                Some(agent_exe()?),
            )
        } else {
            (spec.args.clone(), None)
        };
        // Messages name the program the user asked for, also behind the reaper.
        let program = if spec.init {
            spec.args.first().cloned().unwrap_or_default()
        } else {
            args.first().cloned().unwrap_or_default()
        };
        let (candidates, searched_path) = if spec.agent_tool {
            (Vec::new(), false)
        } else {
            let (list, searched) = exec_candidates(&program, &spec.env);
            (if spec.init { Vec::new() } else { list }, searched)
        };
        let new_ns_proc = match spec.namespaces {
            Namespaces::New => Some(cstring(root.join("proc")).map_err(|e| e.to_string())?),
            _ => None,
        };
        let mut env = spec.env.clone();
        if spec.init {
            env.push(format!("{STATUS_FD_ENV}={}", status.1.as_raw_fd()));
        }
        if !env.iter().any(|kv| kv.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        let argv: Vec<CString> = args.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
        let null_terminated = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let rlimits = spec
            .rlimits
            .iter()
            .map(|r| {
                let res = rlimit_resource(&r.resource)
                    .ok_or_else(|| format!("unknown rlimit {:?}", r.resource))?;
                Ok((
                    res,
                    libc::rlimit {
                        rlim_cur: r.soft,
                        rlim_max: r.hard,
                    },
                ))
            })
            .collect::<Result<_, String>>()?;
        let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
        // SAFETY: sigset_t is plain old data; sigemptyset initializes it.
        let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a sigset_t.
        unsafe { libc::sigemptyset(&mut empty_mask) };
        Ok(Self {
            argv_ptrs: null_terminated(&argv),
            envp_ptrs: null_terminated(&envp),
            _argv: argv,
            _envp: envp,
            program,
            searched_path,
            root_display: root.display().to_string(),
            cwd_display: cwd.to_owned(),
            root: cstring(root).map_err(|e| e.to_string())?,
            cwd: c(cwd)?,
            cwd_prefixes: dir_prefixes(cwd)
                .iter()
                .map(|p| c(p))
                .collect::<Result<_, _>>()?,
            candidates: candidates.iter().map(|p| c(p)).collect::<Result<_, _>>()?,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            rlimits,
            empty_mask,
            tool_exe,
            new_ns_proc,
            join: matches!(spec.namespaces, Namespaces::Join(_)),
            status: Some(status),
            pass_status: spec.init,
        })
    }

    /// Forks the child; `join` is the pidfd of the process whose namespaces a `Join`
    /// plan enters. Returns its pid and the read end of the status pipe (pass it to
    /// [`wait_exec`]). Runs once per plan. The caller must be ready to have the pid reaped
    /// at any time after this returns.
    pub fn fork(
        &mut self,
        stdio: &ChildStdio<'_>,
        join: Option<BorrowedFd<'_>>,
    ) -> io::Result<(libc::pid_t, OwnedFd)> {
        let (rd, wr) = self.status.take().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the plan was already forked")
        })?;
        if self.join != join.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pidfd is needed exactly for joining namespaces",
            ));
        }
        let this = &*self;
        if let Some(target) = join {
            let (pid_rd, pid_wr) = sys::pipe()?;
            // SAFETY: as for fork below; the intermediate runs `join_main`, which only makes
            // async-signal-safe calls on memory prepared before the fork.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: we are the freshly forked intermediate; see `join_main`.
                unsafe { this.join_main(stdio, wr.as_raw_fd(), target, pid_wr.as_raw_fd()) }
            }
            let pid = sys::cvt(pid)?;
            drop((wr, pid_wr));
            // The child's pid; EOF if the intermediate failed, in which case its own pid
            // stands in (it exits 127 and the status pipe says why).
            let mut buf = [0u8; 4];
            let n = sys::read_fd(pid_rd.as_fd(), &mut buf)?;
            let pid = if n == 4 { i32::from_ne_bytes(buf) } else { pid };
            return Ok((pid, rd));
        }
        let pid = match &this.new_ns_proc {
            // SAFETY: a raw clone without a new stack is fork(2) minus glibc's atfork
            // handlers; the child only calls `child_main` (async-signal-safe calls on memory
            // prepared before the clone), so none of the state those handlers reset is used.
            Some(_) => unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (NEW_NAMESPACES | libc::SIGCHLD) as libc::c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                ) as libc::pid_t
            },
            // SAFETY: fork has no preconditions; the child branch only calls `child_main`,
            // which restricts itself to async-signal-safe calls on memory prepared before
            // the fork.
            None => unsafe { libc::fork() },
        };
        if pid == 0 {
            // SAFETY: we are the freshly forked child; see `child_main`.
            unsafe { this.child_main(stdio, wr.as_raw_fd()) }
        }
        let pid = sys::cvt(pid)?;
        drop(wr);
        Ok((pid, rd))
    }

    /// The intermediate of a `Join`: enters the target's namespaces, clones the child as a
    /// sibling (`CLONE_PARENT`), sends its pid and exits.
    ///
    /// # Safety
    /// Must only be called in a child right after fork.
    unsafe fn join_main(
        &self,
        stdio: &ChildStdio<'_>,
        err_fd: RawFd,
        target: BorrowedFd<'_>,
        pid_fd: RawFd,
    ) -> ! {
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY (whole block): async-signal-safe syscalls only, on fds and memory prepared
        // before the fork.
        unsafe {
            if libc::setns(target.as_raw_fd(), NEW_NAMESPACES) < 0 {
                report_failure(err_fd, Stage::Namespaces, errno());
            }
            // A raw clone without a new stack: see `fork`.
            let pid = libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            ) as libc::pid_t;
            if pid == 0 {
                libc::close(pid_fd);
                self.child_main(stdio, err_fd)
            }
            if pid < 0 {
                report_failure(err_fd, Stage::Namespaces, errno());
            }
            let buf = pid.to_ne_bytes();
            libc::write(pid_fd, buf.as_ptr().cast(), buf.len());
            libc::_exit(0)
        }
    }

    /// The child side. Never returns: execs or `_exit(127)`s after reporting the failure.
    ///
    /// # Safety
    /// Must only be called in a child right after fork.
    unsafe fn child_main(&self, stdio: &ChildStdio<'_>, err_fd: RawFd) -> ! {
        let fail = |stage: Stage, errno: i32| report_failure(err_fd, stage, errno);
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY (whole block): only async-signal-safe syscalls on pointers into `self`,
        // which is valid and immutable in the child's copy of the address space.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, &self.empty_mask, std::ptr::null_mut());
            // Rust ignores SIGPIPE; exec would keep that for the container process.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if let Some(proc_dir) = &self.new_ns_proc {
                // Nothing mounted from here on may leak back into the guest's namespace.
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let none = std::ptr::null();
                if libc::mount(none, c"/".as_ptr(), none, flags, std::ptr::null()) < 0 {
                    fail(Stage::Namespaces, errno());
                }
                // The copy of the guest-wide /proc goes; one of this PID namespace replaces
                // it (only a member of the namespace can mount that).
                libc::umount2(proc_dir.as_ptr(), libc::MNT_DETACH);
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                if libc::mount(
                    c"proc".as_ptr(),
                    proc_dir.as_ptr(),
                    c"proc".as_ptr(),
                    flags,
                    std::ptr::null(),
                ) < 0
                {
                    fail(Stage::Proc, errno());
                }
            }
            if libc::setsid() < 0 {
                fail(Stage::Setsid, errno());
            }
            // All source fds are >= 3 (fds 0-2 of init are always open), so dup2 never
            // clobbers a source before it is used.
            libc::dup2(stdio.stdin.as_raw_fd(), 0);
            libc::dup2(stdio.stdout.as_raw_fd(), 1);
            libc::dup2(stdio.stderr.as_raw_fd(), 2);
            // Everything else init has open is close-on-exec already; make sure of it.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if stdio.tty {
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    fail(Stage::Tty, errno());
                }
                libc::fchown(0, self.uid, self.gid);
            }
            libc::umask(0o022);
            if libc::chroot(self.root.as_ptr()) < 0 {
                fail(Stage::Chroot, errno());
            }
            if libc::chdir(c"/".as_ptr()) < 0 {
                fail(Stage::Chroot, errno());
            }
            for dir in &self.cwd_prefixes {
                libc::mkdir(dir.as_ptr(), 0o755);
            }
            for (res, lim) in &self.rlimits {
                if libc::setrlimit(*res, lim) < 0 {
                    fail(Stage::Rlimit, errno());
                }
            }
            let cwd_done = libc::chdir(self.cwd.as_ptr()) == 0;
            if !cwd_done {
                let e = errno();
                if e != libc::EACCES && e != libc::EPERM {
                    fail(Stage::Chdir, e);
                }
            }
            // Raw syscalls, not glibc's wrappers: those broadcast the change to every
            // thread glibc knows of, and after a raw clone it still knows the agent's
            // threads, which this child does not have (it would wait for them forever).
            if libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) < 0 {
                fail(Stage::Setgroups, errno());
            }
            if libc::syscall(libc::SYS_setgid, self.gid) < 0 {
                fail(Stage::Setgid, errno());
            }
            if libc::syscall(libc::SYS_setuid, self.uid) < 0 {
                fail(Stage::Setuid, errno());
            }
            if !cwd_done && libc::chdir(self.cwd.as_ptr()) < 0 {
                fail(Stage::Chdir, errno());
            }
            if self.pass_status {
                // The reaper reports its program's exec failure on this fd.
                libc::fcntl(err_fd, libc::F_SETFD, 0);
            }
            if let Some(exe) = &self.tool_exe {
                libc::syscall(
                    libc::SYS_execveat,
                    exe.as_raw_fd(),
                    c"".as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.envp_ptrs.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                fail(Stage::Exec, errno());
            }
            let mut saw_eacces = false;
            for path in &self.candidates {
                libc::execve(
                    path.as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.envp_ptrs.as_ptr(),
                );
                match errno() {
                    libc::EACCES => saw_eacces = true,
                    libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP => {}
                    e => fail(Stage::Exec, e),
                }
            }
            report_failure(
                err_fd,
                Stage::Exec,
                if saw_eacces {
                    libc::EACCES
                } else {
                    libc::ENOENT
                },
            )
        }
    }

    /// The `PROCESS_START_FAILED` error for a child failure, with Docker-like messages.
    pub fn describe(&self, f: ExecFailure) -> RpcError {
        let prog = &self.program;
        let msg = match f.stage {
            Stage::Exec => match f.errno {
                libc::ENOENT if self.searched_path => {
                    format!("exec: \"{prog}\": executable file not found in $PATH")
                }
                libc::ENOENT => {
                    format!("exec: \"{prog}\": stat {prog}: no such file or directory")
                }
                e => format!("exec: \"{prog}\": {}", errno_text(e)),
            },
            Stage::Chdir => format!(
                "chdir to cwd (\"{}\") failed: {}",
                self.cwd_display,
                errno_text(f.errno)
            ),
            Stage::Chroot => format!(
                "chroot to {} failed: {}",
                self.root_display,
                errno_text(f.errno)
            ),
            Stage::Setuid => format!("setuid({}) failed: {}", self.uid, errno_text(f.errno)),
            Stage::Setgid => format!("setgid({}) failed: {}", self.gid, errno_text(f.errno)),
            Stage::Setgroups => format!("setgroups failed: {}", errno_text(f.errno)),
            Stage::Rlimit => format!("setrlimit failed: {}", errno_text(f.errno)),
            Stage::Tty => format!(
                "setting the controlling terminal failed: {}",
                errno_text(f.errno)
            ),
            Stage::Setsid => format!("setsid failed: {}", errno_text(f.errno)),
            Stage::Namespaces => format!(
                "entering the container's namespaces failed: {}",
                errno_text(f.errno)
            ),
            Stage::Proc => format!("mounting /proc failed: {}", errno_text(f.errno)),
        };
        RpcError::process_start_failed(f.errno, msg)
    }
}

/// Child side: sends `(stage, errno)` to the parent and exits with 127.
pub(crate) fn report_failure(err_fd: RawFd, stage: Stage, errno: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_be_bytes());
    msg[4..].copy_from_slice(&errno.to_be_bytes());
    // SAFETY: write and _exit are async-signal-safe; `msg` is a valid buffer.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Waits for the child to exec (`Ok`) or report a failure.
pub fn wait_exec(rd: OwnedFd) -> io::Result<Result<(), ExecFailure>> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match sys::read_fd(rd.as_fd(), &mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got == 0 {
        return Ok(Ok(()));
    }
    if got < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short status from child",
        ));
    }
    let stage = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    let errno = i32::from_be_bytes(buf[4..].try_into().expect("4 bytes"));
    let stage = Stage::from_u32(stage)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stage from child"))?;
    Ok(Err(ExecFailure { stage, errno }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let env = vec!["A=1".to_string(), "PATH=/usr/bin::/bin/".to_string()];
        assert_eq!(
            exec_candidates("ls", &env),
            (
                vec!["/usr/bin/ls".into(), "./ls".into(), "/bin/ls".into()],
                true
            )
        );
        assert_eq!(
            exec_candidates("./x", &env),
            (vec!["./x".to_string()], false)
        );
        let (c, searched) = exec_candidates("sh", &[]);
        assert!(searched);
        assert_eq!(c.last().unwrap(), "/bin/sh");
        assert_eq!(c.len(), 6);
        assert_eq!(exec_candidates("", &env), (vec![], true));
    }

    #[test]
    fn prefixes() {
        assert_eq!(dir_prefixes("/a/b//c/"), vec!["/a", "/a/b", "/a/b/c"]);
        assert!(dir_prefixes("/").is_empty());
        assert_eq!(dir_prefixes("rel/x"), vec!["/rel", "/rel/x"]);
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("NOFILE"), None);
    }

    #[test]
    fn messages() {
        let spec = ProcessSpec {
            id: "x".into(),
            args: vec!["foo".into()],
            env: vec![],
            cwd: "/w".into(),
            user: Default::default(),
            terminal: false,
            stdin_port: None,
            stdout_port: None,
            stderr_port: None,
            rootfs: None,
            rlimits: vec![],
            agent_tool: false,
            namespaces: Default::default(),
            init: false,
            tty_size: None,
        };
        let user = ExecUser {
            uid: 0,
            gid: 0,
            groups: vec![],
            home: "/".into(),
        };
        let plan = ExecPlan::new(&spec, Path::new("/"), &user).unwrap();
        let e = plan.describe(ExecFailure {
            stage: Stage::Exec,
            errno: libc::ENOENT,
        });
        assert_eq!(
            e.message,
            "exec: \"foo\": executable file not found in $PATH"
        );
        assert_eq!(
            e.data_as::<apex_agent_proto::rpc::ProcessStartFailed>()
                .unwrap()
                .exit_code,
            127
        );
        let e = plan.describe(ExecFailure {
            stage: Stage::Exec,
            errno: libc::EACCES,
        });
        assert_eq!(e.message, "exec: \"foo\": permission denied");
        let e = plan.describe(ExecFailure {
            stage: Stage::Chdir,
            errno: libc::ENOTDIR,
        });
        assert_eq!(e.message, "chdir to cwd (\"/w\") failed: not a directory");
        let bad = ProcessSpec {
            args: vec!["a\0b".into()],
            ..spec
        };
        assert!(ExecPlan::new(&bad, Path::new("/"), &user)
            .err()
            .unwrap()
            .contains("NUL"));
    }
}
