//! User resolution against the container's `/etc/passwd` and `/etc/group`, with Docker's
//! `-u` semantics (the same rules as runc's `GetExecUser`). NSS is never used: the guest
//! binary is statically linked and the files belong to the container, not the guest.

use std::path::Path;

use apex_agent_proto::api::User;

/// One `/etc/passwd` entry (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Credentials to exec with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (setgroups(2)).
    pub groups: Vec<u32>,
    /// Home directory (for `HOME` when the environment has none).
    pub home: String,
}

/// The `:`-separated fields of each non-empty, non-comment line of a passwd-style file.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect())
}

/// Parses `/etc/passwd` (`name:pw:uid:gid:gecos:home:shell`); malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/etc/group` (`name:pw:gid:user1,user2`); malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves a Docker `-u` spec (`name`, `uid`, `name:group`, `uid:gid`; empty = root)
/// against parsed passwd/group entries.
///
/// - A name must exist in passwd; a number need not (then gid 0 and home `/`).
/// - An explicit group (name or number) sets the primary gid; a name must exist in group.
/// - Without an explicit group, a user found in passwd also gets every group listing it as
///   a member (supplementary groups).
pub fn resolve_spec(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ExecUser, String> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let numeric_uid = user_arg.parse::<u32>().ok();
    let entry = passwd.iter().find(|e| match numeric_uid {
        Some(uid) => e.uid == uid,
        None => e.name == user_arg,
    });
    let mut user = match (entry, numeric_uid) {
        (Some(e), _) => ExecUser {
            uid: e.uid,
            gid: e.gid,
            groups: Vec::new(),
            home: if e.home.is_empty() {
                "/".into()
            } else {
                e.home.clone()
            },
        },
        (None, Some(uid)) => ExecUser {
            uid,
            gid: 0,
            groups: Vec::new(),
            home: "/".into(),
        },
        (None, None) => {
            return Err(format!(
                "unable to find user {user_arg}: no matching entries in passwd file"
            ))
        }
    };
    match group_arg {
        Some(g) => {
            user.gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| {
                            format!("unable to find group {g}: no matching entries in group file")
                        })?
                        .gid
                }
            };
        }
        None => {
            if let Some(e) = entry {
                user.groups = groups
                    .iter()
                    .filter(|g| g.members.contains(&e.name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    Ok(user)
}

/// Resolves a [`User`] for a process in the container at `root`: `spec` (if any) against the
/// container's files, else the numeric ids as given. `additional_gids` are always added.
pub fn resolve(user: &User, root: &Path) -> Result<ExecUser, String> {
    let read = |path: &str| -> String {
        match crate::sys::read_in_root(root, path) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => String::new(),
            Err(e) => {
                crate::info!("reading {path} in {}: {e}", root.display());
                String::new()
            }
        }
    };
    let passwd = parse_passwd(&read("/etc/passwd"));
    let mut exec = match &user.spec {
        Some(spec) => resolve_spec(spec, &passwd, &parse_group(&read("/etc/group")))?,
        None => ExecUser {
            uid: user.uid,
            gid: user.gid,
            groups: Vec::new(),
            home: passwd
                .iter()
                .find(|e| e.uid == user.uid && !e.home.is_empty())
                .map_or_else(|| "/".into(), |e| e.home.clone()),
        },
    };
    for gid in &user.additional_gids {
        if !exec.groups.contains(gid) {
            exec.groups.push(*gid);
        }
    }
    Ok(exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        \n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        apex:x:1000:1000:Apex User,,,:/home/apex:/bin/sh\n\
        broken:x:notanumber:1\n\
        nohome:x:1001:1001::\n\
        dup:x:1000:7::/dup:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,apex\n\
        staff:x:50: apex , other\n\
        apex:x:1000:\n\
        nogroup:x:65534:\n\
        bad:x:zz:apex\n";

    fn resolve_str(spec: &str) -> Result<ExecUser, String> {
        resolve_spec(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    fn eu(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn parses_files() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 5, "{p:?}");
        assert_eq!(
            p[2],
            PasswdEntry {
                name: "apex".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/apex".into()
            }
        );
        assert_eq!(p[3].home, "");
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 5);
        assert_eq!(g[2].members, vec!["apex", "other"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(
            resolve_str("apex").unwrap(),
            eu(1000, 1000, &[10, 50], "/home/apex")
        );
        assert_eq!(resolve_str("root").unwrap(), eu(0, 0, &[10], "/root"));
        assert_eq!(resolve_str("").unwrap(), eu(0, 0, &[10], "/root"));
        // Numeric uid with an entry: first match wins, and its name gives the groups.
        assert_eq!(
            resolve_str("1000").unwrap(),
            eu(1000, 1000, &[10, 50], "/home/apex")
        );
        // Numeric uid without an entry: gid 0, home /.
        assert_eq!(resolve_str("4242").unwrap(), eu(4242, 0, &[], "/"));
        assert_eq!(resolve_str("nohome").unwrap(), eu(1001, 1001, &[], "/"));
    }

    #[test]
    fn explicit_groups() {
        assert_eq!(
            resolve_str("1000:1000").unwrap(),
            eu(1000, 1000, &[], "/home/apex")
        );
        assert_eq!(
            resolve_str("apex:staff").unwrap(),
            eu(1000, 50, &[], "/home/apex")
        );
        assert_eq!(resolve_str("4242:777").unwrap(), eu(4242, 777, &[], "/"));
        assert_eq!(resolve_str(":10").unwrap(), eu(0, 10, &[], "/root"));
        assert_eq!(
            resolve_str("apex:").unwrap(),
            eu(1000, 1000, &[10, 50], "/home/apex")
        );
    }

    #[test]
    fn unknown_names_fail() {
        assert_eq!(
            resolve_str("foo").unwrap_err(),
            "unable to find user foo: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_str("apex:nope").unwrap_err(),
            "unable to find group nope: no matching entries in group file"
        );
        // No passwd file at all: names fail, numbers work.
        assert!(resolve_spec("apex", &[], &[]).is_err());
        assert_eq!(resolve_spec("0", &[], &[]).unwrap(), eu(0, 0, &[], "/"));
    }

    #[test]
    fn resolve_reads_the_container_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let u = User {
            spec: Some("apex".into()),
            additional_gids: vec![50, 99],
            ..User::default()
        };
        assert_eq!(
            resolve(&u, dir.path()).unwrap(),
            eu(1000, 1000, &[10, 50, 99], "/home/apex")
        );
        let u = User {
            uid: 65534,
            gid: 65534,
            ..User::default()
        };
        assert_eq!(
            resolve(&u, dir.path()).unwrap(),
            eu(65534, 65534, &[], "/nonexistent")
        );
        let u = User {
            uid: 5,
            gid: 6,
            ..User::default()
        };
        assert_eq!(resolve(&u, dir.path()).unwrap(), eu(5, 6, &[], "/"));
    }
}
