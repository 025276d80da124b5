//! Dockerfile parsing with the semantics of Moby's classic parser
//! (`buildkit/frontend/dockerfile/parser`) and its instruction checks
//! (`.../instructions`): parser directives, comments, line continuations,
//! heredocs, JSON (exec) forms and builder flags.
//!
//! Values are kept raw (quotes and `$` untouched); the executor expands them
//! with [`crate::words`] against the environment of the moment.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
use std::time::Duration;

/// A Dockerfile that could not be parsed, with docker's wording, e.g.
/// `Dockerfile parse error line 3: unknown instruction: FOO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile parse error line {line}: {message}")]
pub struct ParseError {
    /// The 1-based line where the offending instruction starts.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says otherwise); word
    /// expansion must use the same one.
    pub escape: char,
    /// The ARG instructions before the first FROM.
    pub global_args: Vec<Instruction>,
    /// The build stages, in order.
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The `AS` name, lowercased.
    pub name: Option<String>,
    /// The base image or stage, raw (may contain `$ARG`s).
    pub base: String,
    /// The raw `--platform` flag.
    pub platform: Option<String>,
    /// The line of the FROM instruction.
    pub line: usize,
    /// The stage's instructions.
    pub instructions: Vec<Instruction>,
}

/// One instruction other than FROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    /// The line where the instruction starts.
    pub line: usize,
    /// The instruction as written, continuations joined into one line (for
    /// progress display and cache keys), e.g. `RUN make all`.
    pub text: String,
    /// What it is, with its arguments.
    pub kind: Kind,
}

/// An instruction with its raw arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `RUN [flags] cmd`; `flags` are `(name, value)` without `--`, e.g.
    /// `("mount", "type=cache,target=/root/.cache")`.
    Run {
        /// The command.
        cmd: Cmd,
        /// Heredocs opened on the RUN line, in order.
        heredocs: Vec<Heredoc>,
        /// `--mount`, `--network`, `--security`, `--device`, kept raw.
        flags: Vec<(String, String)>,
    },
    /// `COPY`.
    Copy(CopyArgs),
    /// `ADD`.
    Add(CopyArgs),
    /// `ENV` pairs, raw: expand with [`crate::words::expand_pairs`].
    Env(Vec<(String, String)>),
    /// `ARG` names with raw defaults.
    Arg(Vec<(String, Option<String>)>),
    /// `WORKDIR`, raw.
    Workdir(String),
    /// `USER`, raw.
    User(String),
    /// `EXPOSE` ports, raw.
    Expose(Vec<String>),
    /// `ENTRYPOINT`.
    Entrypoint(Cmd),
    /// `CMD`.
    Cmd(Cmd),
    /// `LABEL` pairs, raw: expand with [`crate::words::expand_pairs`].
    Label(Vec<(String, String)>),
    /// `VOLUME` paths, raw.
    Volume(Vec<String>),
    /// `STOPSIGNAL`, raw.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD` and its trigger.
    Onbuild(Box<Instruction>),
    /// `SHELL`.
    Shell(Vec<String>),
    /// `MAINTAINER` (deprecated).
    Maintainer(String),
}

/// A command in shell form (run with the stage's SHELL) or exec form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    /// The text after the instruction, as written.
    Shell(String),
    /// A JSON array of strings.
    Exec(Vec<String>),
}

/// The arguments of COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyArgs {
    /// The sources, raw; heredoc sources (`<<EOF`) are in `heredocs` instead.
    pub srcs: Vec<String>,
    /// The destination, raw.
    pub dest: String,
    /// `--from` (COPY only).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// Heredoc sources, copied to `dest` under their names.
    pub heredocs: Vec<Heredoc>,
}

/// A heredoc body (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heredoc {
    /// The terminator word, unquoted.
    pub name: String,
    /// The lines between opener and terminator, each ending in `\n`; leading
    /// tabs already removed when `chomp_tabs`.
    pub content: String,
    /// False when the name was quoted (`<<"EOF"`, `<<'EOF'`): no expansion.
    pub expand: bool,
    /// `<<-EOF`: leading tabs are stripped from content and terminator.
    pub chomp_tabs: bool,
}

/// The HEALTHCHECK instruction. Durations and retries of 0 are `None`
/// (inherit), as in Docker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [flags] CMD ...`.
    Cmd {
        /// The probe.
        cmd: Cmd,
        /// `--interval`.
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// Parses a Dockerfile.
pub fn parse(src: &str) -> Result<Dockerfile, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = src.lines().collect();
    let escape = directives(&lines)?;
    let mut df = Dockerfile {
        escape,
        global_args: Vec::new(),
        stages: Vec::new(),
    };
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let Some(text) = logical_line(&lines, &mut i, escape) else {
            continue;
        };
        let (cmd, rest) = split_command(&text);
        let mut heredocs = Vec::new();
        if matches!(cmd.to_ascii_lowercase().as_str(), "run" | "copy" | "add")
            && parse_json(extract_flags(rest).1).is_err()
        {
            for word in raw_words(&text, '\\') {
                if let Some(h) = heredoc_header(&word) {
                    heredocs.push(heredoc_body(h, &lines, &mut i, start)?);
                }
            }
        }
        match instruction(start, &text, heredocs, escape)? {
            Parsed::From(stage) => df.stages.push(stage),
            Parsed::Inst(inst) => match df.stages.last_mut() {
                Some(stage) => stage.instructions.push(inst),
                None if matches!(inst.kind, Kind::Arg(_)) => df.global_args.push(inst),
                None => return Err(err(start, "no build stage in current context")),
            },
        }
    }
    if df.stages.is_empty() && df.global_args.is_empty() {
        return Err(err(1, "file with no instructions"));
    }
    if df.stages.is_empty() {
        return Err(err(
            1,
            "dockerfile contains no stages to build (missing FROM)",
        ));
    }
    Ok(df)
}

static DIRECTIVE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$").expect("valid regex")
});
static HEREDOC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d*)<<(-?)([^<]*)$").expect("valid regex"));

/// Reads the parser directives at the top; returns the escape character.
fn directives(lines: &[&str]) -> Result<char, ParseError> {
    let (mut escape, mut seen) = ('\\', Vec::new());
    for (n, line) in lines.iter().enumerate() {
        let Some(c) = DIRECTIVE.captures(line.trim_start()) else {
            break;
        };
        let key = c[1].to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            break;
        }
        if seen.contains(&key) {
            return Err(err(
                n + 1,
                format!("only one {key} parser directive can be used"),
            ));
        }
        if key == "escape" {
            escape = match &c[2] {
                "`" => '`',
                "\\" => '\\',
                v => {
                    return Err(err(
                        n + 1,
                        format!("invalid escape token '{v}' does not match ` or \\"),
                    ))
                }
            };
        }
        seen.push(key);
    }
    Ok(escape)
}

/// Joins the next instruction's continued lines, dropping comments and blank
/// lines inside; `None` for a comment or blank line.
fn logical_line(lines: &[&str], i: &mut usize, escape: char) -> Option<String> {
    let first = lines[*i].trim_start();
    *i += 1;
    if first.starts_with('#') {
        return None;
    }
    let (mut line, mut done) = trim_continuation(first, escape);
    if done && line.is_empty() {
        return None;
    }
    while !done && *i < lines.len() {
        let raw = lines[*i];
        *i += 1;
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let (part, end) = trim_continuation(raw, escape);
        line.push_str(&part);
        done = end;
    }
    Some(line.trim().to_string())
}

/// Strips a trailing escape character (plus trailing blanks); `true` when
/// there was none, i.e. the instruction ends on this line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(rest) => (rest.to_string(), false),
        None => (line.to_string(), true),
    }
}

/// Splits `text` into the instruction word and the rest.
fn split_command(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(char::is_whitespace) {
        Some(p) => (&text[..p], text[p..].trim_start()),
        None => (text, ""),
    }
}

/// Splits off leading `--flag[=value]` words (quotes removed); stops at the
/// first other word or after a bare `--`.
fn extract_flags(mut rest: &str) -> (Vec<String>, &str) {
    let mut words = Vec::new();
    loop {
        let t = rest.trim_start();
        if !t.starts_with("--") {
            return (words, t);
        }
        let (mut word, mut quote, mut end) = (String::new(), None, t.len());
        let mut it = t.char_indices();
        while let Some((p, c)) = it.next() {
            match quote {
                Some(q) if c == q => quote = None,
                None if c.is_whitespace() => {
                    end = p;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                _ if c == '\\' => word.extend(it.next().map(|(_, n)| n)),
                _ => word.push(c),
            }
        }
        rest = &t[end..];
        if word == "--" {
            return (words, rest.trim_start());
        }
        words.push(word);
    }
}

/// Splits on whitespace outside quotes, keeping quotes and escapes (Moby's
/// `parseWords`).
fn raw_words(s: &str, escape: char) -> Vec<String> {
    let (mut words, mut word, mut quote) = (Vec::new(), String::new(), None);
    let (mut in_word, mut blank_ok) = (false, false);
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == escape && q != '\'' {
                match it.next() {
                    Some(n) => word.extend([c, n]),
                    None => quote = None,
                }
                continue;
            }
            word.push(c);
            continue;
        }
        if c.is_whitespace() {
            if in_word && (blank_ok || !word.is_empty()) {
                words.push(std::mem::take(&mut word));
            }
            (in_word, blank_ok) = (false, false);
            continue;
        }
        in_word = true;
        if c == '\'' || c == '"' {
            (quote, blank_ok) = (Some(c), true);
        }
        if c == escape {
            word.extend(it.next().map(|n| [c, n]).into_iter().flatten());
            continue;
        }
        word.push(c);
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Recognises a heredoc opener word such as `<<EOF`, `<<-EOF`, `<<"EOF"`.
fn heredoc_header(word: &str) -> Option<Heredoc> {
    let c = HEREDOC.captures(word)?;
    let rest = &c[3];
    // Unset variables stay as written, as Moby's SkipUnsetEnv does.
    let keep = |name: &str| Some(format!("${name}"));
    let names = crate::words::process_words(rest, '\\', &keep).ok()?;
    match names.as_slice() {
        [name] => Some(Heredoc {
            name: name.clone(),
            content: String::new(),
            expand: !rest.contains(['"', '\'']),
            chomp_tabs: &c[2] == "-",
        }),
        _ => None,
    }
}

/// Reads a heredoc's lines up to its terminator.
fn heredoc_body(
    mut h: Heredoc,
    lines: &[&str],
    i: &mut usize,
    start: usize,
) -> Result<Heredoc, ParseError> {
    loop {
        let line = *lines
            .get(*i)
            .ok_or_else(|| err(start, "unterminated heredoc"))?;
        *i += 1;
        let line = if h.chomp_tabs {
            line.trim_start_matches('\t')
        } else {
            line
        };
        if line == h.name {
            return Ok(h);
        }
        h.content.push_str(line);
        h.content.push('\n');
    }
}

enum Parsed {
    From(Stage),
    Inst(Instruction),
}

/// Parses one logical line (FROM or another instruction).
fn instruction(
    line: usize,
    text: &str,
    heredocs: Vec<Heredoc>,
    escape: char,
) -> Result<Parsed, ParseError> {
    let (word, rest) = split_command(text);
    let cmd = word.to_ascii_lowercase();
    let upper = cmd.to_ascii_uppercase();
    let allowed_flags: &[&str] = match cmd.as_str() {
        "from" => &["platform"],
        "run" => &["mount", "network", "security", "device"],
        "copy" => &["from", "chown", "chmod", "link"],
        "add" => &["chown", "chmod", "link", "checksum"],
        "healthcheck" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        "cmd" | "entrypoint" | "env" | "arg" | "workdir" | "user" | "expose" | "label"
        | "volume" | "stopsignal" | "onbuild" | "shell" | "maintainer" => &[],
        _ => {
            return Err(err(
                line,
                format!("unknown instruction: {}", word.to_uppercase()),
            ))
        }
    };
    let (flag_words, args) = extract_flags(rest);
    let flags = parse_flags(&flag_words, allowed_flags).map_err(|m| err(line, m))?;
    let e = |m: String| err(line, m);
    let one = || {
        if args.is_empty() {
            Err(e(format!("{upper} requires exactly one argument")))
        } else {
            Ok(args.to_string())
        }
    };
    let some = || e(format!("{upper} requires at least one argument"));
    let kind = match cmd.as_str() {
        "from" => return from(line, args, flag(&flags, "platform")).map(Parsed::From),
        "run" if args.is_empty() && heredocs.is_empty() => return Err(some()),
        "run" => Kind::Run {
            cmd: maybe_json(args).map_err(e)?,
            heredocs,
            flags,
        },
        "cmd" => Kind::Cmd(maybe_json(args).map_err(e)?),
        "entrypoint" => Kind::Entrypoint(maybe_json(args).map_err(e)?),
        "copy" => Kind::Copy(copy_args(&upper, args, &flags, heredocs).map_err(e)?),
        "add" => Kind::Add(copy_args(&upper, args, &flags, heredocs).map_err(e)?),
        "env" => Kind::Env(name_values(&upper, args, escape).map_err(e)?),
        "label" => Kind::Label(name_values(&upper, args, escape).map_err(e)?),
        "arg" => {
            let words = raw_words(args, escape);
            if words.is_empty() {
                return Err(some());
            }
            let arg = |w: String| match w.split_once('=') {
                Some(("", _)) => Err(e("ARG names can not be blank".into())),
                Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
                None => Ok((w, None)),
            };
            Kind::Arg(words.into_iter().map(arg).collect::<Result<_, _>>()?)
        }
        "workdir" => Kind::Workdir(one()?),
        "user" => Kind::User(one()?),
        "stopsignal" => Kind::StopSignal(one()?),
        "maintainer" => Kind::Maintainer(one()?),
        "expose" if args.is_empty() => return Err(some()),
        "expose" => Kind::Expose(args.split_whitespace().map(String::from).collect()),
        "volume" => {
            let vols = maybe_json_list(args).map_err(e)?;
            if vols.is_empty() {
                return Err(some());
            }
            if vols.iter().any(String::is_empty) {
                return Err(e("VOLUME specified can not be an empty string".into()));
            }
            Kind::Volume(vols)
        }
        "shell" => match parse_json(args) {
            Ok(v) if v.is_empty() => return Err(some()),
            Ok(v) => Kind::Shell(v),
            Err(Json::NotStrings) => return Err(e(NOT_STRINGS.into())),
            Err(Json::NotJson) => {
                return Err(e("SHELL requires the arguments to be in JSON form".into()))
            }
        },
        "healthcheck" => Kind::Healthcheck(healthcheck(args, &flags).map_err(e)?),
        _ => {
            let (sub, _) = split_command(args);
            match sub.to_ascii_lowercase().as_str() {
                "" => return Err(some()),
                "onbuild" => {
                    return Err(e(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()
                    ))
                }
                "from" | "maintainer" => {
                    return Err(e(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        sub.to_ascii_uppercase()
                    )))
                }
                _ => match instruction(line, args, Vec::new(), escape)? {
                    Parsed::Inst(trigger) => Kind::Onbuild(Box::new(trigger)),
                    Parsed::From(_) => unreachable!("FROM triggers are rejected above"),
                },
            }
        }
    };
    Ok(Parsed::Inst(Instruction {
        line,
        text: text.to_string(),
        kind,
    }))
}

/// Checks flag words against `allowed`; returns `(name, value)` pairs.
/// `--link` is boolean; `--mount` and `--device` may repeat.
fn parse_flags(words: &[String], allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for w in words {
        let (name, value) = match w[2..].split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (&w[2..], None),
        };
        if !allowed.contains(&name) {
            return Err(format!("unknown flag: --{name}"));
        }
        if !matches!(name, "mount" | "device") && out.iter().any(|(n, _)| n == name) {
            return Err(format!("duplicate flag specified: {name}"));
        }
        let value = match value {
            None if name == "link" => "true".to_string(),
            Some(v) if name == "link" && !matches!(v, "true" | "false") => {
                return Err(format!("expecting boolean value for flag {name}, not: {v}"))
            }
            None | Some("") => return Err(format!("missing a value on flag: {name}")),
            Some(v) => v.to_string(),
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn flag(flags: &[(String, String)], name: &str) -> Option<String> {
    flags
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn from(line: usize, args: &str, platform: Option<String>) -> Result<Stage, ParseError> {
    let words: Vec<&str> = args.split_whitespace().collect();
    if !(words.len() == 1 || (words.len() == 3 && words[1].eq_ignore_ascii_case("as"))) {
        return Err(err(line, "FROM requires either one or three arguments"));
    }
    let name = words.get(2).map(|n| n.to_ascii_lowercase());
    if let Some(n) = &name {
        let valid = n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !valid {
            return Err(err(
                line,
                format!("invalid name for build stage: {n:?}, name can't start with a number or contain symbols"),
            ));
        }
    }
    let base = words[0].to_string();
    Ok(Stage {
        name,
        base,
        platform,
        line,
        instructions: Vec::new(),
    })
}

enum Json {
    NotJson,
    NotStrings,
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

fn parse_json(args: &str) -> Result<Vec<String>, Json> {
    if !args.starts_with('[') {
        return Err(Json::NotJson);
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(args).map_err(|_| Json::NotJson)?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(Json::NotStrings),
        })
        .collect()
}

/// Exec form if `args` is a JSON array of strings, else shell form.
fn maybe_json(args: &str) -> Result<Cmd, String> {
    match parse_json(args) {
        Ok(v) => Ok(Cmd::Exec(v)),
        Err(Json::NotStrings) => Err(NOT_STRINGS.into()),
        Err(Json::NotJson) => Ok(Cmd::Shell(args.to_string())),
    }
}

/// A JSON array of strings, else whitespace-separated words.
fn maybe_json_list(args: &str) -> Result<Vec<String>, String> {
    match parse_json(args) {
        Ok(v) => Ok(v),
        Err(Json::NotStrings) => Err(NOT_STRINGS.into()),
        Err(Json::NotJson) => Ok(args.split_whitespace().map(String::from).collect()),
    }
}

fn copy_args(
    name: &str,
    args: &str,
    flags: &[(String, String)],
    heredocs: Vec<Heredoc>,
) -> Result<CopyArgs, String> {
    let mut words = maybe_json_list(args)?;
    if words.len() < 2 {
        return Err(format!(
            "{name} requires at least two arguments, but only one was provided. Destination could not be determined."
        ));
    }
    let dest = words.pop().unwrap_or_default();
    if !heredocs.is_empty() {
        words.retain(|w| heredoc_header(w).is_none());
    }
    Ok(CopyArgs {
        srcs: words,
        dest,
        from: flag(flags, "from"),
        chown: flag(flags, "chown"),
        chmod: flag(flags, "chmod"),
        heredocs,
    })
}

/// ENV and LABEL: `k=v ...`, or the legacy `k value with spaces`.
fn name_values(name: &str, args: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = raw_words(args, escape);
    let Some(first) = words.first() else {
        return Err(format!("{name} requires at least one argument"));
    };
    if !first.contains('=') {
        return match split_command(args) {
            (_, "") => Err(format!("{name} must have two arguments")),
            (k, v) => Ok(vec![(k.to_string(), v.to_string())]),
        };
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(format!("{name} names can not be blank")),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )),
        })
        .collect()
}

fn healthcheck(args: &str, flags: &[(String, String)]) -> Result<Healthcheck, String> {
    let (kind, rest) = split_command(args);
    match kind.to_ascii_uppercase().as_str() {
        "" => Err("HEALTHCHECK requires at least one argument".into()),
        "NONE" if rest.is_empty() => Ok(Healthcheck::None),
        "NONE" => Err("HEALTHCHECK NONE takes no arguments".into()),
        "CMD" if rest.is_empty() => Err("Missing command after HEALTHCHECK CMD".into()),
        "CMD" => {
            let interval = |name: &str| -> Result<Option<Duration>, String> {
                let Some(v) = flag(flags, name) else {
                    return Ok(None);
                };
                let d = go_duration(&v).ok_or_else(|| format!("time: invalid duration {v:?}"))?;
                if d < 0.0 {
                    return Err(format!("Interval \"{name}\" cannot be negative"));
                }
                if d > 0.0 && d < 1e6 {
                    return Err(format!("Interval \"{name}\" cannot be less than 1ms"));
                }
                Ok((d > 0.0).then(|| Duration::from_nanos(d.round() as u64)))
            };
            let retries = match flag(flags, "retries") {
                None => None,
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n < 0 => return Err(format!("--retries cannot be negative ({n})")),
                    Ok(0) => None,
                    Ok(n) => {
                        Some(u32::try_from(n).map_err(|_| format!("--retries out of range: {n}"))?)
                    }
                    Err(_) => return Err(format!("invalid --retries value: {v:?}")),
                },
            };
            Ok(Healthcheck::Cmd {
                cmd: maybe_json(rest)?,
                interval: interval("interval")?,
                timeout: interval("timeout")?,
                start_period: interval("start-period")?,
                start_interval: interval("start-interval")?,
                retries,
            })
        }
        _ => Err(format!("Unknown type {kind:?} in HEALTHCHECK (try CMD)")),
    }
}

/// A Go `time.ParseDuration` string (`1m30s`, `500ms`, `-2h`) in nanoseconds.
fn go_duration(s: &str) -> Option<f64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok().filter(|_| &rest[..n] != ".")?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * unit;
        rest = &rest[u..];
    }
    (!s.is_empty() && s != "-" && s != "+").then_some(sign * total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insts(body: &str) -> Vec<Instruction> {
        parse(&format!("FROM alpine\n{body}"))
            .unwrap()
            .stages
            .remove(0)
            .instructions
    }

    fn kind(body: &str) -> Kind {
        insts(body).remove(0).kind
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn shell(s: &str) -> Cmd {
        Cmd::Shell(s.into())
    }

    fn run_heredocs(body: &str) -> Vec<Heredoc> {
        match kind(body) {
            Kind::Run { heredocs, .. } => heredocs,
            other => panic!("{other:?}"),
        }
    }

    fn copy(body: &str) -> CopyArgs {
        match kind(body) {
            Kind::Copy(c) | Kind::Add(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stages_comments_and_continuations() {
        let src = "# syntax=docker/dockerfile:1\nARG BASE=alpine\n\n# a comment\n\
            from --platform=$BUILDPLATFORM ${BASE} AS Build\nRUN make \\\n  # dropped\n\n    all\n\
            FROM scratch\ncopy --from=build /out /\n";
        let df = parse(src).unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(
            df.global_args[0].kind,
            Kind::Arg(vec![("BASE".into(), Some("alpine".into()))])
        );
        let build = &df.stages[0];
        assert_eq!(
            (build.name.as_deref(), build.base.as_str(), build.line),
            (Some("build"), "${BASE}", 5)
        );
        assert_eq!(build.platform.as_deref(), Some("$BUILDPLATFORM"));
        let run = &build.instructions[0];
        assert_eq!((run.line, run.text.as_str()), (6, "RUN make     all"));
        assert!(matches!(&run.kind, Kind::Run { cmd, .. } if *cmd == shell("make     all")));
        let Kind::Copy(c) = &df.stages[1].instructions[0].kind else {
            panic!()
        };
        assert_eq!(
            (c.from.as_deref(), &c.srcs[..], c.dest.as_str()),
            (Some("build"), &strings(&["/out"])[..], "/")
        );
        assert_eq!(
            insts("RUN a \\  \nb")[0].text,
            "RUN a b",
            "blanks after the escape are allowed"
        );
        let df = parse("\u{feff}FROM a\r\nRUN b\r\n").unwrap();
        assert_eq!(df.stages[0].instructions[0].text, "RUN b");
    }

    #[test]
    fn escape_directive() {
        // The Windows example from the Dockerfile reference.
        let df = parse(
            "# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n",
        )
        .unwrap();
        assert_eq!(df.escape, '`');
        let i = &df.stages[0].instructions;
        assert!(matches!(&i[0].kind, Kind::Copy(c) if c.dest == "c:\\"));
        assert!(matches!(&i[1].kind, Kind::Run { cmd, .. } if *cmd == shell("dir c:\\")));
        assert_eq!(
            parse("# escape=`\nFROM x\nRUN a `\n  b").unwrap().stages[0].instructions[0].text,
            "RUN a   b"
        );
        // Without the directive the backslashes continue the lines.
        let c = copy("COPY testfile.txt c:\\\nRUN dir c:\\\n");
        assert_eq!(
            (c.srcs, c.dest.as_str()),
            (strings(&["testfile.txt", "c:RUN", "dir"]), "c:")
        );
        // Directives stop at the first other line; later ones are comments.
        assert_eq!(
            parse("FROM x\n# escape=`\nRUN a \\\n b").unwrap().escape,
            '\\'
        );
        assert_eq!(parse("\n# escape=`\nFROM x").unwrap().escape, '\\');
    }

    #[test]
    fn heredocs() {
        let i = insts(
            "RUN <<EOF\necho $HOME\n\tcd /\nEOF\nRUN <<-EOT bash\n\techo hi\n\tEOT\nUSER x\n",
        );
        let Kind::Run { cmd, heredocs, .. } = &i[0].kind else {
            panic!()
        };
        assert_eq!(cmd, &shell("<<EOF"));
        let h = &heredocs[0];
        assert_eq!(
            (h.name.as_str(), h.content.as_str(), h.expand, h.chomp_tabs),
            ("EOF", "echo $HOME\n\tcd /\n", true, false)
        );
        let Kind::Run { heredocs, .. } = &i[1].kind else {
            panic!()
        };
        let h = &heredocs[0];
        assert_eq!(
            (h.name.as_str(), h.content.as_str(), h.chomp_tabs),
            ("EOT", "echo hi\n", true)
        );
        assert_eq!((i[2].line, &i[2].kind), (9, &Kind::User("x".into())));

        let h = run_heredocs("RUN cat <<'A' > a && cat <<\"B\" >b\n$x\nA\ny\nB\n");
        let got: Vec<_> = h
            .iter()
            .map(|h| (h.name.as_str(), h.content.as_str(), h.expand))
            .collect();
        assert_eq!(got, [("A", "$x\n", false), ("B", "y\n", false)]);
        assert!(run_heredocs("RUN [\"echo\", \"<<EOF\"]").is_empty());
        assert!(run_heredocs("RUN cat <<<here-string").is_empty());

        let c = copy("COPY --chmod=755 <<EOF /usr/bin/hello\n#!/bin/sh\nEOF\n");
        assert_eq!(
            (c.srcs.len(), c.dest.as_str(), c.chmod.as_deref()),
            (0, "/usr/bin/hello", Some("755"))
        );
        assert_eq!(c.heredocs[0].content, "#!/bin/sh\n");
    }

    #[test]
    fn instruction_arguments() {
        assert_eq!(
            kind("CMD [\"a\", \"b c\"]"),
            Kind::Cmd(Cmd::Exec(strings(&["a", "b c"])))
        );
        assert_eq!(
            kind("ENTRYPOINT [\"a\" oops"),
            Kind::Entrypoint(shell("[\"a\" oops"))
        );
        assert_eq!(kind("cmd echo $HOME"), Kind::Cmd(shell("echo $HOME")));
        let flags = pairs(&[
            ("mount", "type=cache,target=/c"),
            ("mount", "type=ssh"),
            ("network", "none"),
        ]);
        let run = "RUN --mount=type=cache,target=/c --mount=type=ssh --network=none make";
        assert_eq!(
            kind(run),
            Kind::Run {
                cmd: shell("make"),
                heredocs: vec![],
                flags
            }
        );
        assert_eq!(
            kind("SHELL [\"pwsh\", \"-c\"]"),
            Kind::Shell(strings(&["pwsh", "-c"]))
        );
        assert_eq!(
            kind("ENV a=b c=d"),
            Kind::Env(pairs(&[("a", "b"), ("c", "d")]))
        );
        assert_eq!(
            kind("ENV k2=\"v 2\" k3=a\\ b"),
            Kind::Env(pairs(&[("k2", "\"v 2\""), ("k3", "a\\ b")]))
        );
        assert_eq!(
            kind("ENV MY_NAME John Doe  Jr"),
            Kind::Env(pairs(&[("MY_NAME", "John Doe  Jr")]))
        );
        assert_eq!(
            kind("LABEL \"com.x\"=\"y z\" v=1"),
            Kind::Label(pairs(&[("\"com.x\"", "\"y z\""), ("v", "1")]))
        );
        let args = vec![("a".into(), None), ("b".into(), Some("\"$x y\"".into()))];
        assert_eq!(kind("ARG a b=\"$x y\""), Kind::Arg(args));
        let a = copy("ADD --chown=1:1 --link --checksum=sha256:ab [\"a b\", \"c\", \"/d/\"]");
        assert_eq!(
            (a.srcs, a.dest, a.chown),
            (strings(&["a b", "c"]), "/d/".into(), Some("1:1".into()))
        );
        assert_eq!(kind("WORKDIR /a b"), Kind::Workdir("/a b".into()));
        assert_eq!(kind("USER ${U:-app}"), Kind::User("${U:-app}".into()));
        assert_eq!(
            kind("EXPOSE 80/tcp  $P"),
            Kind::Expose(strings(&["80/tcp", "$P"]))
        );
        assert_eq!(kind("VOLUME /a /b"), Kind::Volume(strings(&["/a", "/b"])));
        assert_eq!(
            kind("VOLUME [\"/data\"]"),
            Kind::Volume(strings(&["/data"]))
        );
        assert_eq!(
            kind("STOPSIGNAL SIGKILL"),
            Kind::StopSignal("SIGKILL".into())
        );
        assert_eq!(
            kind("MAINTAINER me <m@x>"),
            Kind::Maintainer("me <m@x>".into())
        );
        let Kind::Onbuild(trigger) = kind("ONBUILD RUN echo hi") else {
            panic!()
        };
        assert_eq!(trigger.text, "RUN echo hi");
        assert_eq!(
            trigger.kind,
            Kind::Run {
                cmd: shell("echo hi"),
                heredocs: vec![],
                flags: vec![]
            }
        );
    }

    #[test]
    fn healthcheck() {
        assert_eq!(
            kind("HEALTHCHECK none"),
            Kind::Healthcheck(Healthcheck::None)
        );
        let hc = "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0s --retries=3 CMD [\"curl\", \"-f\"]";
        let want = Healthcheck::Cmd {
            cmd: Cmd::Exec(strings(&["curl", "-f"])),
            interval: Some(Duration::from_secs(90)),
            timeout: Some(Duration::from_millis(500)),
            start_period: None,
            start_interval: None,
            retries: Some(3),
        };
        assert_eq!(kind(hc), Kind::Healthcheck(want));
        assert_eq!(go_duration("1.5h"), Some(5400e9));
        assert_eq!(go_duration("-2m3.5s"), Some(-123.5e9));
        assert_eq!(
            (go_duration("10"), go_duration(""), go_duration("5x")),
            (None, None, None)
        );
    }

    #[test]
    fn errors_carry_docker_wording_and_line() {
        let cases = [
            ("FROM a\n\nFOO bar", 3, "unknown instruction: FOO"),
            ("RUN x\nFROM a", 1, "no build stage in current context"),
            ("", 1, "file with no instructions"),
            ("# just a comment\n\n", 1, "file with no instructions"),
            ("ARG x=1\n", 1, "dockerfile contains no stages to build (missing FROM)"),
            ("FROM a b", 1, "FROM requires either one or three arguments"),
            ("FROM a AS 1st", 1, "invalid name for build stage: \"1st\", name can't start with a number or contain symbols"),
            ("FROM --platform a", 1, "missing a value on flag: platform"),
            ("# escape=x\nFROM a", 1, "invalid escape token 'x' does not match ` or \\"),
            ("# escape=`\n# escape=\\\nFROM a", 2, "only one escape parser directive can be used"),
            ("FROM a\nRUN <<EOF\nnever ends\n", 2, "unterminated heredoc"),
            ("FROM a\nRUN --foo=bar x", 2, "unknown flag: --foo"),
            ("FROM a\nCMD --x", 2, "unknown flag: --x"),
            ("FROM a\nCOPY --foo a b", 2, "unknown flag: --foo"),
            ("FROM a\nADD --from=x a b", 2, "unknown flag: --from"),
            ("FROM a\nCOPY --chown a b", 2, "missing a value on flag: chown"),
            ("FROM a\nCOPY --link=maybe a b", 2, "expecting boolean value for flag link, not: maybe"),
            ("FROM a\nCOPY --from=x --from=y a b", 2, "duplicate flag specified: from"),
            ("FROM a\nCOPY onlyone", 2, "COPY requires at least two arguments, but only one was provided. Destination could not be determined."),
            ("FROM a\nCMD [1]", 2, "when using JSON array syntax, arrays must be comprised of strings only"),
            ("FROM a\nSHELL /bin/sh -c", 2, "SHELL requires the arguments to be in JSON form"),
            ("FROM a\nSHELL []", 2, "SHELL requires at least one argument"),
            ("FROM a\nRUN", 2, "RUN requires at least one argument"),
            ("FROM a\nENV", 2, "ENV requires at least one argument"),
            ("FROM a\nENV =x", 2, "ENV names can not be blank"),
            ("FROM a\nENV a=b c", 2, "Syntax error - can't find = in \"c\". Must be of the form: name=value"),
            ("FROM a\nLABEL onlykey", 2, "LABEL must have two arguments"),
            ("FROM a\nARG =x", 2, "ARG names can not be blank"),
            ("FROM a\nWORKDIR", 2, "WORKDIR requires exactly one argument"),
            ("FROM a\nEXPOSE", 2, "EXPOSE requires at least one argument"),
            ("FROM a\nVOLUME [\"\"]", 2, "VOLUME specified can not be an empty string"),
            ("FROM a\nHEALTHCHECK --interval=-1s CMD x", 2, "Interval \"interval\" cannot be negative"),
            ("FROM a\nHEALTHCHECK --timeout=1us CMD x", 2, "Interval \"timeout\" cannot be less than 1ms"),
            ("FROM a\nHEALTHCHECK --retries=-1 CMD x", 2, "--retries cannot be negative (-1)"),
            ("FROM a\nHEALTHCHECK NONE x", 2, "HEALTHCHECK NONE takes no arguments"),
            ("FROM a\nHEALTHCHECK FOO", 2, "Unknown type \"FOO\" in HEALTHCHECK (try CMD)"),
            ("FROM a\nONBUILD ONBUILD RUN x", 2, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
            ("FROM a\nONBUILD FROM x", 2, "FROM isn't allowed as an ONBUILD trigger"),
            ("FROM a\nONBUILD MAINTAINER x", 2, "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ];
        for (src, line, message) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!((e.line, e.message.as_str()), (line, message), "{src:?}");
        }
        let e = parse("FROM a\nFOO").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile parse error line 2: unknown instruction: FOO"
        );
    }
}
