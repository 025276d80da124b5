//! Registry credentials in `$APEX_HOME/auth.json`, docker's `config.json` format
//! (`{"auths": {"host": {"auth": base64("user:pass")}}}`), always mode 0600.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// A username/password pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ****)", self.username)
    }
}

#[derive(Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Serialize, Deserialize)]
struct AuthEntry {
    auth: String,
}

/// The credential file of one Apex home.
pub struct AuthStore {
    path: PathBuf,
}

impl AuthStore {
    /// The store at `home/auth.json`.
    pub fn new(home: &Path) -> Self {
        AuthStore {
            path: home.join("auth.json"),
        }
    }

    fn load(&self) -> Result<AuthFile> {
        match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("parsing {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    fn save(&self, f: &AuthFile) -> Result<()> {
        let dir = self.path.parent().context("auth path has no parent")?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(".auth.json.tmp");
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        out.set_permissions(fs::Permissions::from_mode(0o600))?;
        out.write_all(&serde_json::to_vec_pretty(f)?)?;
        out.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// Credentials for `registry`, if stored.
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>> {
        let f = self.load()?;
        let Some(e) = f.auths.get(registry) else {
            return Ok(None);
        };
        let raw = B64
            .decode(&e.auth)
            .with_context(|| format!("corrupt credentials for {registry}"))?;
        let raw = String::from_utf8(raw).context("credentials are not UTF-8")?;
        let (u, p) = raw
            .split_once(':')
            .with_context(|| format!("corrupt credentials for {registry}"))?;
        Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }))
    }

    /// Stores credentials for `registry`.
    pub fn set(&self, registry: &str, c: &Credentials) -> Result<()> {
        let mut f = self.load()?;
        f.auths.insert(
            registry.to_string(),
            AuthEntry {
                auth: B64.encode(format!("{}:{}", c.username, c.password)),
            },
        );
        self.save(&f)
    }

    /// Forgets `registry`; returns whether anything was stored.
    pub fn remove(&self, registry: &str) -> Result<bool> {
        let mut f = self.load()?;
        let had = f.auths.remove(registry).is_some();
        if had {
            self.save(&f)?;
        }
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_private_mode() {
        let t = tempfile::tempdir().unwrap();
        let s = AuthStore::new(t.path());
        assert!(s.get("r").unwrap().is_none());
        let c = Credentials {
            username: "u".into(),
            password: "p:with:colons".into(),
        };
        s.set("r", &c).unwrap();
        assert_eq!(s.get("r").unwrap(), Some(c));
        let mode = fs::metadata(t.path().join("auth.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.remove("r").unwrap());
        assert!(!s.remove("r").unwrap());
        assert!(s.get("r").unwrap().is_none());
    }
}
