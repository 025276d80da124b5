//! What a container runs: the image config's entrypoint, cmd, env, workdir and user,
//! overridden by `apex run` flags with docker's rules.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Default `PATH` when the image sets none (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an OCI image config (`config` object) that shape the process.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageProcessConfig {
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// `VOLUME`s: paths that get an anonymous volume (a map to empty objects).
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// `EXPOSE`d ports (`"80/tcp": {}`).
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `LABEL`s.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
}

/// A healthcheck (Docker's `HealthConfig`; durations in nanoseconds, 0 = default).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`; empty inherits.
    #[serde(default)]
    pub test: Vec<String>,
    /// Time between checks (default 30 s).
    #[serde(default)]
    pub interval: i64,
    /// Time a check may take (default 30 s).
    #[serde(default)]
    pub timeout: i64,
    /// Failures in a row that make the container unhealthy (default 3).
    #[serde(default)]
    pub retries: i64,
    /// Grace period after start when failures do not count (default 0).
    #[serde(default)]
    pub start_period: i64,
    /// Time between checks during the start period (default 5 s).
    #[serde(default)]
    pub start_interval: i64,
}

impl ImageProcessConfig {
    /// The image's `VOLUME` paths, sorted.
    pub fn volume_paths(&self) -> Vec<String> {
        self.volumes
            .as_ref()
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Reads the `config` object of a full image config document.
    pub fn from_image_config(doc: &serde_json::Value) -> Result<Self> {
        match doc.get("config") {
            Some(c) if !c.is_null() => {
                serde_json::from_value(c.clone()).context("parsing image config")
            }
            _ => Ok(Self::default()),
        }
    }
}

/// `apex run` flags that override the image.
#[derive(Debug, Default, Clone)]
pub struct RunOverrides {
    /// `--entrypoint` (an empty list clears the image's).
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the image name.
    pub command: Vec<String>,
    /// `-e KEY=value` or `-e KEY` (taken from the caller's environment).
    pub env: Vec<String>,
    /// Lines of `--env-file` files, in order.
    pub env_files: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// Container hostname.
    pub hostname: Option<String>,
}

/// The resolved process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in `PATH` by the guest.
    pub args: Vec<String>,
    /// `KEY=value`, deduplicated, in a stable order.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// User spec, resolved against the container's /etc/passwd by the guest.
    pub user: String,
    /// Allocate a terminal.
    pub terminal: bool,
    /// Run a reaping init in front of the process (`--init`; main processes only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// `args` name one of the agent's built-in tools (see
    /// [`apex_agent_proto::api::tools`]), run instead of a program of the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tool: bool,
}

/// Environment variables in first-set order, later values winning.
#[derive(Default)]
struct EnvList {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl EnvList {
    fn set(&mut self, k: String, v: String) {
        if !self.values.contains_key(&k) {
            self.order.push(k.clone());
        }
        self.values.insert(k, v);
    }

    fn set_default(&mut self, k: &str, v: &str) {
        if !self.values.contains_key(k) {
            self.set(k.to_string(), v.to_string());
        }
    }

    fn into_vec(self) -> Vec<String> {
        self.order
            .into_iter()
            .map(|k| format!("{k}={}", self.values[&k]))
            .collect()
    }
}

/// Parses an env file: `KEY=value` lines, `KEY` alone (from `lookup`), `#` comments.
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The entrypoint and cmd a container runs, with docker's rules: a command replaces the
/// image's cmd, and `--entrypoint` replaces the entrypoint and resets the cmd.
pub fn split_command(image: &ImageProcessConfig, o: &RunOverrides) -> (Vec<String>, Vec<String>) {
    let entrypoint: Vec<String> = match &o.entrypoint {
        Some(e) => e.clone(),
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !o.command.is_empty() {
        o.command.clone()
    } else if o.entrypoint.is_some() {
        vec![]
    } else {
        image.cmd.clone().unwrap_or_default()
    };
    (entrypoint, cmd)
}

/// Merges image config and flags. `lookup` reads the caller's environment for `-e KEY`.
pub fn resolve(
    image: &ImageProcessConfig,
    o: &RunOverrides,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ProcessSpec> {
    let (entrypoint, cmd) = split_command(image, o);
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!("no command specified: the image has no entrypoint or cmd; give a command after the image name");
    }

    let mut env = EnvList::default();
    let parse = |kv: &str, from_flag: bool| -> Result<Option<(String, String)>> {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if from_flag => match lookup(kv) {
                Some(v) => (kv.to_string(), v),
                None => return Ok(None),
            },
            None => (kv.to_string(), String::new()),
        };
        if k.is_empty() {
            bail!("invalid environment variable {kv:?}: empty name");
        }
        Ok(Some((k, v)))
    };
    for kv in image.env.iter().flatten() {
        if let Some((k, v)) = parse(kv, false)? {
            env.set(k, v);
        }
    }
    for kv in o.env_files.iter().chain(&o.env) {
        if let Some((k, v)) = parse(kv, true)? {
            env.set(k, v);
        }
    }
    env.set_default("PATH", DEFAULT_PATH);
    if let Some(h) = &o.hostname {
        env.set_default("HOSTNAME", h);
    }
    if o.tty {
        env.set_default("TERM", "xterm");
    }
    let env = env.into_vec();

    let cwd = o
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        bail!("working directory {cwd:?} must be an absolute path");
    }
    let user = o
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0".into());
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        user,
        terminal: o.tty,
        init: false,
        tool: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageProcessConfig {
        ImageProcessConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
            ..Default::default()
        }
    }

    #[test]
    fn image_defaults() {
        let s = resolve(&img(), &RunOverrides::default(), |_| None).unwrap();
        assert_eq!(s.args, ["/entry", "default"]);
        assert_eq!(s.env, ["PATH=/bin", "A=1"]);
        assert_eq!(s.cwd, "/srv");
        assert_eq!(s.user, "app");
    }

    #[test]
    fn command_replaces_cmd_entrypoint_replaces_both() {
        let o = RunOverrides {
            command: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(resolve(&img(), &o, |_| None).unwrap().args, ["/entry", "x"]);
        let o = RunOverrides {
            entrypoint: Some(vec!["/other".into()]),
            ..Default::default()
        };
        assert_eq!(resolve(&img(), &o, |_| None).unwrap().args, ["/other"]);
        let o = RunOverrides {
            entrypoint: Some(vec![]),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            ..Default::default()
        };
        assert_eq!(
            resolve(&img(), &o, |_| None).unwrap().args,
            ["sh", "-c", "true"]
        );
    }

    #[test]
    fn env_precedence_and_lookup() {
        let o = RunOverrides {
            env_files: vec!["A=file".into(), "B=file".into()],
            env: vec!["A=flag".into(), "FROM_HOST".into(), "MISSING".into()],
            tty: true,
            ..Default::default()
        };
        let s = resolve(&img(), &o, |k| (k == "FROM_HOST").then(|| "h".to_string())).unwrap();
        assert_eq!(
            s.env,
            ["PATH=/bin", "A=flag", "B=file", "FROM_HOST=h", "TERM=xterm"]
        );
    }

    #[test]
    fn defaults_without_image_config() {
        let o = RunOverrides {
            command: vec!["true".into()],
            ..Default::default()
        };
        let s = resolve(&ImageProcessConfig::default(), &o, |_| None).unwrap();
        assert_eq!(s.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!((s.cwd.as_str(), s.user.as_str()), ("/", "0"));
    }

    #[test]
    fn errors() {
        assert!(resolve(
            &ImageProcessConfig::default(),
            &RunOverrides::default(),
            |_| None
        )
        .unwrap_err()
        .to_string()
        .contains("no command"));
        let o = RunOverrides {
            workdir: Some("rel".into()),
            ..Default::default()
        };
        assert!(resolve(&img(), &o, |_| None).is_err());
        let o = RunOverrides {
            env: vec!["=x".into()],
            ..Default::default()
        };
        assert!(resolve(&img(), &o, |_| None).is_err());
    }

    #[test]
    fn env_file_parsing() {
        assert_eq!(
            parse_env_file("# c\nA=1\n\n  B=2\nC\n"),
            ["A=1", "B=2", "C"]
        );
    }

    #[test]
    fn reads_config_object() {
        let doc = serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["X=1"], "Volumes": {"/data": {}, "/a": {}}}});
        let c = ImageProcessConfig::from_image_config(&doc).unwrap();
        assert_eq!(c.volume_paths(), ["/a", "/data"]);
        assert_eq!(c.cmd.unwrap(), ["sh"]);
        let none = ImageProcessConfig::from_image_config(&serde_json::json!({})).unwrap();
        assert!(none.cmd.is_none());
    }
}
