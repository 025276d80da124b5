//! Minimal writer for the `newc` ("SVR4 no CRC", magic `070701`) cpio format, the
//! format the Linux kernel unpacks as an initramfs.
//!
//! Written by hand rather than with a crate because the format is ~40 lines (a fixed
//! 110-byte ASCII-hex header, NUL-terminated name, 4-byte padding) and doing it here
//! gives byte-for-byte reproducible archives (mtime 0, uid/gid 0, sequential inodes),
//! which the initramfs cache relies on, while streaming file data without buffering.

use std::io::{self, Read, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;
const TRAILER: &str = "TRAILER!!!";

/// Streams a newc cpio archive to `W`. Paths are written without a leading `/`.
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> NewcWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            offset: 0,
        }
    }

    /// Adds a directory (`perm` are the permission bits, e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.header(&Header {
            name: path,
            mode: S_IFDIR | perm,
            nlink: 2,
            size: 0,
            rdev: (0, 0),
        })
    }

    /// Adds a regular file with in-memory contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.file_from_reader(path, perm, data.len() as u64, &mut &data[..])
    }

    /// Adds a regular file of exactly `len` bytes read from `data`.
    pub fn file_from_reader(
        &mut self,
        path: &str,
        perm: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size = u32::try_from(len)
            .map_err(|_| io::Error::other(format!("{path}: too large for newc (>4 GiB)")))?;
        self.header(&Header {
            name: path,
            mode: S_IFREG | perm,
            nlink: 1,
            size,
            rdev: (0, 0),
        })?;
        let copied = io::copy(&mut data.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {len} bytes, got {copied}"),
            ));
        }
        self.offset += len;
        self.pad()
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(&Header {
            name: path,
            mode: S_IFCHR | perm,
            nlink: 1,
            size: 0,
            rdev: (major, minor),
        })
    }

    /// Adds a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.header(&Header {
            name: path,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            size: target.len() as u32,
            rdev: (0, 0),
        })?;
        self.out.write_all(target.as_bytes())?;
        self.offset += target.len() as u64;
        self.pad()
    }

    /// Writes the trailer, pads to a 512-byte boundary and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.header(&Header {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        })?;
        let rem = (self.offset % 512) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 512][..512 - rem])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let name = h.name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::other(format!("invalid cpio path {:?}", h.name)));
        }
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check.
        let hdr = format!(
            "070701{ino:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            h.mode,
            0,
            0,
            h.nlink,
            0,
            h.size,
            0,
            0,
            h.rdev.0,
            h.rdev.1,
            name.len() + 1,
            0
        );
        debug_assert_eq!(hdr.len(), 110);
        self.out.write_all(hdr.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.offset += 110 + name.len() as u64 + 1;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.offset % 4) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 4][..4 - rem])?;
            self.offset += (4 - rem) as u64;
        }
        Ok(())
    }
}

/// One parsed archive entry (used by tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive (no leading `/`).
    pub name: String,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// `(major, minor)` for device nodes.
    pub rdev: (u32, u32),
    /// File contents (or symlink target).
    pub data: Vec<u8>,
}

/// Parses a newc archive (up to the trailer).
pub fn parse(mut buf: &[u8]) -> io::Result<Vec<Entry>> {
    fn bad(msg: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
    }
    fn field(hdr: &[u8], i: usize) -> io::Result<u32> {
        let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8]).map_err(|_| bad("non-ascii"))?;
        u32::from_str_radix(s, 16).map_err(|_| bad("bad hex field"))
    }
    let total = buf.len();
    let mut entries = Vec::new();
    loop {
        if buf.len() < 110 || &buf[..6] != b"070701" {
            return Err(bad("bad newc header"));
        }
        let (mode, size, namesize) = (field(buf, 1)?, field(buf, 6)? as usize, field(buf, 11)?);
        let rdev = (field(buf, 9)?, field(buf, 10)?);
        let name_end = 110 + namesize as usize;
        if namesize == 0 || buf.len() < name_end {
            return Err(bad("truncated name"));
        }
        let name = String::from_utf8(buf[110..name_end - 1].to_vec()).map_err(|_| bad("name"))?;
        let consumed = total - buf.len();
        let data_start = name_end + (4 - (consumed + name_end) % 4) % 4;
        if buf.len() < data_start + size {
            return Err(bad("truncated data"));
        }
        if name == TRAILER {
            return Ok(entries);
        }
        let data = buf[data_start..data_start + size].to_vec();
        let next = data_start + size + (4 - (consumed + data_start + size) % 4) % 4;
        entries.push(Entry {
            name,
            mode,
            rdev,
            data,
        });
        buf = &buf[next.min(buf.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = NewcWriter::new(Vec::new());
        w.dir("/proc", 0o755).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("a/odd-length-name", 0o644, b"12345").unwrap();
        w.file("empty", 0o600, b"").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn roundtrip() {
        let buf = sample();
        assert_eq!(buf.len() % 512, 0);
        let e = parse(&buf).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "proc",
                "init",
                "a/odd-length-name",
                "empty",
                "dev/console",
                "bin/sh"
            ]
        );
        assert_eq!(e[0].mode, 0o040_755);
        assert_eq!(e[1].mode, 0o100_755);
        assert_eq!(e[1].data, b"#!/bin/sh\n");
        assert_eq!(e[2].data, b"12345");
        assert_eq!(e[4].rdev, (5, 1));
        assert_eq!(e[5].mode, 0o120_777);
        assert_eq!(e[5].data, b"busybox");
    }

    #[test]
    fn deterministic() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn short_reader_is_an_error() {
        let mut w = NewcWriter::new(Vec::new());
        let err = w
            .file_from_reader("f", 0o644, 10, &mut &b"abc"[..])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Cross-check with GNU cpio when it is installed.
    #[test]
    fn gnu_cpio_lists_it() {
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio not installed; skipping");
            return;
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<_> = listing.lines().collect();
        assert_eq!(lines.len(), 6, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" proc"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("-rwxr-xr-x") && lines[1].ends_with(" init"),
            "{listing}"
        );
        assert!(lines[2].contains(" 5 ") && lines[2].ends_with("a/odd-length-name"));
        assert!(
            lines[4].starts_with("crw-------") && lines[4].contains("5,"),
            "{listing}"
        );
        assert!(lines[5].ends_with("bin/sh -> busybox"), "{listing}");
    }
}
