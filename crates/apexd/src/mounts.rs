//! Mount specifications of a create request, with Docker's syntax, rules and messages:
//! `-v SRC:DST[:OPTS]` and `-v DST`, `--mount` objects, `--tmpfs DST[:OPTS]`, and the
//! image's `VOLUME`s. Parsing has no side effects; [`crate::containers`] then creates
//! what is missing (bind sources given with `-v`, volumes).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use crate::error::{Error, Result};
use crate::model::{MountRequest, MountType};

/// Default size limit of a container's writable layer (a sparse disk: only what is
/// written takes space).
pub const DEFAULT_STORAGE_BYTES: u64 = 10 << 30;
/// Smallest writable layer accepted (ext4 needs room for its journal).
pub const MIN_STORAGE_BYTES: u64 = 64 << 20;

/// A mount as asked for, before volumes exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Type.
    pub kind: MountType,
    /// Bind: absolute host path. Volume: its name, `None` for an anonymous one.
    pub source: Option<String>,
    /// Clean absolute path in the container.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
    /// Volume: do not copy the image's content in.
    pub no_copy: bool,
    /// Bind given with `-v`: a missing source directory is created (Docker's rule).
    pub create_source: bool,
    /// tmpfs size limit, bytes.
    pub tmpfs_size: Option<u64>,
    /// tmpfs root mode.
    pub tmpfs_mode: Option<u32>,
    /// tmpfs `noexec`.
    pub noexec: bool,
}

impl Wanted {
    /// The same mount as an existing container's (`--volumes-from`).
    pub fn from_mount_point(m: &crate::model::MountPoint) -> Self {
        let source = match m.kind {
            MountType::Bind => Some(m.source.clone()),
            MountType::Volume => m.name.clone(),
            MountType::Tmpfs => None,
        };
        Wanted {
            read_only: m.read_only,
            no_copy: m.no_copy,
            tmpfs_size: m.tmpfs_size,
            tmpfs_mode: m.tmpfs_mode,
            noexec: m.noexec,
            ..Wanted::new(m.kind, source, m.destination.clone())
        }
    }

    fn new(kind: MountType, source: Option<String>, target: String) -> Self {
        Wanted {
            kind,
            source,
            target,
            read_only: false,
            no_copy: false,
            create_source: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            noexec: false,
        }
    }
}

/// Docker's local volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_volume_name(name: &str) -> bool {
    let mut c = name.chars();
    name.len() >= 2
        && name.len() <= 255
        && c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
}

/// Docker's message for a bad volume name.
pub fn bad_volume_name(name: &str) -> Error {
    Error::bad_request(format!(
        "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    ))
}

/// `path` cleaned lexically (`.` dropped, `..` applied, no trailing `/`).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// Checks a destination: absolute, and not `/`. Returns it cleaned.
fn check_target(kind: MountType, target: &str) -> std::result::Result<String, String> {
    if target.is_empty() {
        return Err(format!(
            "invalid mount config for type \"{kind}\": field Target must not be empty"
        ));
    }
    if !target.starts_with('/') {
        return Err(format!(
            "invalid mount config for type \"{kind}\": invalid mount path: '{target}' mount path must be absolute"
        ));
    }
    let t = clean(target);
    if t == "/" {
        return Err(format!(
            "invalid mount config for type \"{kind}\": invalid specification: destination can't be '/'"
        ));
    }
    Ok(t)
}

/// Parses a `-v` spec (Linux rules: `DST`, `DST:MODE`, `SRC:DST`, `SRC:DST:MODE`).
pub fn parse_volume_flag(spec: &str) -> Result<Wanted> {
    let bad = || Error::bad_request(format!("invalid volume specification: '{spec}'"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [dst] => (None, *dst, None),
        [dst, mode] if valid_modes(mode).is_ok() && !dst.is_empty() => (None, *dst, Some(*mode)),
        [src, dst] => (Some(*src), *dst, None),
        [src, dst, mode] => (Some(*src), *dst, Some(*mode)),
        _ => return Err(bad()),
    };
    if src.is_some_and(str::is_empty) || dst.is_empty() {
        return Err(bad());
    }
    let kind = if src.is_some_and(|s| s.starts_with('/')) {
        MountType::Bind
    } else {
        MountType::Volume
    };
    if let Some(name) = src.filter(|_| kind == MountType::Volume) {
        if !valid_volume_name(name) {
            return Err(bad_volume_name(name));
        }
    }
    let target = check_target(kind, dst)
        .map_err(|m| Error::bad_request(format!("invalid volume specification: '{spec}': {m}")))?;
    let mut w = Wanted::new(
        kind,
        src.map(|s| {
            if kind == MountType::Bind {
                clean(s)
            } else {
                s.to_string()
            }
        }),
        target,
    );
    w.create_source = kind == MountType::Bind;
    if let Some(mode) = mode {
        let m = valid_modes(mode).map_err(Error::bad_request)?;
        w.read_only = m.read_only;
        w.no_copy = m.no_copy;
        if w.no_copy && kind == MountType::Bind {
            return Err(Error::bad_request(format!("invalid mode: {mode}")));
        }
    }
    Ok(w)
}

#[derive(Default)]
struct Modes {
    read_only: bool,
    no_copy: bool,
}

/// Docker's `-v` modes: one of `ro`/`rw`, SELinux labels, `nocopy`, propagation and
/// consistency (the last three are accepted and have no effect in a VM).
fn valid_modes(mode: &str) -> std::result::Result<Modes, String> {
    let mut m = Modes::default();
    let mut rw_seen = false;
    for opt in mode.split(',') {
        match opt {
            "ro" | "rw" if rw_seen => return Err(format!("invalid mode: {mode}")),
            "ro" => {
                m.read_only = true;
                rw_seen = true;
            }
            "rw" => rw_seen = true,
            "nocopy" => m.no_copy = true,
            "z" | "Z" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "consistent" | "cached" | "delegated" => {}
            _ => return Err(format!("invalid mode: {mode}")),
        }
    }
    Ok(m)
}

/// Checks a `--mount` request.
pub fn parse_mount(m: &MountRequest) -> Result<Wanted> {
    let kind = m.kind;
    let err = |msg: String| Error::bad_request(msg);
    let target = check_target(kind, &m.target).map_err(err)?;
    let source = m.source.clone().filter(|s| !s.is_empty());
    let mut w = Wanted::new(kind, None, target);
    w.read_only = m.read_only;
    match kind {
        MountType::Bind => {
            let Some(src) = source else {
                return Err(err(
                    "invalid mount config for type \"bind\": field Source must not be empty".into(),
                ));
            };
            if !src.starts_with('/') {
                return Err(err(format!(
                    "invalid mount config for type \"bind\": invalid mount path: '{src}' mount path must be absolute"
                )));
            }
            if !Path::new(&src).exists() {
                return Err(err(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {src}"
                )));
            }
            w.source = Some(clean(&src));
        }
        MountType::Volume => {
            if let Some(name) = &source {
                if !valid_volume_name(name) {
                    return Err(bad_volume_name(name));
                }
            }
            w.source = source;
            w.no_copy = m.no_copy;
        }
        MountType::Tmpfs => {
            if source.is_some() {
                return Err(err(
                    "invalid mount config for type \"tmpfs\": field Source must not be specified"
                        .into(),
                ));
            }
            w.tmpfs_size = m.tmpfs_size;
            w.tmpfs_mode = m.tmpfs_mode;
        }
    }
    if kind != MountType::Tmpfs && (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some()) {
        return Err(err(format!(
            "invalid mount config for type \"{kind}\": tmpfs options are only valid for tmpfs mounts"
        )));
    }
    Ok(w)
}

/// Parses a size: bytes, or with a `k`, `m`, `g` suffix (`b` and `ib` allowed).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult): (&str, u64) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses a `--tmpfs DST[:OPTS]` spec. Options: `size=`, `mode=` (octal), `ro`/`rw`,
/// `exec`/`noexec` (default `noexec`), and `nosuid`/`nodev` (always on).
pub fn parse_tmpfs(spec: &str) -> Result<Wanted> {
    let (dst, opts) = spec.split_once(':').unwrap_or((spec, ""));
    let target = check_target(MountType::Tmpfs, dst).map_err(Error::bad_request)?;
    let mut w = Wanted::new(MountType::Tmpfs, None, target);
    w.noexec = true;
    let bad = |o: &str| Error::bad_request(format!("invalid tmpfs option [\"{o}\"]"));
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => w.tmpfs_size = Some(parse_size(v).ok_or_else(|| bad(o))?),
            Some(("mode", v)) => {
                w.tmpfs_mode = Some(
                    u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad(o))?,
                )
            }
            None if o == "ro" => w.read_only = true,
            None if o == "rw" => w.read_only = false,
            None if o == "exec" => w.noexec = false,
            None if o == "noexec" => w.noexec = true,
            None if matches!(
                o,
                "nosuid" | "nodev" | "suid" | "dev" | "relatime" | "noatime"
            ) => {}
            _ => return Err(bad(o)),
        }
    }
    Ok(w)
}

/// Every mount of a create request, checked, with the image's `VOLUME`s not covered by
/// them as anonymous volumes, in mount order (shallow targets first). Fails on a
/// duplicate target, like Docker.
pub fn parse_all(
    volumes: &[String],
    mounts: &[MountRequest],
    tmpfs: &[String],
    image_volumes: &[String],
) -> Result<Vec<Wanted>> {
    let mut all = Vec::new();
    for v in volumes {
        all.push(parse_volume_flag(v)?);
    }
    for m in mounts {
        all.push(parse_mount(m)?);
    }
    for t in tmpfs {
        all.push(parse_tmpfs(t)?);
    }
    let mut seen = BTreeMap::new();
    for w in &all {
        if seen.insert(w.target.clone(), ()).is_some() {
            return Err(Error::bad_request(format!(
                "Duplicate mount point: {}",
                w.target
            )));
        }
    }
    for iv in image_volumes {
        let Ok(t) = check_target(MountType::Volume, iv) else {
            continue; // an image VOLUME of "/" or a relative path: ignored, as Docker does
        };
        if seen.insert(t.clone(), ()).is_none() {
            all.push(Wanted::new(MountType::Volume, None, t));
        }
    }
    all.sort_by_key(|w| w.target.matches('/').count());
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn msg(r: Result<Wanted>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest);
        e.message().to_string()
    }

    #[test]
    fn volume_flags_like_docker() {
        let w = parse_volume_flag("/host/dir/:/work").unwrap();
        assert_eq!(
            (w.kind, w.source.as_deref(), w.target.as_str()),
            (MountType::Bind, Some("/host/dir"), "/work")
        );
        assert!(w.create_source && !w.read_only);
        let w = parse_volume_flag("data:/var/lib/db:ro").unwrap();
        assert_eq!(
            (w.kind, w.source.as_deref()),
            (MountType::Volume, Some("data"))
        );
        assert!(w.read_only);
        let w = parse_volume_flag("/cache").unwrap();
        assert_eq!((w.kind, w.source.as_deref()), (MountType::Volume, None));
        let w = parse_volume_flag("/cache:ro").unwrap();
        assert!(w.read_only && w.source.is_none());
        let w = parse_volume_flag("vol:/x:nocopy,rw,z").unwrap();
        assert!(w.no_copy && !w.read_only);
        assert_eq!(parse_volume_flag("/a/../b:/c/./d/").unwrap().target, "/c/d");
    }

    #[test]
    fn volume_flag_errors_like_docker() {
        assert_eq!(
            msg(parse_volume_flag("/src:rel")),
            "invalid volume specification: '/src:rel': invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute"
        );
        assert!(msg(parse_volume_flag("./src:/x"))
            .contains("includes invalid characters for a local volume name"));
        assert!(msg(parse_volume_flag("a/b:/x"))
            .contains("If you intended to pass a host directory, use absolute path"));
        assert_eq!(
            msg(parse_volume_flag("a:b:c:d")),
            "invalid volume specification: 'a:b:c:d'"
        );
        assert_eq!(msg(parse_volume_flag("/a:/b:rx")), "invalid mode: rx");
        assert_eq!(msg(parse_volume_flag("/a:/b:ro,rw")), "invalid mode: ro,rw");
        assert!(msg(parse_volume_flag("/a:/")).contains("destination can't be '/'"));
        assert!(msg(parse_volume_flag("rel")).contains("mount path must be absolute"));
    }

    #[test]
    fn mount_objects() {
        let m = |kind, source: Option<&str>, target: &str| MountRequest {
            kind,
            source: source.map(String::from),
            target: target.into(),
            ..Default::default()
        };
        let w = parse_mount(&m(MountType::Bind, Some("/tmp"), "/t")).unwrap();
        assert!(!w.create_source, "--mount never creates the source");
        assert_eq!(
            msg(parse_mount(&m(MountType::Bind, Some("/no/such/dir"), "/t"))),
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir"
        );
        assert!(msg(parse_mount(&m(MountType::Bind, None, "/t")))
            .contains("field Source must not be empty"));
        assert!(msg(parse_mount(&m(MountType::Volume, Some("v"), "")))
            .contains("field Target must not be empty"));
        assert!(msg(parse_mount(&m(MountType::Tmpfs, Some("x"), "/t")))
            .contains("must not be specified"));
        let mut t = m(MountType::Tmpfs, None, "/t");
        t.tmpfs_size = Some(1 << 20);
        assert_eq!(parse_mount(&t).unwrap().tmpfs_size, Some(1 << 20));
        let mut v = m(MountType::Volume, Some("vol"), "/t");
        v.tmpfs_size = Some(1);
        assert!(parse_mount(&v).is_err());
    }

    #[test]
    fn tmpfs_flags() {
        let w = parse_tmpfs("/run:size=64m,mode=1770,exec").unwrap();
        assert_eq!(
            (w.tmpfs_size, w.tmpfs_mode, w.noexec),
            (Some(64 << 20), Some(0o1770), false)
        );
        let w = parse_tmpfs("/tmp").unwrap();
        assert!(w.noexec && w.tmpfs_size.is_none());
        assert_eq!(
            msg(parse_tmpfs("/x:bogus")),
            "invalid tmpfs option [\"bogus\"]"
        );
        assert!(parse_tmpfs("/x:mode=999").is_err());
        assert!(parse_tmpfs("x").is_err());
    }

    #[test]
    fn all_mounts_sorted_deduplicated_with_image_volumes() {
        let all = parse_all(
            &["/h:/data/sub".into(), "v1:/data".into()],
            &[],
            &["/tmp".into()],
            &["/data".into(), "/var/log".into(), "rel".into()],
        )
        .unwrap();
        let targets: Vec<_> = all.iter().map(|w| w.target.as_str()).collect();
        assert_eq!(targets, ["/data", "/tmp", "/data/sub", "/var/log"]);
        assert!(all[3].kind == MountType::Volume && all[3].source.is_none());
        let dup = parse_all(&["/a:/x".into(), "vv:/x/".into()], &[], &[], &[]).unwrap_err();
        assert_eq!(dup.message(), "Duplicate mount point: /x");
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("20G"), Some(20 << 30));
        assert_eq!(parse_size("512mb"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert!(valid_volume_name("db-data_1.x"));
        assert!(!valid_volume_name("a") && !valid_volume_name("-a") && !valid_volume_name("a/b"));
    }
}
