//! The build context: the client's tar (plain, gzip or zstd) extracted with the same safety
//! rules as image layers (no path escapes the directory), then `.dockerignore` applied
//! as Docker's daemon does, so a client that sent ignored files still cannot `COPY`
//! them. The Dockerfile and `.dockerignore` themselves always stay.

use std::path::{Path, PathBuf};

use apex_build::ignore::IgnoreMatcher;

use crate::error::{Error, Result};

/// Extracts the context tar `tar` into `dir` (created) and returns the Dockerfile's
/// text, `dockerfile` being its path inside the context.
pub fn prepare(tar: &Path, dir: &Path, dockerfile: &str) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::internal(e.to_string()))?;
    let reader = super::copy::open_archive(tar)
        .map_err(|e| Error::internal(format!("reading the context: {e}")))?;
    apex_oci::unpack::extract_archive(dir, reader, None)
        .map_err(|e| Error::bad_request(format!("invalid build context: {e:#}")))?;
    let rel = super::copy::clean_rel(dockerfile).ok_or_else(|| {
        Error::bad_request(format!(
            "the Dockerfile ({dockerfile}) must be within the build context"
        ))
    })?;
    let path = dir.join(&rel);
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        // Docker also accepts a lower-case `dockerfile` when the default is missing.
        Err(_) if dockerfile == "Dockerfile" && dir.join("dockerfile").is_file() => {
            std::fs::read(dir.join("dockerfile")).map_err(|e| Error::internal(e.to_string()))?
        }
        Err(_) => {
            return Err(Error::bad_request(format!(
                "Cannot locate specified Dockerfile: {dockerfile}"
            )))
        }
    };
    let text = String::from_utf8(text)
        .map_err(|_| Error::bad_request(format!("{dockerfile} is not UTF-8 text")))?;
    if let Ok(ignore) = std::fs::read_to_string(dir.join(".dockerignore")) {
        let m = IgnoreMatcher::parse(&ignore)
            .map_err(|e| Error::bad_request(format!(".dockerignore: {e}")))?;
        let keep = [rel, PathBuf::from(".dockerignore")];
        prune(dir, Path::new(""), &m, &keep).map_err(|e| Error::internal(e.to_string()))?;
    }
    Ok(text)
}

/// Deletes what `.dockerignore` excludes below `dir.join(rel)`, except `keep`.
fn prune(dir: &Path, rel: &Path, m: &IgnoreMatcher, keep: &[PathBuf]) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir.join(rel))? {
        let e = e?;
        let p = rel.join(e.file_name());
        let is_dir = e.file_type()?.is_dir();
        let kept_below = keep.iter().any(|k| k.starts_with(&p));
        let s = p.to_string_lossy();
        if m.matches(&s) && !kept_below {
            if is_dir && !m.excludes_whole_dir(&s) {
                prune(dir, &p, m, keep)?;
            } else if is_dir {
                apex_oci::unpack::remove_tree(&dir.join(&p))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            } else {
                std::fs::remove_file(dir.join(&p))?;
            }
        } else if is_dir {
            prune(dir, &p, m, keep)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context_tar(files: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, data.as_bytes()).unwrap();
        }
        b.finish().unwrap();
        f
    }

    #[test]
    fn applies_dockerignore_but_keeps_the_dockerfile() {
        let tar = context_tar(&[
            ("Dockerfile", "FROM scratch\n"),
            (".dockerignore", "*.log\nsecret/\nDockerfile\n"),
            ("a.log", "x"),
            ("keep.txt", "x"),
            ("secret/key", "x"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let text = prepare(tar.path(), dir.path(), "Dockerfile").unwrap();
        assert_eq!(text, "FROM scratch\n");
        assert!(dir.path().join("keep.txt").exists());
        assert!(!dir.path().join("a.log").exists());
        assert!(!dir.path().join("secret").exists());
        assert!(dir.path().join("Dockerfile").exists());
    }

    #[test]
    fn a_missing_or_escaping_dockerfile_is_a_clear_error() {
        let tar = context_tar(&[("x", "y")]);
        let dir = tempfile::tempdir().unwrap();
        let e = prepare(tar.path(), dir.path(), "Dockerfile").unwrap_err();
        assert!(e
            .to_string()
            .contains("Cannot locate specified Dockerfile: Dockerfile"));
        let e = prepare(tar.path(), dir.path(), "../Dockerfile").unwrap_err();
        assert!(e.to_string().contains("within the build context"), "{e}");
    }
}
