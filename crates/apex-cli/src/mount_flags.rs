//! Client-side handling of `-v`, `--mount` and `--storage-opt`, as the docker CLI does
//! it: relative bind sources (`./src`, `..`, `.`) become absolute, and `--mount`'s
//! `key=value` list becomes a [`MountRequest`]. The daemon checks the rest.

use std::path::{Component, Path, PathBuf};

use apexd::model::{MountRequest, MountType};
use apexd::mounts::parse_size;

/// Whether `src` is a path relative to the current directory (`.`, `..`, `./x`, `../x`).
fn is_relative_path(src: &str) -> bool {
    src == "." || src == ".." || src.starts_with("./") || src.starts_with("../")
}

/// `cwd/rel`, cleaned lexically.
fn absolute(cwd: &Path, rel: &str) -> String {
    let mut out = PathBuf::from("/");
    for c in cwd.join(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.display().to_string()
}

/// A `-v` spec with a relative source made absolute against `cwd`.
pub fn absolutize_volume(spec: &str, cwd: &Path) -> String {
    match spec.split_once(':') {
        Some((src, rest)) if is_relative_path(src) => format!("{}:{rest}", absolute(cwd, src)),
        _ => spec.to_string(),
    }
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("invalid value for {key}: {other}")),
    }
}

/// Parses `--mount type=bind,source=./src,target=/work,readonly` against `cwd`.
pub fn parse_mount(spec: &str, cwd: &Path) -> Result<MountRequest, String> {
    let mut m = MountRequest::default();
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| {
            v.map(str::to_string)
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        match key.as_str() {
            "type" => {
                m.kind = match need(value)?.as_str() {
                    "bind" => MountType::Bind,
                    "volume" => MountType::Volume,
                    "tmpfs" => MountType::Tmpfs,
                    t => {
                        return Err(format!(
                            "invalid mount type {t:?}: use bind, volume or tmpfs"
                        ))
                    }
                }
            }
            "source" | "src" => m.source = Some(need(value)?),
            "target" | "destination" | "dst" => m.target = need(value)?,
            "readonly" | "ro" => m.read_only = parse_bool(&key, value)?,
            "volume-nocopy" => m.no_copy = parse_bool(&key, value)?,
            "tmpfs-size" => {
                let v = need(value)?;
                m.tmpfs_size = Some(parse_size(&v).ok_or(format!("invalid tmpfs-size {v:?}"))?);
            }
            "tmpfs-mode" => {
                let v = need(value)?;
                m.tmpfs_mode = Some(
                    u32::from_str_radix(&v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or(format!("invalid tmpfs-mode {v:?}: use octal, e.g. 1777"))?,
                );
            }
            "volume-driver" => {
                if need(value)? != "local" {
                    return Err("only the local volume driver exists".into());
                }
            }
            // Accepted for compatibility; they change nothing inside a VM.
            "bind-propagation" | "consistency" => {}
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    if m.target.is_empty() {
        return Err("target is required".into());
    }
    if m.kind == MountType::Bind {
        if let Some(src) = m.source.as_deref().filter(|s| is_relative_path(s)) {
            m.source = Some(absolute(cwd, src));
        }
    }
    Ok(m)
}

/// Parses `--storage-opt size=20G` into bytes.
pub fn parse_storage_opt(s: &str) -> Result<u64, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid storage option {s:?}: use size=SIZE"))?;
    if !k.trim().eq_ignore_ascii_case("size") {
        return Err(format!(
            "unknown storage option {k:?}: only size= is supported"
        ));
    }
    parse_size(v).ok_or_else(|| format!("invalid size {v:?}: use e.g. 20G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_sources_become_absolute() {
        let cwd = Path::new("/home/me/proj");
        assert_eq!(
            absolutize_volume("./src:/work", cwd),
            "/home/me/proj/src:/work"
        );
        assert_eq!(
            absolutize_volume(".:/work:ro", cwd),
            "/home/me/proj:/work:ro"
        );
        assert_eq!(absolutize_volume("../x:/y", cwd), "/home/me/x:/y");
        assert_eq!(absolutize_volume("vol:/y", cwd), "vol:/y");
        assert_eq!(absolutize_volume("/abs:/y", cwd), "/abs:/y");
        assert_eq!(absolutize_volume("/anon", cwd), "/anon");
    }

    #[test]
    fn mount_flags() {
        let cwd = Path::new("/p");
        let m = parse_mount("type=bind,source=./s,target=/t,readonly", cwd).unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref(), m.target.as_str(), m.read_only),
            (MountType::Bind, Some("/p/s"), "/t", true)
        );
        let m = parse_mount("src=data,dst=/d,volume-nocopy=true,ro=false", cwd).unwrap();
        assert_eq!(m.kind, MountType::Volume);
        assert!(m.no_copy && !m.read_only);
        let m = parse_mount("type=tmpfs,target=/run,tmpfs-size=64m,tmpfs-mode=1770", cwd).unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(64 << 20), Some(0o1770)));
        assert!(parse_mount("type=bind,source=/s", cwd)
            .unwrap_err()
            .contains("target is required"));
        assert!(parse_mount("type=nfs,target=/t", cwd).is_err());
        assert!(parse_mount("target=/t,bogus=1", cwd)
            .unwrap_err()
            .contains("unexpected key"));
        assert!(parse_mount("target=/t,readonly=maybe", cwd).is_err());
        assert!(parse_mount("target", cwd).is_err());
    }

    #[test]
    fn storage_opts() {
        assert_eq!(parse_storage_opt("size=20G"), Ok(20 << 30));
        assert!(parse_storage_opt("size=x").is_err());
        assert!(parse_storage_opt("dm.basesize=1G").is_err());
        assert!(parse_storage_opt("20G").is_err());
    }
}
