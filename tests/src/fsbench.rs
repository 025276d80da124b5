//! `fsbench`: a small static C program that measures a filesystem the same way on the
//! host and inside a container (used by `scripts/bench-fs.sh`).
//!
//! - `fsbench seq DIR MIB`: writes `DIR/fsbench.seq` (1 MiB blocks, then fsync), drops
//!   the page cache where it may (so reads come from the filesystem's backend), reads it
//!   back, removes it. Prints `seq_write_mibs=` and `seq_read_mibs=`.
//! - `fsbench small DIR N`: creates N 64-byte files, stats each, deletes each. Prints
//!   `create_ops=`, `stat_ops=`, `delete_ops=` and `small_ops=` (all 3N operations over
//!   the total time), per second.
//!
//! One process does all the work, so the figures are the filesystem's, not process
//! start-up's (which dominates a shell loop under TCG).

use std::path::Path;

use anyhow::Result;

/// The program's source.
pub const FSBENCH_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "fsbench: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static void drop_caches(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "3\n", 2) < 0) { /* not allowed here: reads may be cached */ }
        close(fd);
    }
}

static int seq(const char *dir, long mib) {
    char path[4096];
    snprintf(path, sizeof path, "%s/fsbench.seq", dir);
    static char buf[1 << 20];
    memset(buf, 0xa5, sizeof buf);
    double t0 = now();
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) die("open", path);
    for (long i = 0; i < mib; i++)
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("write", path);
    if (fsync(fd) < 0) die("fsync", path);
    close(fd);
    double w = now() - t0;
    drop_caches();
    t0 = now();
    fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    long total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
    if (n < 0) die("read", path);
    close(fd);
    double r = now() - t0;
    unlink(path);
    if (total != mib << 20) { fprintf(stderr, "fsbench: short read\n"); return 1; }
    printf("seq_write_mibs=%.1f\nseq_read_mibs=%.1f\n", mib / w, mib / r);
    return 0;
}

static int small(const char *dir, long n) {
    char path[4096];
    char data[64];
    memset(data, 'x', sizeof data);
    snprintf(path, sizeof path, "%s/fsbench.small", dir);
    if (mkdir(path, 0755) < 0 && errno != EEXIST) die("mkdir", path);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/fsbench.small/f%ld", dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) die("create", path);
        if (write(fd, data, sizeof data) != (ssize_t)sizeof data) die("write", path);
        close(fd);
    }
    double t1 = now();
    struct stat st;
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/fsbench.small/f%ld", dir, i);
        if (stat(path, &st) < 0 || st.st_size != (off_t)sizeof data) die("stat", path);
    }
    double t2 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/fsbench.small/f%ld", dir, i);
        if (unlink(path) < 0) die("unlink", path);
    }
    double t3 = now();
    snprintf(path, sizeof path, "%s/fsbench.small", dir);
    rmdir(path);
    printf("create_ops=%.0f\nstat_ops=%.0f\ndelete_ops=%.0f\nsmall_ops=%.0f\n",
           n / (t1 - t0), n / (t2 - t1), n / (t3 - t2), 3 * n / (t3 - t0));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "seq") == 0) return seq(argv[2], atol(argv[3]));
    if (argc == 4 && strcmp(argv[1], "small") == 0) return small(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: fsbench seq DIR MIB | fsbench small DIR N\n");
    return 2;
}
"#;

/// Compiles [`FSBENCH_C`] into a static binary at `out` (needs `gcc` and `libc6-dev`).
pub fn build(out: &Path) -> Result<()> {
    crate::images::gcc_static("fsbench.c", FSBENCH_C, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("fsbench");
        build(&bin).unwrap();
        let work = d.path().join("w");
        std::fs::create_dir(&work).unwrap();
        let run = |args: &[&str]| {
            let o = std::process::Command::new(&bin)
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            String::from_utf8(o.stdout).unwrap()
        };
        let seq = run(&["seq", work.to_str().unwrap(), "4"]);
        assert!(
            seq.contains("seq_write_mibs=") && seq.contains("seq_read_mibs="),
            "{seq}"
        );
        let small = run(&["small", work.to_str().unwrap(), "50"]);
        assert!(small.contains("small_ops="), "{small}");
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "cleans up");
    }
}
