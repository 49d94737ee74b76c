//! What the bench reads off this machine and off the server process (Linux `/proc`).

use serde::{Deserialize, Serialize};

/// The machine a report was made on.
#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_kib: u64,
    pub open_files_soft: u64,
    pub open_files_hard: u64,
}

fn rlimit_nofile() -> (u64, u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if get_rlimit(&mut limit) {
        (limit.rlim_cur, limit.rlim_max)
    } else {
        (0, 0)
    }
}

#[allow(unsafe_code)]
fn get_rlimit(limit: &mut libc::rlimit) -> bool {
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit) == 0 }
}

#[allow(unsafe_code)]
fn set_rlimit(limit: &libc::rlimit) -> bool {
    // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) == 0 }
}

/// Raises the open-file soft limit to the hard limit (each connection is a file).
pub fn raise_open_files() {
    let (_, hard) = rlimit_nofile();
    set_rlimit(&libc::rlimit { rlim_cur: hard, rlim_max: hard });
}

impl Machine {
    pub fn read() -> Self {
        let (open_files_soft, open_files_hard) = rlimit_nofile();
        let memory_kib =
            std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| field_kib(&text, "MemTotal:")).unwrap_or(0);
        Self { cores: online_cores(), memory_kib, open_files_soft, open_files_hard }
    }
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server processes (one per node) observed through `/proc/<pid>`, summed.
#[derive(Debug, Clone)]
pub struct ServerProcess {
    pids: Vec<u32>,
}

/// One observation of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kib: u64,
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
}

impl ServerProcess {
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// Memory and CPU time, summed over the processes.
    pub fn sample(&self) -> anyhow::Result<Sample> {
        let mut sum = Sample::default();
        for pid in &self.pids {
            let one = sample_one(*pid)?;
            sum.rss_kib += one.rss_kib;
            sum.cpu_secs += one.cpu_secs;
        }
        Ok(sum)
    }
}

fn sample_one(pid: u32) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = field_kib(&status, "VmRSS:").unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: the 12th and 13th after the name.
    let ticks: u64 = [11usize, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    Ok(Sample { rss_kib, cpu_secs: ticks as f64 / clock_ticks() })
}

/// Cores of the machine, not of this process's CPU affinity (the bench is usually pinned).
#[allow(unsafe_code)]
fn online_cores() -> usize {
    // SAFETY: sysconf reads a constant of the running system.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
