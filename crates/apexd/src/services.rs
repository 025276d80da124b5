//! The service layer: one of each service (containers, images, networks, volumes,
//! builds) and the one event stream. Every front door (the native API, the Docker API,
//! and later the dashboard) translates requests into calls on these and never keeps
//! state of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::builds::Builds;
use crate::containers::Containers;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::images::Images;
use crate::info;
use crate::model::{DirUsage, DiskUsage, SystemStatus};
use crate::networks::Networks;
use crate::paths::Paths;
use crate::store::StateStore;
use crate::volumes::Volumes;

/// Every service of one daemon.
pub struct Services {
    paths: Paths,
    started: Instant,
    store: Arc<StateStore>,
    containers: Arc<Containers>,
    networks: Arc<Networks>,
    images: Arc<Images>,
    builds: Arc<Builds>,
    events: Arc<Events>,
    shutdown: Arc<Notify>,
    accel_cache: PathBuf,
}

impl Services {
    /// The services of the daemon serving `paths`; `shutdown` is notified when a front
    /// door asks the daemon to stop.
    pub fn new(
        paths: Paths,
        store: Arc<StateStore>,
        shutdown: Arc<Notify>,
        accel_cache: PathBuf,
        networks: Arc<Networks>,
    ) -> Arc<Self> {
        let events = Arc::new(Events::default());
        let volumes = Volumes::new(paths.home(), store.clone(), events.clone());
        let containers = Containers::new(
            paths.home(),
            store.clone(),
            networks.clone(),
            volumes,
            events.clone(),
        );
        let images = Images::new(paths.home(), store.clone(), events.clone());
        let builds = Builds::new(paths.home(), containers.clone(), images.clone());
        Arc::new(Services {
            paths,
            started: Instant::now(),
            store,
            containers,
            networks,
            images,
            builds,
            events,
            shutdown,
            accel_cache,
        })
    }

    /// The file layout.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Containers.
    pub fn containers(&self) -> &Arc<Containers> {
        &self.containers
    }

    /// Networks.
    pub fn networks(&self) -> &Arc<Networks> {
        &self.networks
    }

    /// Volumes.
    pub fn volumes(&self) -> &Arc<Volumes> {
        self.containers.volumes()
    }

    /// Images.
    pub fn images(&self) -> &Arc<Images> {
        &self.images
    }

    /// Dockerfile builds.
    pub fn builds(&self) -> &Arc<Builds> {
        &self.builds
    }

    /// The event stream.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// When the daemon started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Asks the daemon to stop.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// The accelerator VMs use (`kvm`, `tcg`, or `unknown` before the first boot).
    pub async fn accelerator(&self) -> String {
        let cache = self.accel_cache.clone();
        tokio::task::spawn_blocking(move || info::accelerator(&cache))
            .await
            .unwrap_or_else(|_| "unknown".into())
    }

    /// `apex system status`.
    pub async fn status(&self) -> Result<SystemStatus> {
        let images = self.images.list().await?.len();
        let (mode, reason) = self.networks.mode();
        let docker = self.paths.docker_socket();
        Ok(SystemStatus {
            network_mode: mode.into(),
            network_reason: reason,
            dns: self
                .networks
                .host_dns()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            home: self.paths.home().to_path_buf(),
            containers: self.store.count()?,
            images: images as u64,
            accelerator: self.accelerator().await,
            docker_host: if docker.exists() {
                format!("unix://{}", docker.display())
            } else {
                String::new()
            },
        })
    }

    /// Disk used by each directory of the home.
    pub async fn disk_usage(&self) -> Result<DiskUsage> {
        let home = self.paths.home().to_path_buf();
        let dirs = tokio::task::spawn_blocking(move || {
            info::DF_DIRS
                .iter()
                .map(|name| {
                    let path = home.join(name);
                    DirUsage {
                        name: (*name).into(),
                        bytes: info::disk_usage(&path),
                        path,
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Error::internal(format!("worker failed: {e}")))?;
        let total = dirs.iter().map(|d| d.bytes).sum();
        Ok(DiskUsage { dirs, total })
    }
}
