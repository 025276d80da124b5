//! Container log files: `container.log` and, after a rotation, `container.log.1`.
//!
//! The format is docker's json-file driver: one JSON [`LogEntry`] per line. The shim is the
//! only writer ([`LogWriter`]); any process may read ([`read_tail`], [`LogFollower`],
//! [`read_tail_then_follow`]) without coordinating with it.
//!
//! Rotation protocol, which the readers rely on: between two writes the writer renames
//! `path` to `path.1` (replacing the older one) and creates a fresh `path`; it never
//! writes to a file again once it is renamed. So a reader that sees a new file at `path`
//! can drain the old one (through a descriptor it still holds) knowing it is complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

/// Longest line, in bytes without its newline, that fits one entry (docker's 16 KiB);
/// longer lines are split into several entries, only the last carrying the newline.
pub const MAX_LINE: usize = 16 * 1024;

/// Read size when scanning files.
const BLOCK: usize = 64 * 1024;
/// Most bytes one [`LogFollower::poll`] reads; the rest waits for the next call.
const POLL_BUDGET: u64 = 4 << 20;
/// A "line" longer than this in a log file is garbage (ours are < 100 KiB): skip it
/// rather than buffer it.
const MAX_RECORD: usize = 1 << 20;
/// Attempts at opening `path` and `path.1` as a consistent pair while rotations race us.
const OPEN_ATTEMPTS: usize = 10;

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the shim read it: RFC 3339 in UTC with nanoseconds.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, with its trailing newline if it had one (invalid UTF-8 replaced lossily).
    pub line: String,
}

/// The borrowed form written by [`LogWriter`].
#[derive(Serialize)]
struct EntryRef<'a> {
    time: &'a str,
    stream: &'a str,
    line: &'a str,
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (or the terminal).
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `"stdout"` or `"stderr"`, as in [`LogEntry::stream`].
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Where the previous generation of the log at `path` is kept: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    s.into()
}

/// Appends JSON lines (one serialized [`LogEntry`] per line, like docker's json-file
/// driver) to `path`.
///
/// Dropping the writer flushes buffered partial lines (best effort; call
/// [`LogWriter::flush`] to see errors).
pub struct LogWriter {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    /// Bytes in `file`.
    size: u64,
    /// The file may end in a torn line (a failed write): terminate it before appending.
    check_tail: bool,
    /// Per stream, output not yet written because its line is incomplete.
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (creating or appending) `path`; when the file would grow past `max_bytes`,
    /// it is renamed to `<path>.1` (replacing an older one) and a fresh file is started,
    /// so at most ~2*max_bytes are kept. `max_bytes == 0` means never rotate.
    ///
    /// A torn last line (a crash mid-write) is terminated, so it stays one malformed line
    /// that readers skip instead of swallowing the next entry.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self> {
        let file = open_append(path)?;
        let mut w = LogWriter {
            path: path.to_owned(),
            max_bytes,
            file,
            size: 0,
            check_tail: true,
            partial: Default::default(),
        };
        w.terminate_torn_line()
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(w)
    }

    /// Adds output of one stream: splits into lines; a trailing partial line is buffered
    /// per stream until its newline arrives (or the buffer exceeds 16 KiB, then it is
    /// written as an entry without newline). Each complete line becomes one entry
    /// stamped now.
    ///
    /// How `data` is chunked across calls does not change the entries (only their times).
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<()> {
        let i = stream.index();
        let mut buf = std::mem::take(&mut self.partial[i]);
        buf.extend_from_slice(data);
        let records = split_records(&buf);
        let consumed = records.last().map_or(0, |r| r.end);
        let res = self.append(stream, records.into_iter().map(|r| &buf[r]));
        buf.drain(..consumed);
        self.partial[i] = buf;
        res
    }

    /// Writes any buffered partial lines (at EOF of the streams).
    pub fn flush(&mut self) -> Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buf = std::mem::take(&mut self.partial[stream.index()]);
            if !buf.is_empty() {
                self.append(stream, std::iter::once(&buf[..]))?;
            }
        }
        Ok(())
    }

    /// Writes `records` as entries: one `write_all` per batch, split only by rotation.
    fn append<'a>(
        &mut self,
        stream: Stream,
        records: impl Iterator<Item = &'a [u8]>,
    ) -> Result<()> {
        let time = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut batch = Vec::new();
        let mut entry = Vec::new();
        for rec in records {
            entry.clear();
            let e = EntryRef {
                time: &time,
                stream: stream.as_str(),
                line: &String::from_utf8_lossy(rec),
            };
            serde_json::to_writer(&mut entry, &e)?;
            entry.push(b'\n');
            let before = self.size + batch.len() as u64;
            if self.max_bytes > 0 && before > 0 && before + entry.len() as u64 > self.max_bytes {
                self.write_batch(&batch)?;
                batch.clear();
                self.rotate()?;
            }
            batch.extend_from_slice(&entry);
        }
        self.write_batch(&batch)
    }

    fn write_batch(&mut self, batch: &[u8]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let res = (|| {
            if self.check_tail {
                self.terminate_torn_line()?;
            }
            self.file.write_all(batch)
        })();
        match res {
            Ok(()) => {
                self.size += batch.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.check_tail = true;
                Err(e).with_context(|| format!("cannot write {}", self.path.display()))
            }
        }
    }

    /// Re-reads the size and appends a newline if the file ends inside a line.
    fn terminate_torn_line(&mut self) -> io::Result<()> {
        self.size = self.file.metadata()?.len();
        if self.size > 0 {
            let mut last = [0u8];
            self.file.read_exact_at(&mut last, self.size - 1)?;
            if last[0] != b'\n' {
                self.file.write_all(b"\n")?;
                self.size += 1;
            }
        }
        self.check_tail = false;
        Ok(())
    }

    /// `path` → `path.1`, then a fresh `path`.
    fn rotate(&mut self) -> Result<()> {
        let rotated = rotated_path(&self.path);
        match fs::rename(&self.path, &rotated) {
            Ok(()) => {}
            // Someone removed it: just start a new one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot rotate {} to {}",
                        self.path.display(),
                        rotated.display()
                    )
                })
            }
        }
        self.file = open_append(&self.path)?;
        self.check_tail = true;
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The entries at the front of `buf`: lines through their newline, and [`MAX_LINE`]-byte
/// pieces of longer lines. What remains after the last range is an incomplete line of at
/// most [`MAX_LINE`] bytes.
fn split_records(buf: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let window = &rest[..rest.len().min(MAX_LINE + 1)];
        let len = if let Some(i) = window.iter().position(|&b| b == b'\n') {
            i + 1
        } else if rest.len() > MAX_LINE {
            utf8_cut(rest, MAX_LINE)
        } else {
            return out;
        };
        out.push(start..start + len);
        start += len;
    }
}

/// Where to cut `b` (longer than `max`) at most `max` bytes in: `max`, or earlier so as
/// not to split a UTF-8 sequence that straddles it.
fn utf8_cut(b: &[u8], max: usize) -> usize {
    let is_cont = |x: u8| x & 0xC0 == 0x80;
    if !is_cont(b[max]) {
        return max;
    }
    let mut i = max - 1;
    while i > max - 3 && is_cont(b[i]) {
        i -= 1;
    }
    let seq = match b[i] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 0,
    };
    if i > 0 && i + seq > max {
        i
    } else {
        max
    }
}

/// The last `tail` entries (all with None) of the log at `path`, reading `<path>.1` first
/// then `path`. Malformed lines (e.g. a torn last line after a crash) are skipped, never
/// an error. Missing files = empty.
///
/// With a small `tail` the files are read backwards in blocks, only as far as needed.
/// Reading and then calling [`LogFollower::at_end`] can miss lines written in between;
/// use [`read_tail_then_follow`] to continue seamlessly.
pub fn read_tail(path: &Path, tail: Option<usize>) -> Result<Vec<LogEntry>> {
    Ok(read_tail_then_follow(path, tail)?.0)
}

/// [`read_tail`] plus a [`LogFollower`] positioned exactly where the tail ends (same file,
/// byte offset just past the last complete line read).
///
/// Guarantee: the returned entries followed by everything later [`LogFollower::poll`]
/// calls return are a contiguous run of the log, with no entry lost or repeated, as long
/// as the writer rotates at most twice between two polls (a third rotation deletes a
/// file nobody has read). A line incomplete at the time of the call (being written) is
/// not in the tail; the follower returns it once complete.
pub fn read_tail_then_follow(
    path: &Path,
    tail: Option<usize>,
) -> Result<(Vec<LogEntry>, LogFollower)> {
    let ctx = || format!("cannot read {}", path.display());
    let (cur, old) = open_pair(path).with_context(ctx)?;
    let want = tail.unwrap_or(usize::MAX);
    let mut newest_first = Vec::new();
    let mut follower = LogFollower {
        path: path.to_owned(),
        rotated: rotated_path(path),
        cur: None,
    };
    if let Some(f) = cur {
        let end = collect_tail(&f, want, &mut newest_first).with_context(ctx)?;
        follower.cur = Some(Cursor::new(f, end).with_context(ctx)?);
    }
    if let Some(f) = old {
        if newest_first.len() < want {
            collect_tail(&f, want, &mut newest_first).with_context(ctx)?;
        }
    }
    newest_first.reverse();
    Ok((newest_first, follower))
}

/// Opens the current file and its predecessor as a consistent pair: `(path, path.1)`,
/// where `path` was still at `path` after `path.1` was opened, so no rotation came
/// between. When only `path.1` exists (the instant between rename and create), it is
/// returned as the current file.
fn open_pair(path: &Path) -> io::Result<(Option<File>, Option<File>)> {
    let rotated = rotated_path(path);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cur = open_existing(path)?;
        let old = open_existing(&rotated)?;
        let cur_id = cur.as_ref().map(file_id).transpose()?;
        if stat_id(path)? != cur_id && attempt < OPEN_ATTEMPTS {
            continue;
        }
        let old_id = old.as_ref().map(file_id).transpose()?;
        return Ok(match (cur, old) {
            (None, old) => (old, None),
            (Some(cur), Some(_)) if old_id == cur_id => (Some(cur), None),
            pair => pair,
        });
    }
}

/// Pushes up to `want - out.len()` entries of `file` onto `out`, newest first; returns
/// the offset just past its last complete line (what follows is being written or torn).
fn collect_tail(file: &File, want: usize, out: &mut Vec<LogEntry>) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut segs = RevSegments::new(file, len);
    let unfinished = segs.next()?.map_or(0, |s| s.len());
    while out.len() < want {
        let Some(seg) = segs.next()? else { break };
        if let Some(e) = parse_entry(&seg) {
            out.push(e);
        }
    }
    Ok(len - unfinished as u64)
}

fn parse_entry(line: &[u8]) -> Option<LogEntry> {
    serde_json::from_slice(line).ok()
}

/// The newline-separated segments of `file[..end]`, last first (the first one returned
/// is what follows the last newline, possibly empty), read backwards in blocks.
struct RevSegments<'a> {
    file: &'a File,
    /// `file[..pos]` is not read yet.
    pos: u64,
    /// `file[pos..pos + buf.len()]`, not returned yet.
    buf: Vec<u8>,
    done: bool,
}

impl<'a> RevSegments<'a> {
    fn new(file: &'a File, end: u64) -> Self {
        RevSegments {
            file,
            pos: end,
            buf: Vec::new(),
            done: false,
        }
    }

    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(i) = self.buf.iter().rposition(|&b| b == b'\n') {
                let seg = self.buf.split_off(i + 1);
                self.buf.truncate(i);
                return Ok(Some(seg));
            }
            if self.pos == 0 {
                self.done = true;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let n = self.pos.min(BLOCK as u64);
            self.pos -= n;
            let mut block = vec![0u8; n as usize];
            self.file.read_exact_at(&mut block, self.pos)?;
            block.extend_from_slice(&self.buf);
            self.buf = block;
        }
    }
}

/// Follows a log file as it grows, surviving rotation.
///
/// It holds the file it reads open, so the rest of a rotated file is read even if it has
/// since been replaced at `<path>.1`. Lines of a file rotated out more than twice
/// between two polls are lost.
pub struct LogFollower {
    path: PathBuf,
    rotated: PathBuf,
    /// The file being read; `None` until `path` first exists.
    cur: Option<Cursor>,
}

impl LogFollower {
    /// Starts following at the current end of `path` (entries written after this call
    /// are returned by poll). A missing `path` is followed from its creation on.
    pub fn at_end(path: &Path) -> Result<Self> {
        Ok(read_tail_then_follow(path, Some(0))?.1)
    }

    /// Returns complete entries appended since the last call (a partially written last
    /// line is held back until complete). If the file was rotated (path now has a
    /// different inode, or is shorter than our offset), it finishes reading the rest of
    /// the old file (now `<path>.1`, identified by inode) and then continues from the
    /// start of the new file. Never blocks.
    ///
    /// Reads at most a few MiB per call; call again to catch up after a burst.
    pub fn poll(&mut self) -> Result<Vec<LogEntry>> {
        self.poll_io()
            .with_context(|| format!("cannot read {}", self.path.display()))
    }

    fn poll_io(&mut self) -> io::Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        let mut budget = POLL_BUDGET;
        // Each round drains one file; at most two rotations are recoverable, plus the
        // current file.
        for _ in 0..4 {
            // Look at `path` *before* draining the current file: a rotation seen here
            // came after the writer's last write to the current file, so draining it
            // afterwards gets all of it.
            let at_path = stat_id(&self.path)?;
            if let Some(cur) = &mut self.cur {
                if !cur.read(&mut budget, &mut out)? {
                    break;
                }
                if at_path.is_none() || at_path == Some(cur.id) {
                    break;
                }
            } else if at_path.is_none() {
                break;
            }
            if !self.advance()? {
                break;
            }
        }
        Ok(out)
    }

    /// Moves from the current file, rotated out and drained, to the one written after
    /// it. False when there is none yet.
    fn advance(&mut self) -> io::Result<bool> {
        let Some(next) = open_existing(&self.path)? else {
            return Ok(false);
        };
        let next_id = file_id(&next)?;
        // If the current file is gone from `path.1` too (rotated twice since we last
        // looked), the file now there came between it and `next`: read that first.
        let cur_id = self.cur.as_ref().map(|c| c.id);
        let replaced = match &self.cur {
            Some(c) => c.file.metadata()?.nlink() == 0,
            None => true,
        };
        if replaced {
            if let Some(mid) = open_existing(&self.rotated)? {
                let mid_id = file_id(&mid)?;
                if mid_id != next_id && Some(mid_id) != cur_id {
                    self.cur = Some(Cursor::new(mid, 0)?);
                    return Ok(true);
                }
            }
        }
        self.cur = Some(Cursor::new(next, 0)?);
        Ok(true)
    }
}

/// A read position in one open log file.
struct Cursor {
    file: File,
    id: FileId,
    /// Next byte to read.
    pos: u64,
    /// Bytes read after the last newline.
    partial: Vec<u8>,
    /// Discarding an over-long line up to its newline.
    skipping: bool,
}

impl Cursor {
    fn new(file: File, pos: u64) -> io::Result<Self> {
        Ok(Cursor {
            id: file_id(&file)?,
            file,
            pos,
            partial: Vec::new(),
            skipping: false,
        })
    }

    /// Reads on to EOF (within `budget` bytes), pushing complete entries onto `out`.
    /// True when EOF was reached.
    fn read(&mut self, budget: &mut u64, out: &mut Vec<LogEntry>) -> io::Result<bool> {
        if self.file.metadata()?.len() < self.pos {
            // Truncated in place: start over.
            self.pos = 0;
            self.partial.clear();
            self.skipping = false;
        }
        let mut block = vec![0u8; BLOCK];
        loop {
            if *budget == 0 {
                return Ok(false);
            }
            let want = (BLOCK as u64).min(*budget) as usize;
            let n = match self.file.read_at(&mut block[..want], self.pos) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pos += n as u64;
            *budget -= n as u64;
            self.feed(&block[..n], out);
        }
    }

    fn feed(&mut self, mut data: &[u8], out: &mut Vec<LogEntry>) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let line = &data[..i];
            data = &data[i + 1..];
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                out.extend(parse_entry(line));
            } else {
                self.partial.extend_from_slice(line);
                out.extend(parse_entry(&self.partial));
                self.partial.clear();
            }
        }
        if !self.skipping {
            self.partial.extend_from_slice(data);
            if self.partial.len() > MAX_RECORD {
                self.partial = Vec::new();
                self.skipping = true;
            }
        }
    }
}

/// A file's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> Self {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

fn file_id(f: &File) -> io::Result<FileId> {
    Ok(FileId::of(&f.metadata()?))
}

fn stat_id(path: &Path) -> io::Result<Option<FileId>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(FileId::of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(entries: &[LogEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.line.as_str()).collect()
    }

    /// A fixed-size line so entries have a fixed size.
    fn numbered(i: usize) -> String {
        format!("line {i:06}\n")
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("container.log");
        (d, p)
    }

    fn append_raw(path: &Path, data: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(data).unwrap();
    }

    #[test]
    fn splits_lines_across_writes_per_stream() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\npart").unwrap();
        w.write(Stream::Stdout, b"lo\nwor").unwrap();
        w.write(Stream::Stdout, b"ld\n\nx").unwrap();
        w.write(Stream::Stderr, b"ial\n").unwrap();
        let got = read_tail(&p, None).unwrap();
        let pairs: Vec<_> = got
            .iter()
            .map(|e| (e.stream.as_str(), e.line.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("stderr", "oops\n"),
                ("stdout", "hello\n"),
                ("stdout", "world\n"),
                ("stdout", "\n"),
                ("stderr", "partial\n"),
            ]
        );
        let t = chrono::DateTime::parse_from_rfc3339(&got[0].time).unwrap();
        assert_eq!(t.offset().local_minus_utc(), 0);
        assert!(got[0].time.ends_with('Z'), "{}", got[0].time);
        let frac = got[0].time.split('.').nth(1).unwrap();
        assert_eq!(frac.len(), "123456789Z".len(), "{}", got[0].time);
        // One JSON object per line, docker json-file style.
        let raw = fs::read_to_string(&p).unwrap();
        assert_eq!(raw.lines().count(), 5);
        assert!(raw.starts_with("{\"time\":"), "{raw}");
    }

    #[test]
    fn partial_line_is_written_on_flush_and_drop() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"no newline").unwrap();
        w.write(Stream::Stderr, b"err tail").unwrap();
        assert!(read_tail(&p, None).unwrap().is_empty());
        w.flush().unwrap();
        let got = read_tail(&p, None).unwrap();
        assert_eq!(lines(&got), ["no newline", "err tail"]);
        w.flush().unwrap();
        assert_eq!(read_tail(&p, None).unwrap().len(), 2);
        w.write(Stream::Stdout, b"dropped").unwrap();
        drop(w);
        assert_eq!(read_tail(&p, None).unwrap()[2].line, "dropped");
    }

    #[test]
    fn long_lines_are_capped_at_16k() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        // Arriving in small pieces: a full piece goes out once it is over the cap.
        for _ in 0..(MAX_LINE + 10) / 100 {
            w.write(Stream::Stdout, &[b'x'; 100]).unwrap();
        }
        w.write(Stream::Stdout, &[b'x'; (MAX_LINE + 10) % 100])
            .unwrap();
        assert_eq!(lines(&read_tail(&p, None).unwrap()), ["x".repeat(MAX_LINE)]);
        w.write(Stream::Stdout, b"\n").unwrap();
        // Exactly the cap plus its newline is one entry; one byte more is two, in one write.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        w.write(Stream::Stdout, &exact).unwrap();
        let mut over = vec![b'z'; 2 * MAX_LINE + 1];
        over.push(b'\n');
        w.write(Stream::Stdout, &over).unwrap();
        // A cut never splits a UTF-8 character.
        let mut utf = "a".repeat(MAX_LINE - 1).into_bytes();
        utf.extend_from_slice("é€\n".as_bytes());
        w.write(Stream::Stdout, &utf).unwrap();
        let got = read_tail(&p, None).unwrap();
        let want = [
            "x".repeat(MAX_LINE),
            format!("{}\n", "x".repeat(10)),
            format!("{}\n", "y".repeat(MAX_LINE)),
            "z".repeat(MAX_LINE),
            "z".repeat(MAX_LINE),
            "z\n".to_string(),
            "a".repeat(MAX_LINE - 1),
            "é€\n".to_string(),
        ];
        assert_eq!(lines(&got), want);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"ab\xffcd\n\xc3").unwrap();
        w.write(Stream::Stdout, b"\xa9\n").unwrap(); // é split across writes
        w.write(Stream::Stderr, b"\x00\x1b[31m\"q\"\\\n").unwrap();
        let got = read_tail(&p, None).unwrap();
        assert_eq!(
            lines(&got),
            ["ab\u{FFFD}cd\n", "é\n", "\u{0}\u{1b}[31m\"q\"\\\n"]
        );
    }

    #[test]
    fn rotation_keeps_two_files_and_tail_spans_both() {
        let (d, p) = setup();
        let max = 1000;
        let mut w = LogWriter::open(&p, max).unwrap();
        let n = 200;
        for i in 0..n {
            w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
        }
        let mut names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["container.log", "container.log.1"]);
        let old = fs::metadata(rotated_path(&p)).unwrap().len();
        let cur = fs::metadata(&p).unwrap().len();
        assert!(old <= max && old > max / 2, "{old}");
        assert!(cur <= max, "{cur}");
        let all = read_tail(&p, None).unwrap();
        let in_cur = fs::read_to_string(&p).unwrap().lines().count();
        assert!(all.len() > in_cur, "{} {in_cur}", all.len());
        let want: Vec<_> = (n - all.len()..n).map(numbered).collect();
        assert_eq!(lines(&all), want);
        // A tail reaching into the older file, and one within the current file.
        let t = read_tail(&p, Some(in_cur + 2)).unwrap();
        assert_eq!(lines(&t), want[want.len() - in_cur - 2..]);
        let t = read_tail(&p, Some(3)).unwrap();
        assert_eq!(lines(&t), want[want.len() - 3..]);
        assert!(read_tail(&p, Some(0)).unwrap().is_empty());
        assert_eq!(read_tail(&p, Some(100_000)).unwrap(), all);
        // Reopening appends to the current file and keeps rotating.
        drop(w);
        let mut w = LogWriter::open(&p, max).unwrap();
        w.write(Stream::Stderr, numbered(n).as_bytes()).unwrap();
        let t = read_tail(&p, Some(2)).unwrap();
        assert_eq!(lines(&t), [numbered(n - 1), numbered(n)]);
    }

    #[test]
    fn entry_larger_than_max_bytes_gets_a_file_of_its_own() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 100).unwrap();
        w.write(Stream::Stdout, b"a\n").unwrap();
        w.write(Stream::Stdout, format!("{}\n", "b".repeat(300)).as_bytes())
            .unwrap();
        w.write(Stream::Stdout, b"c\n").unwrap();
        let got = read_tail(&p, None).unwrap();
        assert_eq!(
            lines(&got),
            [format!("{}\n", "b".repeat(300)), "c\n".into()]
        );
    }

    #[test]
    fn missing_files_are_empty() {
        let (_d, p) = setup();
        assert!(read_tail(&p, None).unwrap().is_empty());
        assert!(read_tail(&p, Some(5)).unwrap().is_empty());
    }

    #[test]
    fn torn_and_malformed_lines_are_skipped() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"one\n").unwrap();
        drop(w);
        append_raw(&p, b"not json\n\n");
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"two\n").unwrap();
        drop(w);
        // A crash in the middle of an entry.
        append_raw(&p, b"{\"time\":\"2024-01-01T00:00:00.0Z\",\"stream\":\"std");
        assert_eq!(lines(&read_tail(&p, None).unwrap()), ["one\n", "two\n"]);
        assert_eq!(lines(&read_tail(&p, Some(1)).unwrap()), ["two\n"]);
        // The restarted writer terminates the torn line instead of gluing onto it.
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"three\n").unwrap();
        assert_eq!(
            lines(&read_tail(&p, None).unwrap()),
            ["one\n", "two\n", "three\n"]
        );
        // A torn end of the rotated file is skipped too.
        drop(w);
        fs::rename(&p, rotated_path(&p)).unwrap();
        append_raw(&rotated_path(&p), b"{\"torn");
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"four\n").unwrap();
        assert_eq!(
            lines(&read_tail(&p, None).unwrap()),
            ["one\n", "two\n", "three\n", "four\n"]
        );
    }

    #[test]
    fn tail_reads_backwards_across_blocks() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        // Control characters escape to 6 bytes each: entries far larger than a block,
        // mixed with small ones, so lines straddle block boundaries everywhere.
        let mut want = Vec::new();
        for i in 0..60 {
            let line = if i % 3 == 0 {
                format!("{}{i}\n", "\u{1}".repeat(MAX_LINE - 10))
            } else {
                format!("{}{i}\n", "s".repeat(i * 997 % 5000))
            };
            w.write(Stream::Stdout, line.as_bytes()).unwrap();
            want.push(line);
        }
        assert!(fs::metadata(&p).unwrap().len() > 10 * BLOCK as u64);
        assert_eq!(lines(&read_tail(&p, None).unwrap()), want);
        for n in [1, 2, 7, 59, 60] {
            assert_eq!(lines(&read_tail(&p, Some(n)).unwrap()), want[60 - n..]);
        }
    }

    #[test]
    fn follower_sees_appended_lines_and_holds_back_partial_ones() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"before\n").unwrap();
        let mut f = LogFollower::at_end(&p).unwrap();
        assert!(f.poll().unwrap().is_empty());
        w.write(Stream::Stdout, b"a\nb\n").unwrap();
        w.write(Stream::Stderr, b"c").unwrap();
        assert_eq!(lines(&f.poll().unwrap()), ["a\n", "b\n"]);
        assert!(f.poll().unwrap().is_empty());
        w.write(Stream::Stderr, b"\n").unwrap();
        assert_eq!(lines(&f.poll().unwrap()), ["c\n"]);
        // An entry the writer is halfway through.
        let entry = serde_json::to_string(&LogEntry {
            time: "2024-01-01T00:00:00.000000000Z".into(),
            stream: "stdout".into(),
            line: "raw\n".into(),
        })
        .unwrap();
        let (x, y) = entry.split_at(20);
        append_raw(&p, x.as_bytes());
        assert!(f.poll().unwrap().is_empty());
        // A tail taken now does not include it, and a follower from there gets it.
        let (t, mut g) = read_tail_then_follow(&p, Some(1)).unwrap();
        assert_eq!(lines(&t), ["c\n"]);
        append_raw(&p, format!("{y}\n").as_bytes());
        assert_eq!(lines(&f.poll().unwrap()), ["raw\n"]);
        assert_eq!(lines(&g.poll().unwrap()), ["raw\n"]);
    }

    #[test]
    fn follower_of_missing_file_starts_at_its_creation() {
        let (_d, p) = setup();
        let mut f = LogFollower::at_end(&p).unwrap();
        assert!(f.poll().unwrap().is_empty());
        let mut w = LogWriter::open(&p, 600).unwrap();
        for i in 0..10 {
            w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
        }
        // Created and already rotated before the first poll: nothing lost.
        assert!(rotated_path(&p).exists());
        let want: Vec<_> = (0..10).map(numbered).collect();
        assert_eq!(lines(&f.poll().unwrap()), want);
    }

    #[test]
    fn follower_across_rotations_loses_and_repeats_nothing() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 1000).unwrap();
        for i in 0..30 {
            w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
        }
        let (mut got, mut f) = read_tail_then_follow(&p, Some(4)).unwrap();
        let first = 26;
        // Gaps between polls of up to ~1.5 files' worth (up to two rotations).
        let gaps = [0, 1, 3, 13, 2, 20, 7, 0, 5, 19, 1, 11];
        let mut i = 30;
        for round in 0..60 {
            for _ in 0..gaps[round % gaps.len()] {
                w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
                i += 1;
            }
            got.extend(f.poll().unwrap());
        }
        let want: Vec<_> = (first..i).map(numbered).collect();
        assert_eq!(lines(&got), want);
        assert!(i > 300);
    }

    #[test]
    fn follower_recovers_a_file_rotated_through_between_polls() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 1000).unwrap();
        let mut f = LogFollower::at_end(&p).unwrap();
        w.write(Stream::Stdout, numbered(0).as_bytes()).unwrap();
        assert_eq!(f.poll().unwrap().len(), 1);
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let first = ino(&p);
        let mut i = 1;
        let mut rotations = 0;
        let mut last = first;
        while rotations < 2 || ino(&p) == last {
            w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
            i += 1;
            if ino(&p) != last {
                rotations += 1;
                last = ino(&p);
            }
            if rotations == 2 {
                w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
                i += 1;
                break;
            }
        }
        // The first file is gone, the second is `.1`, the third is `path`.
        assert_ne!(ino(&rotated_path(&p)), first);
        let want: Vec<_> = (1..i).map(numbered).collect();
        assert_eq!(lines(&f.poll().unwrap()), want);
        assert!(f.poll().unwrap().is_empty());
    }

    #[test]
    fn tail_then_follow_races_a_live_writer() {
        let (_d, p) = setup();
        let n = 20_000;
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut w = LogWriter::open(&p, 256 << 10).unwrap();
                for i in 0..n {
                    w.write(Stream::Stdout, numbered(i).as_bytes()).unwrap();
                    if i % 100 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
        };
        while read_tail(&p, Some(1)).unwrap().is_empty() {
            std::thread::yield_now();
        }
        let (mut got, mut f) = read_tail_then_follow(&p, Some(50)).unwrap();
        while !writer.is_finished() {
            got.extend(f.poll().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        writer.join().unwrap();
        got.extend(f.poll().unwrap());
        assert!(fs::metadata(rotated_path(&p)).is_ok());
        let first: usize = got[0].line[5..11].parse().unwrap();
        let want: Vec<_> = (first..n).map(numbered).collect();
        assert_eq!(lines(&got), want);
    }

    #[test]
    fn follower_restarts_a_file_truncated_in_place() {
        let (_d, p) = setup();
        let mut w = LogWriter::open(&p, 0).unwrap();
        let mut f = LogFollower::at_end(&p).unwrap();
        w.write(Stream::Stdout, b"a\nb\n").unwrap();
        assert_eq!(f.poll().unwrap().len(), 2);
        drop(w);
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.write(Stream::Stdout, b"c\n").unwrap();
        assert_eq!(lines(&f.poll().unwrap()), ["c\n"]);
    }
}
