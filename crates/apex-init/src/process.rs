//! Container processes: the table keyed by host-chosen id, their lifecycle
//! (created → starting → running → exited), stdio wiring, and reaping.
//!
//! Reaping: init reaps every child (tracked or orphaned) with `waitpid(-1, WNOHANG)` from
//! [`Processes::reap`] (driven by SIGCHLD). Lock order is table, then process; fork and pid
//! registration happen under the table lock, and so do waitpid and `kill`, so a pid is never
//! reaped before it is known nor signalled after it was reaped.
//!
//! Stdio: non-tty processes get the host connections themselves as fds 0/1/2 (`None` =
//! `/dev/null`); init keeps only a handle on stdin (for `close_stdin`), dropped at exit, so
//! the host sees EOF on stdout/stderr as soon as every holder has closed them. Tty
//! processes get the pty slave as fds 0/1/2; init relays master → stdout connection and
//! stdin connection → master.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

use apex_agent_proto::api::{self, Event, ExitStatus, Namespaces, ProcessSpec, ProcessStarted};
use apex_agent_proto::rpc::{codes, ProcessStartFailed};
use apex_agent_proto::RpcError;

use crate::pty::{self, Pty};
use crate::spawn::{self, ChildStdio, ExecPlan};
use crate::sys::{self, Stream};
use crate::transport::Transport;
use crate::user;

/// Locks a mutex, ignoring poisoning (a panicked request thread must not wedge the agent).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Stdio connected, not started.
    Created,
    /// Forked, waiting for the exec result.
    Starting,
    /// Exec succeeded, not yet reaped.
    Running,
    /// Reaped (or failed to start); `status` is set.
    Exited,
}

/// Resources prepared by `create_process` for the exec.
#[derive(Default)]
struct Prepared {
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    pty: Option<Pty>,
}

struct State {
    phase: Phase,
    prepared: Option<Prepared>,
    pid: Option<libc::pid_t>,
    status: Option<ExitStatus>,
    /// Reaped while `Starting` (exited before the exec result was read).
    reaped_early: Option<ExitStatus>,
    /// Non-tty: init's handle on the stdin connection, for `close_stdin`.
    stdin: Option<Stream>,
    /// Tty: the pty master (for resize and `close_stdin`).
    master: Option<Arc<OwnedFd>>,
    /// Tty: dropping this stops the input relay.
    stop_input: Option<OwnedFd>,
}

/// One container process.
pub struct Process {
    id: String,
    spec: ProcessSpec,
    root: PathBuf,
    state: Mutex<State>,
    exited: Condvar,
}

impl Process {
    /// Records the exit; returns the event to publish, if the process had started.
    fn on_exit(&self, status: ExitStatus) -> Option<Event> {
        let mut st = lock(&self.state);
        match st.phase {
            Phase::Starting => {
                st.reaped_early = Some(status);
                None
            }
            Phase::Running => Some(self.finish(&mut st, status)),
            Phase::Created | Phase::Exited => None,
        }
    }

    fn finish(&self, st: &mut State, status: ExitStatus) -> Event {
        st.phase = Phase::Exited;
        st.status = Some(status);
        st.stdin = None;
        st.stop_input = None;
        st.master = None;
        self.exited.notify_all();
        crate::debug!("process {} (pid {:?}) exited: {status:?}", self.id, st.pid);
        Event::ProcessExited(api::ProcessExited {
            id: self.id.clone(),
            exit_code: status.exit_code,
            signal: status.signal,
        })
    }
}

/// Converts a wait(2) status.
pub fn exit_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        ExitStatus {
            exit_code: 128 + sig,
            signal: Some(sig),
        }
    } else {
        ExitStatus {
            exit_code: libc::WEXITSTATUS(status),
            signal: None,
        }
    }
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Process>>,
    by_pid: HashMap<libc::pid_t, Arc<Process>>,
}

/// All processes of the guest.
pub struct Processes {
    table: Mutex<Table>,
    transport: Transport,
    default_root: PathBuf,
    events: Mutex<mpsc::Sender<Event>>,
}

fn not_found(id: &str) -> RpcError {
    RpcError::new(codes::NOT_FOUND, format!("no such process: {id}"))
}

fn invalid_state(msg: String) -> RpcError {
    RpcError::new(codes::INVALID_STATE, msg)
}

fn start_failed(exit_code: i32, msg: String) -> RpcError {
    RpcError::new(codes::PROCESS_START_FAILED, msg).with_data(ProcessStartFailed {
        errno: None,
        exit_code,
    })
}

impl Processes {
    /// A table whose processes run in `default_root` unless their spec names a rootfs;
    /// exit events are sent to `events`.
    pub fn new(transport: Transport, default_root: PathBuf, events: mpsc::Sender<Event>) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            transport,
            default_root,
            events: Mutex::new(events),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Process>, RpcError> {
        lock(&self.table)
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// `create_process`: connects stdio (stdin, stdout, stderr), allocates the pty.
    pub fn create(&self, spec: ProcessSpec) -> Result<(), RpcError> {
        if spec.args.is_empty() {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                "args must not be empty",
            ));
        }
        if spec.terminal && spec.stderr_port.is_some() {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                "stderr_port must be None with terminal: true",
            ));
        }
        let root = spec
            .rootfs
            .as_ref()
            .map_or_else(|| self.default_root.clone(), PathBuf::from);
        let id = spec.id.clone();
        let proc = Arc::new(Process {
            id: id.clone(),
            spec,
            root,
            state: Mutex::new(State {
                phase: Phase::Created,
                prepared: None,
                pid: None,
                status: None,
                reaped_early: None,
                stdin: None,
                master: None,
                stop_input: None,
            }),
            exited: Condvar::new(),
        });
        {
            let mut t = lock(&self.table);
            if t.by_id.contains_key(&id) {
                return Err(RpcError::new(
                    codes::ALREADY_EXISTS,
                    format!("process {id} already exists"),
                ));
            }
            t.by_id.insert(id.clone(), proc.clone());
        }
        match self.prepare(&proc) {
            Ok(prepared) => {
                lock(&proc.state).prepared = Some(prepared);
                crate::debug!("process {id} created");
                Ok(())
            }
            Err(e) => {
                lock(&self.table).by_id.remove(&id);
                Err(e)
            }
        }
    }

    fn prepare(&self, proc: &Process) -> Result<Prepared, RpcError> {
        let spec = &proc.spec;
        let connect = |name: &str, port: Option<u32>| -> Result<Option<Stream>, RpcError> {
            port.map(|p| {
                self.transport.connect_host(p).map_err(|e| {
                    RpcError::os_error(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("connecting {name} (port {p}) to the host: {e}"),
                    )
                })
            })
            .transpose()
        };
        let mut prepared = Prepared {
            stdin: connect("stdin", spec.stdin_port)?,
            stdout: connect("stdout", spec.stdout_port)?,
            stderr: connect("stderr", spec.stderr_port)?,
            pty: None,
        };
        if spec.terminal {
            let os = |e: std::io::Error, what: &str| {
                RpcError::os_error(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("{what}: {e}"),
                )
            };
            let pty = pty::open(&proc.root).map_err(|e| os(e, "allocating a pty"))?;
            if let Some((rows, cols)) = spec.tty_size {
                pty::set_winsize(pty.master.as_fd(), rows, cols)
                    .map_err(|e| os(e, "TIOCSWINSZ"))?;
            }
            prepared.pty = Some(pty);
        }
        Ok(prepared)
    }

    /// `start_process`: forks and execs; returns once the exec succeeded or failed.
    pub fn start(&self, id: &str) -> Result<ProcessStarted, RpcError> {
        let proc = self.get(id)?;
        let prepared = {
            let mut st = lock(&proc.state);
            match (st.phase, st.prepared.take()) {
                (Phase::Created, Some(p)) => {
                    st.phase = Phase::Starting;
                    p
                }
                (Phase::Created, None) => {
                    return Err(invalid_state(format!(
                        "process {id} is still being created"
                    )))
                }
                _ => return Err(invalid_state(format!("process {id} was already started"))),
            }
        };
        match self.spawn(&proc, prepared) {
            Ok(pid) => Ok(ProcessStarted { pid: pid as u32 }),
            Err(e) => {
                let exit_code = e
                    .data_as::<ProcessStartFailed>()
                    .map_or(126, |d| d.exit_code);
                let mut st = lock(&proc.state);
                st.phase = Phase::Exited;
                st.status = Some(ExitStatus {
                    exit_code,
                    signal: None,
                });
                proc.exited.notify_all();
                crate::debug!("process {id} failed to start: {}", e.message);
                Err(e)
            }
        }
    }

    fn spawn(&self, proc: &Arc<Process>, prepared: Prepared) -> Result<libc::pid_t, RpcError> {
        let exec_user =
            user::resolve(&proc.spec.user, &proc.root).map_err(|m| start_failed(126, m))?;
        let mut plan =
            ExecPlan::new(&proc.spec, &proc.root, &exec_user).map_err(|m| start_failed(126, m))?;
        let Prepared {
            stdin,
            stdout,
            stderr,
            pty,
        } = prepared;
        let os_err = |e: std::io::Error, what: &str| {
            RpcError::os_error(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("{what}: {e}"),
            )
        };
        let null = sys::open(Path::new("/dev/null"), libc::O_RDWR)
            .map_err(|e| os_err(e, "opening /dev/null"))?;
        let (pid, status_pipe) = {
            let stdio = match &pty {
                Some(p) => ChildStdio {
                    stdin: p.slave.as_fd(),
                    stdout: p.slave.as_fd(),
                    stderr: p.slave.as_fd(),
                    tty: true,
                },
                None => {
                    fn or_null<'a>(s: &'a Option<Stream>, null: &'a OwnedFd) -> BorrowedFd<'a> {
                        s.as_ref().map_or(null.as_fd(), |s| s.as_fd())
                    }
                    ChildStdio {
                        stdin: or_null(&stdin, &null),
                        stdout: or_null(&stdout, &null),
                        stderr: or_null(&stderr, &null),
                        tty: false,
                    }
                }
            };
            let mut table = lock(&self.table);
            // Under the table lock, so the target cannot be reaped in between.
            let target = match &proc.spec.namespaces {
                Namespaces::Join(target) => Some(Self::pidfd_of(&table, target)?),
                _ => None,
            };
            let (pid, rd) = plan
                .fork(&stdio, target.as_ref().map(|t| t.as_fd()))
                .map_err(|e| os_err(e, "fork"))?;
            table.by_pid.insert(pid, proc.clone());
            lock(&proc.state).pid = Some(pid);
            (pid, rd)
        };
        // Init's copies of the child's stdio must go, so EOF reaches the host.
        drop((null, stderr));
        let (tty_out, master) = match pty {
            Some(Pty { master, slave }) => {
                drop(slave);
                (stdout, Some(Arc::new(master)))
            }
            None => {
                drop(stdout);
                (None, None)
            }
        };
        crate::debug!("process {}: forked pid {pid}, waiting for exec", proc.id);
        let result = spawn::wait_exec(status_pipe);
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(f)) => Some(plan.describe(f)),
            Err(e) => Some(os_err(e, "reading the exec status")),
        };
        if let Some(err) = failure {
            return Err(err);
        }
        let mut st = lock(&proc.state);
        if let Some(master) = master {
            let m = master.clone();
            std::thread::spawn(move || pty::relay_output(m, tty_out));
            if let Some(input) = stdin {
                let (stop_rd, stop_wr) = sys::pipe().map_err(|e| os_err(e, "pipe"))?;
                let m = master.clone();
                std::thread::spawn(move || pty::relay_input(m, input, stop_rd));
                st.stop_input = Some(stop_wr);
            }
            st.master = Some(master);
        } else {
            st.stdin = stdin;
        }
        match st.reaped_early.take() {
            Some(status) => {
                let ev = proc.finish(&mut st, status);
                drop(st);
                self.publish(ev);
            }
            None => st.phase = Phase::Running,
        }
        crate::debug!("process {} started: pid {pid}", proc.id);
        Ok(pid)
    }

    /// A pidfd on the running process `id`, whose namespaces another process joins.
    fn pidfd_of(table: &Table, id: &str) -> Result<OwnedFd, RpcError> {
        let proc = table.by_id.get(id).ok_or_else(|| not_found(id))?;
        let st = lock(&proc.state);
        match (st.phase, st.pid) {
            (Phase::Running, Some(pid)) => sys::pidfd_open(pid).map_err(|e| {
                RpcError::os_error(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("pidfd_open: {e}"),
                )
            }),
            _ => Err(invalid_state(format!("process {id} is not running"))),
        }
    }

    /// `exec_process`: create + start.
    pub fn exec(&self, spec: ProcessSpec) -> Result<ProcessStarted, RpcError> {
        let id = spec.id.clone();
        self.create(spec)?;
        self.start(&id)
    }

    /// `wait_process`: blocks until the process has exited.
    pub fn wait(&self, id: &str) -> Result<ExitStatus, RpcError> {
        let proc = self.get(id)?;
        let mut st = lock(&proc.state);
        loop {
            if let Some(status) = st.status {
                return Ok(status);
            }
            st = proc.exited.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// `kill_process`: kill(2) on the process's pid.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RpcError> {
        if !(0..=64).contains(&signal) {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                format!("invalid signal {signal}"),
            ));
        }
        // The table lock keeps the reaper from freeing the pid while we signal it.
        let table = lock(&self.table);
        let proc = table.by_id.get(id).cloned().ok_or_else(|| not_found(id))?;
        let st = lock(&proc.state);
        match (st.phase, st.pid) {
            (Phase::Running | Phase::Starting, Some(pid)) if st.reaped_early.is_none() => {
                // SAFETY: kill(2) has no memory-safety preconditions.
                sys::cvt(unsafe { libc::kill(pid, signal) })
                    .map(drop)
                    .map_err(|e| {
                        RpcError::os_error(
                            e.raw_os_error().unwrap_or(libc::EIO),
                            format!("kill: {e}"),
                        )
                    })
            }
            (Phase::Created, _) => Err(invalid_state(format!("process {id} is not started"))),
            _ => Err(invalid_state(format!("process {id} has already exited"))),
        }
    }

    /// `resize_tty`.
    pub fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), RpcError> {
        let proc = self.get(id)?;
        let st = lock(&proc.state);
        let master = match (&st.master, &st.prepared) {
            (Some(m), _) => m.as_fd(),
            (None, Some(Prepared { pty: Some(p), .. })) => p.master.as_fd(),
            _ if !proc.spec.terminal => {
                return Err(invalid_state(format!("process {id} has no terminal")))
            }
            _ => return Err(invalid_state(format!("process {id} is not running"))),
        };
        pty::set_winsize(master, rows, cols).map_err(|e| {
            RpcError::os_error(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("TIOCSWINSZ: {e}"),
            )
        })
    }

    /// `close_stdin`. Non-tty: shuts down the read side of the stdin connection (the process
    /// reads EOF). Tty: stops relaying input and types the terminal's EOF character (^D),
    /// which a canonical-mode reader sees as end-of-file at the start of a line.
    pub fn close_stdin(&self, id: &str) -> Result<(), RpcError> {
        let proc = self.get(id)?;
        let mut st = lock(&proc.state);
        if let Some(p) = st.prepared.as_mut() {
            // Not started: the process will get /dev/null (or no input relay).
            p.stdin = None;
            return Ok(());
        }
        if let Some(s) = st.stdin.take() {
            let _ = s.shutdown(libc::SHUT_RD);
        }
        if let Some(master) = st.master.clone() {
            st.stop_input = None;
            pty::send_eof(master.as_fd()).map_err(|e| {
                RpcError::os_error(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("writing EOF: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Reaps every exited child; records tracked exits and publishes their events.
    pub fn reap(&self) {
        let mut events = Vec::new();
        {
            let mut table = lock(&self.table);
            loop {
                let mut status = 0;
                // SAFETY: `status` is a valid out-pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid == 0 {
                    break;
                }
                if pid < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                let exit = exit_status(status);
                match table.by_pid.remove(&pid) {
                    Some(p) => events.extend(p.on_exit(exit)),
                    None => crate::debug!("reaped orphan pid {pid}: {exit:?}"),
                }
            }
        }
        for ev in events {
            self.publish(ev);
        }
    }

    fn publish(&self, ev: Event) {
        let _ = lock(&self.events).send(ev);
    }

    /// Pids of started processes that have not been reaped.
    pub fn live_pids(&self) -> Vec<libc::pid_t> {
        lock(&self.table).by_pid.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_conversion() {
        // Exit code 3: status word 0x0300; killed by SIGTERM: 15.
        assert_eq!(
            exit_status(3 << 8),
            ExitStatus {
                exit_code: 3,
                signal: None
            }
        );
        assert_eq!(
            exit_status(libc::SIGTERM),
            ExitStatus {
                exit_code: 143,
                signal: Some(15)
            }
        );
        assert_eq!(
            exit_status(libc::SIGKILL | 0x80),
            ExitStatus {
                exit_code: 137,
                signal: Some(9)
            }
        );
    }
}
