//! File layout of the daemon under `$APEX_HOME`.

use std::path::{Path, PathBuf};

/// The paths the daemon and its clients agree on.
#[derive(Clone, Debug)]
pub struct Paths {
    home: PathBuf,
}

impl Paths {
    /// Paths under `home`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Paths { home: home.into() }
    }

    /// `$APEX_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `run/` (mode 0700): socket, pid file, lock.
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }

    /// The API socket (mode 0600).
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("apex.sock")
    }

    /// The Docker Engine API socket.
    pub fn docker_socket(&self) -> PathBuf {
        self.run_dir().join("docker.sock")
    }

    /// The pid of the serving daemon.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("apexd.pid")
    }

    /// Held (flock) by the serving daemon for its whole life.
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir().join("apexd.lock")
    }

    /// `logs/`.
    pub fn log_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// The daemon log.
    pub fn log_file(&self) -> PathBuf {
        self.log_dir().join("apexd.log")
    }

    /// The daemon state database (distinct from apex-oci's `db/images.redb`).
    pub fn state_db(&self) -> PathBuf {
        self.home.join("db").join("state.redb")
    }
}

/// Default `$APEX_HOME`: `/var/lib/apex` as root, `~/.apex` otherwise (same as the CLI).
pub fn default_home() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/lib/apex")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".apex")
    }
}
