//! Resource usage for the `stats` call: CPU from cgroup2 `cpu.stat` (else /proc/stat),
//! memory from /proc/meminfo, and the number of tasks under init.

use std::collections::HashMap;

use apex_agent_proto::api::Stats;

/// Clock ticks per second of /proc/stat (USER_HZ; 100 on every Linux ABI we run on).
const USER_HZ: u64 = 100;

/// Gathers [`Stats`]; unreadable sources count as zero.
pub fn collect() -> Stats {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (total, available) = parse_meminfo(&meminfo);
    let cpu = std::fs::read_to_string("/sys/fs/cgroup/cpu.stat")
        .ok()
        .and_then(|s| parse_cpu_stat_usec(&s))
        .map(|usec| usec * 1000)
        .or_else(|| {
            std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_proc_stat_ticks(&s))
                .map(|t| t * (1_000_000_000 / USER_HZ))
        })
        .unwrap_or(0);
    Stats {
        cpu_usage_ns: cpu,
        memory_usage_bytes: total.saturating_sub(available),
        memory_limit_bytes: total,
        pids: descendants(std::process::id() as i32)
            .iter()
            .map(|(_, threads)| *threads)
            .sum(),
    }
}

/// `(MemTotal, MemAvailable)` in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// `usage_usec` from a cgroup2 `cpu.stat`.
pub fn parse_cpu_stat_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Busy ticks (user+nice+system+irq+softirq+steal) from the `cpu` line of /proc/stat.
pub fn parse_proc_stat_ticks(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// `(ppid, num_threads)` from the text of /proc/PID/stat.
pub fn parse_pid_stat(text: &str) -> Option<(i32, u64)> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest: state(3) ppid(4) ... num_threads(20) → indexes 0, 1, ..., 17
    Some((f.get(1)?.parse().ok()?, f.get(17)?.parse().ok()?))
}

/// Every process descended from `ancestor` (excluding itself), with its thread count.
pub fn descendants(ancestor: i32) -> Vec<(i32, u64)> {
    let mut info: HashMap<i32, (i32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(v) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_pid_stat(&s))
            {
                info.insert(pid, v);
            }
        }
    }
    let is_descendant = |mut pid: i32| {
        for _ in 0..4096 {
            match info.get(&pid) {
                Some((ppid, _)) if *ppid == ancestor => return true,
                Some((ppid, _)) if *ppid > 0 => pid = *ppid,
                _ => return false,
            }
        }
        false
    };
    info.iter()
        .filter(|(pid, _)| **pid != ancestor && is_descendant(**pid))
        .map(|(pid, (_, threads))| (*pid, *threads))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let mi = "MemTotal:        2000 kB\nMemFree:  10 kB\nMemAvailable:    500 kB\n";
        assert_eq!(parse_meminfo(mi), (2000 * 1024, 500 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
        assert_eq!(
            parse_cpu_stat_usec("usage_usec 1234\nuser_usec 1000\n"),
            Some(1234)
        );
        assert_eq!(
            parse_proc_stat_ticks("cpu  1 2 3 100 50 4 5 6 0 0\ncpu0 1 1 1 1 1 1 1 1\n"),
            Some(21)
        );
        let stat = "42 (a b) c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_pid_stat(stat), Some((7, 3)));
    }

    #[test]
    fn finds_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let d = descendants(me);
        assert!(d.iter().any(|(p, _)| *p == child.id() as i32), "{d:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(collect().memory_limit_bytes > 0);
    }
}
