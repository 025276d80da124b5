//! Shell-style word processing of instruction arguments, after Moby's
//! `frontend/dockerfile/shell` lexer (`ProcessWord` / `ProcessWords`).
//!
//! Single quotes are literal, double quotes allow `$` expansion, the
//! Dockerfile's escape character escapes the next character, and `$VAR`,
//! `${VAR}`, `${VAR:-w}`, `${VAR-w}`, `${VAR:+w}`, `${VAR+w}`, `${VAR:?msg}`,
//! `${VAR?msg}`, `${VAR#pat}`, `${VAR##pat}`, `${VAR%pat}`, `${VAR%%pat}` and
//! `${VAR/pat/rep}`, `${VAR//pat/rep}` are substituted from a caller-supplied
//! lookup. Unset variables expand to "".

use regex::{NoExpand, Regex};

/// A word that could not be processed: an unterminated quote, a malformed
/// `${...}`, or `${VAR?message}` on an unset variable. The message uses Moby's
/// wording (e.g. `foo: is not allowed to be unset`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WordError {
    /// What went wrong.
    pub message: String,
}

fn error(message: impl Into<String>) -> WordError {
    WordError {
        message: message.into(),
    }
}

/// Expands one word (as for ENV values, WORKDIR, USER, COPY paths): quotes are
/// removed, variables substituted, whitespace kept.
pub fn process_word(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, WordError> {
    Ok(Lexer::new(word, escape, lookup).process(&[])?.0)
}

/// Expands `text` and splits it on unquoted whitespace (as for EXPOSE, VOLUME
/// and ARG lists). Whitespace produced by a `$VAR` expansion also splits;
/// whitespace inside quotes does not.
pub fn process_words(
    text: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, WordError> {
    Ok(Lexer::new(text, escape, lookup).process(&[])?.1)
}

/// Expands the body of a COPY/ADD heredoc whose name was not quoted
/// ([`crate::dockerfile::Heredoc::expand`]), as BuildKit does: `$VAR` and
/// `${...}` are substituted and `\` escapes the next character, but quotes
/// are left alone (they belong to the file, not to the Dockerfile). The
/// escape is always `\`, whatever `# escape=` says. RUN heredocs are not
/// expanded here: the shell running them does that.
pub fn process_heredoc(
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, WordError> {
    let mut lexer = Lexer::new(content, '\\', lookup);
    lexer.skip_quotes = true;
    Ok(lexer.process(&[])?.0)
}

/// Turns the raw `(name, value)` pairs of an ENV or LABEL instruction (see
/// [`crate::dockerfile::Kind::Env`]) into final values: both sides go through
/// [`process_word`]. All pairs see the same `lookup`, because Docker expands a
/// whole instruction against the environment as it was before it
/// (`ENV abc=bye def=$abc` sets `def` to the old `abc`).
pub fn expand_pairs(
    pairs: &[(String, String)],
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, WordError> {
    pairs
        .iter()
        .map(|(k, v)| {
            Ok((
                process_word(k, escape, lookup)?,
                process_word(v, escape, lookup)?,
            ))
        })
        .collect()
}

/// Accumulates words the way Moby's `wordsStruct` does.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if !c.is_whitespace() {
            self.add_raw_char(c);
        } else if self.in_word && !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
            self.in_word = false;
        }
    }
    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    raw_escapes: bool,
    skip_quotes: bool,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Lexer<'a> {
    fn new(s: &str, escape: char, lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Lexer {
            chars: s.chars().collect(),
            pos: 0,
            escape,
            raw_escapes: false,
            skip_quotes: false,
            lookup,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += usize::from(c.is_some());
        c
    }

    /// Processes up to one of `stops` (consumed; an error if never found) or
    /// to the end, returning the joined result and the split words.
    fn process(&mut self, stops: &[char]) -> Result<(String, Vec<String>), WordError> {
        let (mut result, mut words) = (String::new(), Words::default());
        while let Some(ch) = self.peek() {
            if stops.contains(&ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let v = self.dollar()?;
                    words.add_string(&v);
                    result.push_str(&v);
                }
                '\'' | '"' if !self.skip_quotes => {
                    let v = if ch == '"' {
                        self.double_quote()?
                    } else {
                        self.single_quote()?
                    };
                    words.add_raw_string(&v);
                    result.push_str(&v);
                }
                _ => {
                    self.next();
                    if ch != self.escape {
                        words.add_char(ch);
                        result.push(ch);
                        continue;
                    }
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    let Some(c) = self.next() else { break };
                    words.add_raw_char(c);
                    result.push(c);
                }
            }
        }
        match stops.first() {
            None => Ok((result, words.finish())),
            // Only `${...}` words have stops; all end in `}`.
            Some(_) => Err(error("syntax error: missing '}'")),
        }
    }

    fn single_quote(&mut self) -> Result<String, WordError> {
        self.next();
        let mut r = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(error(
                        "unexpected end of statement while looking for matching single-quote",
                    ))
                }
                Some('\'') => return Ok(r),
                Some(c) => r.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, WordError> {
        self.next();
        let mut r = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(error(
                        "unexpected end of statement while looking for matching double-quote",
                    ))
                }
                Some('"') => {
                    self.next();
                    return Ok(r);
                }
                Some('$') => r.push_str(&self.dollar()?),
                Some(mut ch) => {
                    self.next();
                    if ch == self.escape {
                        if self.raw_escapes {
                            r.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.escape => {
                                ch = c;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    r.push(ch);
                }
            }
        }
    }

    /// A variable name, a run of digits, or one special parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.next();
                }
                break;
            }
            if name.is_empty() && "@*#?-$!".contains(c) {
                self.next();
                return c.to_string();
            }
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }

    fn dollar(&mut self) -> Result<String, WordError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.next();
        match self.peek() {
            None => return Err(error("syntax error: missing '}'")),
            Some('{' | '}' | ':') => return Err(error("syntax error: bad substitution")),
            Some(_) => {}
        }
        let name = self.name();
        let value = (self.lookup)(&name);
        let colon = self.peek() == Some(':');
        if colon {
            self.next();
        }
        let op = self
            .next()
            .ok_or_else(|| error("syntax error: missing '}'"))?;
        match op {
            '}' if !colon => return Ok(value.unwrap_or_default()),
            '/' if !colon => return self.substitute(value.unwrap_or_default()),
            '+' | '-' | '?' => {}
            '#' | '%' if !colon => {}
            _ => {
                let op = if colon {
                    format!(":{op}")
                } else {
                    op.to_string()
                };
                return Err(error(format!(
                    "unsupported modifier ({op}) in substitution"
                )));
            }
        }
        let saved = std::mem::replace(&mut self.raw_escapes, op == '#' || op == '%');
        let word = self.process(&['}']);
        self.raw_escapes = saved;
        let word = word?.0;
        let unset = value.is_none() || (colon && value.as_deref() == Some(""));
        match op {
            '-' if unset => Ok(word),
            '+' if unset => Ok(String::new()),
            '+' => Ok(word),
            '?' if unset => {
                let message = match (word.is_empty(), value.is_none()) {
                    (false, _) => word.as_str(),
                    (true, true) => "is not allowed to be unset",
                    (true, false) => "is not allowed to be empty",
                };
                Err(error(format!("{name}: {message}")))
            }
            '#' | '%' => trim(op, &word, value.unwrap_or_default()),
            _ => Ok(value.unwrap_or_default()),
        }
    }

    /// `${VAR/pat/rep}` (first match) and `${VAR//pat/rep}` (all matches).
    fn substitute(&mut self, value: String) -> Result<String, WordError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let saved = std::mem::replace(&mut self.raw_escapes, true);
        let pattern = self.process(&['/', '}']);
        let ended = self.pos > 0 && self.chars.get(self.pos - 1) == Some(&'}');
        let replacement = match pattern {
            Ok(_) if !ended => self.process(&['}']),
            _ => Ok(Default::default()),
        };
        self.raw_escapes = saved;
        let (pattern, replacement) = (pattern?.0, replacement?.0);
        let re = shell_pattern(&pattern, false)?;
        let rep = NoExpand(&replacement);
        Ok(if all {
            re.replace_all(&value, rep)
        } else {
            re.replace(&value, rep)
        }
        .into_owned())
    }
}

/// `${VAR#pat}`/`${VAR##pat}` (shortest/longest prefix) and
/// `${VAR%pat}`/`${VAR%%pat}` (shortest/longest suffix) removal.
fn trim(op: char, word: &str, value: String) -> Result<String, WordError> {
    let greedy = word.starts_with(op);
    let re = shell_pattern(if greedy { &word[1..] } else { word }, true)?;
    let prefix = op == '#';
    let fits = |i: &usize| {
        if prefix {
            re.is_match(&value[..*i])
        } else {
            re.is_match(&value[*i..])
        }
    };
    let mut cuts = (0..=value.len()).filter(|i| value.is_char_boundary(*i));
    let cut = if prefix != greedy {
        cuts.find(fits)
    } else {
        cuts.rev().find(fits)
    };
    Ok(match cut {
        Some(i) if prefix => value[i..].to_string(),
        Some(i) => value[..i].to_string(),
        None => value,
    })
}

/// A shell pattern (`*`, `?`, `\*`, `\?`, `\\`) as a regex, optionally
/// anchored at both ends (Moby's `convertShellPatternToRegex`).
fn shell_pattern(pattern: &str, anchored: bool) -> Result<Regex, WordError> {
    let mut re = String::from(if anchored { "(?s)^" } else { "(?s)" });
    let mut it = pattern.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '\\' => match it.peek() {
                Some('}' | '/') => {}
                Some(&n @ ('*' | '?' | '\\')) => {
                    it.next();
                    re.push_str(&regex::escape(&n.to_string()));
                }
                n => {
                    return Err(error(format!(
                        "invalid escape '\\{}'",
                        n.copied().unwrap_or(' ')
                    )))
                }
            },
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    if anchored {
        re.push('$');
    }
    Regex::new(&re).map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "foo" => Some("hello".into()),
            "empty" => Some(String::new()),
            "two" => Some("d e".into()),
            "path" => Some("/usr/local/bin/app.tar.gz".into()),
            _ => None,
        }
    }

    fn w(s: &str) -> String {
        process_word(s, '\\', &env).unwrap()
    }

    fn err(s: &str) -> String {
        process_word(s, '\\', &env).unwrap_err().message
    }

    #[test]
    fn plain_variables() {
        assert_eq!(w("$foo"), "hello");
        assert_eq!(w("${foo}/x"), "hello/x");
        assert_eq!(w("a$unset-b"), "a-b");
        assert_eq!(w("cost $"), "cost $");
        assert_eq!(w("$foo bar"), "hello bar");
    }

    #[test]
    fn moby_documented_modifiers() {
        assert_eq!(w("${foo:-bar}"), "hello");
        assert_eq!(w("${unset:-bar}"), "bar");
        assert_eq!(w("${empty:-bar}"), "bar");
        assert_eq!(w("${empty-bar}"), "");
        assert_eq!(w("${unset-bar}"), "bar");
        assert_eq!(w("${foo:+bar}"), "bar");
        assert_eq!(w("${unset:+bar}"), "");
        assert_eq!(w("${empty:+bar}"), "");
        assert_eq!(w("${empty+bar}"), "bar");
        assert_eq!(w("${unset:-$foo}"), "hello");
        assert_eq!(w("${unset:-\"a b\"}"), "a b");
        assert_eq!(w("${foo:?oops}"), "hello");
        assert_eq!(err("${unset:?must be set}"), "unset: must be set");
        assert_eq!(err("${unset?}"), "unset: is not allowed to be unset");
        assert_eq!(err("${empty:?}"), "empty: is not allowed to be empty");
        assert_eq!(w("${empty?}"), "");
    }

    #[test]
    fn pattern_modifiers() {
        assert_eq!(w("${path#*/}"), "usr/local/bin/app.tar.gz");
        assert_eq!(w("${path##*/}"), "app.tar.gz");
        assert_eq!(w("${path%.*}"), "/usr/local/bin/app.tar");
        assert_eq!(w("${path%%.*}"), "/usr/local/bin/app");
        assert_eq!(w("${foo/l/L}"), "heLlo");
        assert_eq!(w("${foo//l/L}"), "heLLo");
        assert_eq!(w("${foo//l}"), "heo");
        assert_eq!(w("${foo/x/\\$y}"), "hello");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$foo'"), "$foo");
        assert_eq!(w("\"$foo world\""), "hello world");
        assert_eq!(w("\\$foo"), "$foo");
        assert_eq!(w("\"a\\\"b\\c\""), "a\"b\\c");
        assert_eq!(w("it'\\'s"), "it\\s");
        assert_eq!(
            process_word("`$foo C:\\dir", '`', &env).unwrap(),
            "$foo C:\\dir"
        );
        assert_eq!(
            err("\"open"),
            "unexpected end of statement while looking for matching double-quote"
        );
        assert_eq!(
            err("'open"),
            "unexpected end of statement while looking for matching single-quote"
        );
        assert_eq!(err("${foo"), "syntax error: missing '}'");
        assert_eq!(err("${}"), "syntax error: bad substitution");
        assert_eq!(
            err("${foo:=x}"),
            "unsupported modifier (:=) in substitution"
        );
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let body = "echo \"$foo\" '${two}' \\$foo\n";
        assert_eq!(
            process_heredoc(body, &env).unwrap(),
            "echo \"hello\" 'd e' $foo\n"
        );
    }

    #[test]
    fn words_split_on_unquoted_whitespace() {
        let words = process_words("a  \"b c\" $two '' x\\ y", '\\', &env).unwrap();
        assert_eq!(words, ["a", "b c", "d", "e", "x y"]);
        assert_eq!(
            process_words("80/tcp ${unset} 443", '\\', &env).unwrap(),
            ["80/tcp", "443"]
        );
    }

    #[test]
    fn pairs_expand_against_the_previous_environment() {
        // ENV abc=bye def=$abc, with abc=hello before: def gets hello.
        let before = |n: &str| (n == "abc").then(|| "hello".to_string());
        let pairs = vec![("abc".into(), "bye".into()), ("def".into(), "$abc".into())];
        let got = expand_pairs(&pairs, '\\', &before).unwrap();
        assert_eq!(
            got,
            [("abc".into(), "bye".into()), ("def".into(), "hello".into())]
        );
        let legacy = vec![("k".into(), "\"v 2\" and $abc".into())];
        assert_eq!(
            expand_pairs(&legacy, '\\', &before).unwrap()[0].1,
            "v 2 and hello"
        );
    }
}
