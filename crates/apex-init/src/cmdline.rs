//! Kernel command line parameters for apex-init (`apex.*` in /proc/cmdline).

/// Boot parameters set by the host on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `apex.root=`: block device holding the image rootfs (mounted read-only).
    pub root: Option<String>,
    /// `apex.rootfstype=`: its filesystem type (default `erofs`).
    pub rootfstype: String,
    /// `apex.upper=`: block device (ext4) holding the container's writable layer; a
    /// tmpfs when absent.
    pub upper: Option<String>,
    /// `apex.hostname=`.
    pub hostname: Option<String>,
    /// `apex.debug=1`: verbose logs.
    pub debug: bool,
}

impl Default for BootParams {
    fn default() -> Self {
        Self {
            root: None,
            rootfstype: "erofs".into(),
            upper: None,
            hostname: None,
            debug: false,
        }
    }
}

impl BootParams {
    /// Parses a kernel command line; unknown parameters are ignored, the last one wins.
    pub fn parse(cmdline: &str) -> Self {
        let mut p = Self::default();
        for word in split(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            let nonempty = value.filter(|v| !v.is_empty()).map(str::to_owned);
            match key {
                "apex.root" => p.root = nonempty,
                "apex.rootfstype" => {
                    p.rootfstype = nonempty.unwrap_or_else(|| "erofs".into());
                }
                "apex.upper" => p.upper = nonempty,
                "apex.hostname" => p.hostname = nonempty,
                "apex.debug" => p.debug = !matches!(value, Some("0" | "false" | "no" | "off")),
                _ => {}
            }
        }
        p
    }
}

/// Splits on whitespace, honouring double quotes as the kernel does (`a="b c"` is one word,
/// quotes removed).
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apex_params() {
        let p = BootParams::parse(
            "console=ttyS0 panic=-1 quiet apex.root=/dev/vda apex.rootfstype=ext4 \
             apex.upper=/dev/vdb apex.hostname=web-1 apex.debug=1 tsc_early_khz=2000000\n",
        );
        assert_eq!(
            p,
            BootParams {
                root: Some("/dev/vda".into()),
                rootfstype: "ext4".into(),
                upper: Some("/dev/vdb".into()),
                hostname: Some("web-1".into()),
                debug: true,
            }
        );
    }

    #[test]
    fn defaults_and_edge_cases() {
        assert_eq!(BootParams::parse(""), BootParams::default());
        let p = BootParams::parse("apex.root= apex.rootfstype= apex.debug=0 apex.hostname");
        assert_eq!(p, BootParams::default());
        assert!(BootParams::parse("apex.debug").debug);
        let p = BootParams::parse("apex.root=/dev/vdb apex.root=/dev/vda");
        assert_eq!(p.root.as_deref(), Some("/dev/vda"));
        assert_eq!(p.rootfstype, "erofs");
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            split(r#"a "b c" apex.hostname="x y"  d"#),
            vec!["a", "b c", "apex.hostname=x y", "d"]
        );
        assert_eq!(split(r#"e="""#), vec!["e="]);
    }
}
