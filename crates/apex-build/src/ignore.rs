//! `.dockerignore` files with Docker's semantics (`moby/patternmatcher` and
//! its `ignorefile` reader): patterns are cleaned like Go's `filepath.Clean`,
//! a leading `/` is dropped, `**` spans any number of directories, `*` and `?`
//! stay within one path element, and the last matching pattern wins, so a
//! later `!pattern` re-includes what an earlier one excluded.

use crate::glob;
use regex::Regex;

/// A parsed `.dockerignore`. The default matcher excludes nothing.
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without `!`.
    text: String,
    exclusion: bool,
    re: Regex,
}

impl IgnoreMatcher {
    /// Parses `.dockerignore` text. Errors name the offending pattern.
    pub fn parse(text: &str) -> Result<IgnoreMatcher, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let line = line.trim();
            let (exclusion, p) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if p.is_empty() {
                return Err("illegal exclusion pattern: \"!\"".into());
            }
            let mut p = clean(p);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
            if glob::try_match(&p, ".").is_err() {
                return Err(format!("syntax error in pattern: {p:?}"));
            }
            let re = Regex::new(&to_regex(&p)).map_err(|e| format!("bad pattern {p:?}: {e}"))?;
            patterns.push(Pattern {
                text: p,
                exclusion,
                re,
            });
        }
        Ok(IgnoreMatcher { patterns })
    }

    /// Whether `rel_path` (relative to the context, `/`-separated) is
    /// excluded: the last pattern matching it or one of its parent
    /// directories decides (`MatchesOrParentMatches`).
    pub fn matches(&self, rel_path: &str) -> bool {
        let file = clean(rel_path.trim_start_matches('/'));
        let mut matched = false;
        for p in &self.patterns {
            // An exclusion can only flip a match, an inclusion only a non-match.
            if p.exclusion != matched {
                continue;
            }
            let hit = p.re.is_match(&file)
                || file
                    .match_indices('/')
                    .any(|(i, _)| p.re.is_match(&file[..i]));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether the directory `rel_dir` is excluded together with everything
    /// below it, i.e. it matches and no `!` pattern could re-include a path
    /// under it, so a walker may skip it without looking inside.
    pub fn excludes_whole_dir(&self, rel_dir: &str) -> bool {
        let dir = clean(rel_dir.trim_start_matches('/'));
        self.matches(&dir)
            && !self
                .patterns
                .iter()
                .any(|p| p.exclusion && may_reach_below(&p.text, &dir))
    }
}

/// Whether `pattern` could match something at or below `dir`, comparing
/// element by element (`**` may match anything).
fn may_reach_below(pattern: &str, dir: &str) -> bool {
    let mut elems = pattern.split('/');
    for d in dir.split('/') {
        match elems.next() {
            None => return true,
            Some(p) if p.contains("**") => return true,
            Some(p) if !glob::glob_match(p, d) => return false,
            Some(_) => {}
        }
    }
    true
}

/// The pattern as an anchored regex, as `patternmatcher` compiles it.
fn to_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let (mut re, mut i, mut in_class) = (String::from("(?s)^"), 0, false);
    let lit = |re: &mut String, c: char| re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if !in_class && chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                re.push_str(if i == chars.len() { ".*" } else { "(.*/)?" });
            }
            '*' if !in_class => re.push_str("[^/]*"),
            '?' if !in_class => re.push_str("[^/]"),
            '\\' if i < chars.len() => {
                lit(&mut re, chars[i]);
                i += 1;
            }
            '[' if !in_class => {
                in_class = true;
                re.push('[');
                if chars.get(i) == Some(&'^') {
                    re.push('^');
                    i += 1;
                }
            }
            ']' if in_class => {
                in_class = false;
                re.push(']');
            }
            '-' if in_class => re.push('-'),
            c => lit(&mut re, c),
        }
    }
    re.push('$');
    re
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for elem in path.split('/') {
        match elem {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            ".." if rooted => {}
            e => out.push(e),
        }
    }
    match (rooted, out.join("/")) {
        (true, joined) => format!("/{joined}"),
        (false, joined) if joined.is_empty() => ".".into(),
        (false, joined) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(text).unwrap()
    }

    #[test]
    fn docker_documented_example() {
        // From the .dockerignore section of the Dockerfile reference.
        let ig = m("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(ig.matches("somedir/temporary.txt"));
        assert!(ig.matches("somedir/temp"));
        assert!(ig.matches("somedir/subdir/temporary.txt"));
        assert!(ig.matches("tempa"));
        assert!(ig.matches("tempb/inside/file"));
        assert!(!ig.matches("temp"));
        assert!(!ig.matches("temporary.txt"));
        assert!(!ig.matches("a/b/c/temp"));
    }

    #[test]
    fn double_star_and_exceptions() {
        let ig = m("**/*.go\n*.md\n!README*.md\nREADME-secret.md\n");
        assert!(ig.matches("main.go"));
        assert!(ig.matches("cmd/tool/main.go"));
        assert!(!ig.matches("main.rs"));
        assert!(ig.matches("CHANGES.md"));
        assert!(!ig.matches("README.md"));
        assert!(!ig.matches("README-dev.md"));
        assert!(ig.matches("README-secret.md"));
        let ig = m("docs/**\nsrc/**/gen\n**");
        assert!(ig.matches("anything/at/all"));
        let ig = m("docs/**\nsrc/**/gen\n");
        assert!(ig.matches("docs/a/b.txt"));
        assert!(ig.matches("src/gen") && ig.matches("src/a/b/gen/x.rs"));
        assert!(!ig.matches("src/a/generate"));
    }

    #[test]
    fn cleaning_leading_slash_and_parents() {
        let ig = m("  /build/  \n./tmp/../cache\n\n#/keep\n");
        assert!(ig.matches("build"));
        assert!(ig.matches("build/out/bin"));
        assert!(ig.matches("cache/x"));
        assert!(!ig.matches("src/build"));
        assert!(!ig.matches("#/keep"));
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("/../x/"), "/x");
        assert_eq!(clean(""), ".");
    }

    #[test]
    fn classes_and_escapes() {
        let ig = m("file[0-9].txt\nlog[^a].txt\nliteral\\*star\nq\\?\n");
        assert!(ig.matches("file7.txt") && !ig.matches("fileX.txt"));
        assert!(ig.matches("logb.txt") && !ig.matches("loga.txt"));
        assert!(ig.matches("literal*star") && !ig.matches("literalXstar"));
        assert!(ig.matches("q?") && !ig.matches("qq"));
        assert!(m("a+b(c).d").matches("a+b(c).d"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            IgnoreMatcher::parse("!\n").unwrap_err(),
            "illegal exclusion pattern: \"!\""
        );
        assert!(IgnoreMatcher::parse("[a-\n")
            .unwrap_err()
            .contains("syntax error"));
    }

    #[test]
    fn whole_directory_exclusion() {
        let ig = m("node_modules\nvendor\n!vendor/keep.txt\nlogs/*\n");
        assert!(ig.excludes_whole_dir("node_modules"));
        assert!(ig.excludes_whole_dir("logs/2024"));
        assert!(!ig.excludes_whole_dir("vendor"));
        assert!(ig.matches("vendor/other") && !ig.matches("vendor/keep.txt"));
        assert!(!ig.excludes_whole_dir("src"));
        // A `**` exception may re-include something anywhere.
        let ig = m("node_modules\n!**/important.log\n");
        assert!(!ig.excludes_whole_dir("node_modules"));
        assert!(!ig.matches("node_modules/a/important.log"));
        let ig = m("*\n!src/*.rs\n");
        assert!(!ig.excludes_whole_dir("src"));
        assert!(ig.excludes_whole_dir("target"));
    }
}
