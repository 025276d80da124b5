//! The guest kernel an Apex home boots: `"kernel"` in `$APEX_HOME/config.json`
//! (`default`, `debian` or an absolute path; see [`KernelChoice`]), set by
//! `apex system kernel set`. Other keys of the file are kept as they are.

use std::path::Path;

use anyhow::{Context, Result};
use apex_vm::{KernelAssets, KernelChoice};

const CONFIG: &str = "config.json";
const KEY: &str = "kernel";

fn read_config(home: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = home.join(CONFIG);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The home's kernel setting.
pub fn choice(home: &Path) -> Result<KernelChoice> {
    match read_config(home)?.get(KEY) {
        Some(serde_json::Value::String(s)) => KernelChoice::parse(s),
        Some(other) => anyhow::bail!("invalid kernel setting {other} in {CONFIG}"),
        None => Ok(KernelChoice::Default),
    }
}

/// The kernel the home boots.
pub fn assets(home: &Path) -> Result<KernelAssets> {
    KernelAssets::resolve(&choice(home)?)
}

/// Stores `choice` (after checking that it resolves to a kernel).
pub fn set_choice(home: &Path, choice: &KernelChoice) -> Result<KernelAssets> {
    let kernel = KernelAssets::resolve(choice)?;
    let mut cfg = read_config(home)?;
    match choice {
        KernelChoice::Default => cfg.remove(KEY),
        c => cfg.insert(KEY.into(), c.as_setting().into()),
    };
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let path = home.join(CONFIG);
    let tmp = home.join(format!(".{CONFIG}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cfg)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_round_trip_keeps_other_keys() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(choice(home.path()).unwrap(), KernelChoice::Default);
        std::fs::write(
            home.path().join(CONFIG),
            r#"{"registry_mirrors": ["http://m"]}"#,
        )
        .unwrap();
        let k = tempfile::tempdir().unwrap();
        std::fs::write(k.path().join("vmlinux"), b"k").unwrap();
        std::fs::write(k.path().join("version"), b"6.1-apex\n").unwrap();
        let want = KernelChoice::Path(k.path().to_path_buf());
        assert_eq!(set_choice(home.path(), &want).unwrap().version, "6.1-apex");
        assert_eq!(choice(home.path()).unwrap(), want);
        let text = std::fs::read_to_string(home.path().join(CONFIG)).unwrap();
        assert!(text.contains("registry_mirrors"), "{text}");
        // A choice that does not resolve is refused and changes nothing.
        let bad = KernelChoice::Path("/no/such/kernel".into());
        assert!(set_choice(home.path(), &bad).is_err());
        assert_eq!(choice(home.path()).unwrap(), want);
    }
}
