//! A ready-to-run environment for VM tests: a loopback registry holding the busybox test
//! image and an Apex home that has pulled it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::apex::ApexHome;
use crate::images::{self, Compression, Layout};
use crate::registry::{Registry, RegistryAuth};
use crate::skopeo;

/// Registry + image + home; everything is torn down on drop (the home stops its daemon
/// and containers).
pub struct BusyboxEnv {
    /// The home (drops first: containers and daemon go before the registry).
    pub home: ApexHome,
    /// `HOST/busybox:latest`.
    pub image: String,
    /// Scratch space for the test.
    pub tmp: tempfile::TempDir,
    /// The registry.
    pub registry: Registry,
}

impl BusyboxEnv {
    /// Starts a registry, pushes busybox to it and pulls it into a fresh home.
    pub fn new() -> Self {
        Self::with_image("busybox", |dir| {
            images::busybox(dir, "latest", Compression::Gzip)
        })
    }

    /// Like [`BusyboxEnv::new`] with the image `build` writes (as `latest`) into the
    /// directory it is given, pushed as `HOST/<name>:latest`.
    pub fn with_image(name: &str, build: impl FnOnce(&Path) -> anyhow::Result<Layout>) -> Self {
        let registry = Registry::start(RegistryAuth::None).expect("registry");
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = build(&tmp.path().join(name)).expect("test image");
        let image = format!("{}/{name}:latest", registry.host());
        skopeo::push(&layout, "latest", &image, None).expect("skopeo push");
        let home = ApexHome::new();
        home.run(&["image", "pull", "-q", &image]).assert_ok();
        BusyboxEnv {
            home,
            image,
            tmp,
            registry,
        }
    }

    /// The home's path.
    pub fn path(&self) -> &Path {
        self.home.path()
    }
}

impl Default for BusyboxEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `limit` passes (then panics with
/// `what`).
#[track_caller]
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
