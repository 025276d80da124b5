//! The reaping init of `--init` (`apex-init -- PROGRAM ARGS...`), what Docker's
//! `docker-init` (tini) is: it runs as the container's PID 1, forks `PROGRAM`,
//! forwards the signals it gets to it, reaps every orphan, and exits with `PROGRAM`'s
//! status (128 + the signal when it was killed).
//!
//! Hand-rolled rather than shipping tini: it is ~100 lines on top of what the agent already
//! has (the exec loop and the status pipe of [`crate::spawn`]), and it needs no second
//! binary in the guest.
//!
//! When [`STATUS_FD_ENV`] names an fd, a failed exec of `PROGRAM` is reported on it the way
//! [`crate::spawn`]'s children report theirs; the variable is not passed on.
//!
//! Signals stay blocked in the reaper and are taken with sigwaitinfo(2). That is also what
//! lets them reach it at all: the kernel drops a signal sent to a PID namespace's init when
//! it is neither blocked nor handled.

use std::ffi::CString;

use crate::spawn::{exec_candidates, report_failure, Stage, STATUS_FD_ENV};

/// Signals never forwarded: synchronous faults (the reaper's own) and job control of the
/// terminal.
const NOT_FORWARDED: &[libc::c_int] = &[
    libc::SIGCHLD,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

fn c(s: &str) -> CString {
    // Arguments and environment came through execve, so they hold no NUL byte.
    CString::new(s).unwrap_or_default()
}

/// Runs the reaper; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let Some(program) = args.first() else {
        eprintln!("usage: apex-init -- PROGRAM [ARGS...]");
        return 2;
    };
    let status_fd: Option<libc::c_int> = std::env::var(STATUS_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let env: Vec<String> = std::env::vars_os()
        .filter(|(k, _)| k != STATUS_FD_ENV)
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    let argv = args;
    let (candidates, _) = exec_candidates(program, &env);
    let candidates: Vec<CString> = candidates.iter().map(|p| c(p)).collect();
    let argv_c: Vec<CString> = argv.iter().map(|a| c(a)).collect();
    let envp_c: Vec<CString> = env.iter().map(|a| c(a)).collect();
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, envp_p) = (ptrs(&argv_c), ptrs(&envp_c));

    // SAFETY: sigset_t is plain old data, initialized by sigfillset/sigemptyset.
    let (mut all, mut none): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to sigsets; fcntl on an fd number has no memory preconditions.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        if let Some(fd) = status_fd {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    // SAFETY: the reaper is single-threaded, so the child may do anything; it only makes
    // plain syscalls on memory prepared above.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: the child's own process group and terminal, then exec; only syscalls.
        unsafe {
            libc::setpgid(0, 0);
            // The child's group gets the terminal's signals (^C), not the reaper's.
            if libc::isatty(0) == 1 {
                libc::tcsetpgrp(0, libc::getpid());
            }
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            let mut saw_eacces = false;
            for path in &candidates {
                libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
                match *libc::__errno_location() {
                    libc::EACCES => saw_eacces = true,
                    libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP => {}
                    e => exec_failed(status_fd, program, e),
                }
            }
            exec_failed(
                status_fd,
                program,
                if saw_eacces {
                    libc::EACCES
                } else {
                    libc::ENOENT
                },
            )
        }
    }
    if let Some(fd) = status_fd {
        // SAFETY: closing our copy of the status pipe, which nothing else here uses.
        unsafe { libc::close(fd) };
    }
    if child < 0 {
        eprintln!("apex-init: fork: {}", std::io::Error::last_os_error());
        return 126;
    }
    loop {
        // SAFETY: siginfo_t is plain old data filled by sigwaitinfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; the set holds every signal, all blocked.
        let sig = unsafe { libc::sigwaitinfo(&all, &mut info) };
        if sig > 0 && !NOT_FORWARDED.contains(&sig) {
            // SAFETY: kill(2) has no memory preconditions.
            unsafe { libc::kill(child, sig) };
        }
        // Several exits may share one SIGCHLD: reap them all.
        if let Some(code) = reap(child) {
            return code;
        }
    }
}

/// The forked child's end after a failed exec: reported on the status fd, else on stderr.
fn exec_failed(status_fd: Option<libc::c_int>, program: &str, errno: i32) -> ! {
    match status_fd {
        Some(fd) => report_failure(fd, Stage::Exec, errno),
        None => {
            // The reaper is single-threaded, so its forked child may allocate and print.
            let e = std::io::Error::from_raw_os_error(errno);
            eprintln!("apex-init: exec {program}: {e}");
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(127) }
        }
    }
}

/// Reaps every exited child; the exit code once `child` is among them.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == child {
            result = Some(crate::process::exit_status(status).exit_code);
        }
    }
}
