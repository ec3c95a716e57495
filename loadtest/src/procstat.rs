//! Process figures: the server's CPU time and RSS (with its anonymous and
//! file-backed parts) from /proc/PID, the harness's own CPU time from
//! getrusage, and the open-file limit.

use anyhow::{Context, Result};
use serde::Serialize;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// utime + stime, nanoseconds.
    pub cpu_ns: u64,
    /// VmRSS, KiB.
    pub rss_kb: u64,
    /// RssAnon, KiB: the heap and stacks. Unlike VmRSS it leaves out the
    /// binary's code pages, which a run faults in as it reaches new code.
    pub anon_kb: u64,
    /// RssFile, KiB: file-backed pages (the binary, shared libraries).
    pub file_kb: u64,
}

/// The sum of two samples (of two processes).
impl std::ops::Add for ProcSample {
    type Output = ProcSample;

    fn add(self, o: ProcSample) -> ProcSample {
        ProcSample {
            cpu_ns: self.cpu_ns + o.cpu_ns,
            rss_kb: self.rss_kb + o.rss_kb,
            anon_kb: self.anon_kb + o.anon_kb,
            file_kb: self.file_kb + o.file_kb,
        }
    }
}

/// Samples `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Then state is field 3, utime 14, stime 15.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()
            .context("bad /proc/PID/stat field")
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu_ns: cpu_ticks * 1_000_000_000 / hz,
        rss_kb: status_kb(&status, "VmRSS:").context("no VmRSS in /proc/PID/status")?,
        // Linux 4.5 and later; 0 on older kernels.
        anon_kb: status_kb(&status, "RssAnon:").unwrap_or(0),
        file_kb: status_kb(&status, "RssFile:").unwrap_or(0),
    })
}

/// A `Name:   123 kB` figure of /proc/PID/status, KiB.
fn status_kb(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system) of this process so far, nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// This process's RSS in KiB (0 when unavailable).
pub fn self_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_kb(&s, "VmRSS:"))
        .unwrap_or(0)
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(lim.rlim_cur as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_self() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0);
        assert!(s.anon_kb > 0 && s.file_kb > 0);
        assert!(s.anon_kb + s.file_kb <= s.rss_kb, "{s:?}");
        assert!(self_cpu_ns() > 0);
        assert!(self_rss_kb() > 0);
        assert!(sample(u32::MAX).is_err());
    }

    #[test]
    fn reads_status_figures() {
        let status = "Name:\tmles\nVmRSS:\t   33280 kB\nRssAnon:\t   21504 kB\n\
                      RssFile:\t   11776 kB\nRssShmem:\t       0 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(33280));
        assert_eq!(status_kb(status, "RssAnon:"), Some(21504));
        assert_eq!(status_kb(status, "RssFile:"), Some(11776));
        assert_eq!(status_kb(status, "VmSwap:"), None);
        let a = ProcSample {
            cpu_ns: 1,
            rss_kb: 2,
            anon_kb: 3,
            file_kb: 4,
        };
        let s = a + a;
        assert_eq!((s.cpu_ns, s.rss_kb, s.anon_kb, s.file_kb), (2, 4, 6, 8));
    }
}
