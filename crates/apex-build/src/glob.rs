//! Go's `path/filepath.Match` (Unix flavour), used for COPY/ADD sources and
//! `.dockerignore` syntax checks: `*` matches any run of non-`/` characters,
//! `?` one non-`/` character, `[a-z]`/`[^x]` a class, `\c` the character `c`.

/// A malformed pattern (unclosed class, trailing `\`, bad range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// Whether `name` matches `pattern` entirely. A malformed pattern matches
/// nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    try_match(pattern, name).unwrap_or(false)
}

/// Whether `pattern` contains any of Go's magic characters (`*?[\`), i.e.
/// whether it must be matched rather than compared.
pub fn has_meta(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '\\'])
}

/// `filepath.Match`, reporting malformed patterns as Go does.
pub(crate) fn try_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut pat, mut name) = (&pattern[..], &name[..]);
    'chunks: while !pat.is_empty() {
        let (star, chunk, rest) = scan_chunk(pat);
        pat = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&'/'));
        }
        let first = match_chunk(chunk, name)?;
        if let Some(t) = first.filter(|t| t.is_empty() || !pat.is_empty()) {
            name = t;
            continue;
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != '/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if pat.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'chunks;
                }
                i += 1;
            }
        }
        // Before failing, check that the rest of the pattern is well formed.
        while !pat.is_empty() {
            let (_, chunk, rest) = scan_chunk(pat);
            pat = rest;
            match_chunk(chunk, &[])?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off leading stars and the following star-free chunk.
fn scan_chunk(mut p: &[char]) -> (bool, &[char], &[char]) {
    let star = p.first() == Some(&'*');
    while p.first() == Some(&'*') {
        p = &p[1..];
    }
    let (mut in_range, mut i) = (false, 0);
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 < p.len() => i += 1,
            '[' => in_range = true,
            ']' => in_range = false,
            '*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// Matches `chunk` at the start of `s`, returning the rest of `s`.
fn match_chunk<'a>(
    mut chunk: &[char],
    mut s: &'a [char],
) -> Result<Option<&'a [char]>, BadPattern> {
    // After a mismatch keep scanning the chunk, only to validate it.
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        failed |= s.is_empty();
        match c {
            '[' => {
                let r = if failed { '\0' } else { s[0] };
                s = if failed { s } else { &s[1..] };
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let (mut matched, mut ranges) = (false, 0);
                loop {
                    if chunk.first() == Some(&']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    let (hi, rest) = match rest[0] {
                        '-' => class_char(&rest[1..])?,
                        _ => (lo, rest),
                    };
                    chunk = rest;
                    matched |= lo <= r && r <= hi;
                    ranges += 1;
                }
                failed |= matched == negated;
            }
            '?' => {
                if !failed {
                    failed = s[0] == '/';
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == '\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    failed = chunk[0] != s[0];
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok((!failed).then_some(s))
}

/// One possibly escaped character of a class; the rest is never empty.
fn class_char(chunk: &[char]) -> Result<(char, &[char]), BadPattern> {
    let chunk = match chunk.first() {
        None | Some('-' | ']') => return Err(BadPattern),
        Some('\\') => &chunk[1..],
        Some(_) => chunk,
    };
    match chunk {
        [c, rest @ ..] if !rest.is_empty() => Ok((*c, rest)),
        _ => Err(BadPattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match_table() {
        // A selection of Go's path/filepath match_test.go cases.
        let cases: &[(&str, &str, Result<bool, BadPattern>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "abc", Ok(true)),
            ("a*", "ab/c", Ok(false)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[c]", "abc", Ok(true)),
            ("ab[b-d]", "abc", Ok(true)),
            ("ab[e-g]", "abc", Ok(false)),
            ("ab[^c]", "abc", Ok(false)),
            ("ab[^b-d]", "abc", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a[^a]b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("a[!a]b", "a☺b", Ok(false)),
            ("*x", "xxx", Ok(true)),
            ("a?b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[\\-]", "-", Ok(true)),
            ("[x\\-]", "z", Ok(false)),
            ("[", "a", Err(BadPattern)),
            ("[^", "a", Err(BadPattern)),
            ("[^bc", "a", Err(BadPattern)),
            ("a[", "a", Err(BadPattern)),
            ("a[", "ab", Err(BadPattern)),
            ("[a-", "b", Err(BadPattern)),
            ("[-]", "-", Err(BadPattern)),
            ("[x-]", "x", Err(BadPattern)),
            ("\\", "a", Err(BadPattern)),
            ("a*b*c*d*e*/f[", "axbxcxdxe/xxx/f", Err(BadPattern)),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(try_match(pattern, name), *want, "{pattern:?} vs {name:?}");
            assert_eq!(glob_match(pattern, name), *want == Ok(true));
        }
    }

    #[test]
    fn meta() {
        assert!(has_meta("*.go") && has_meta("a?") && has_meta("[ab]") && has_meta("a\\b"));
        assert!(!has_meta("src/main.rs"));
    }
}
