//! Where a bench section's CPU went: the server process, the bench process, and the rest of the machine
//! (on a quiet machine: the database server), from `/proc`, so a section can say whether it was bound by
//! the cores rather than by waiting.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// CPU time (user + system, all threads) of the process `pid` so far, from `/proc/<pid>/stat`.
pub(crate) fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in USER_HZ ticks,
    // which Linux fixes at 100 per second for everything it reports in /proc.
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks_to_duration(ticks))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// CPU time every core of the machine spent busy so far (everything but idle and I/O wait), from the
/// `cpu` line of `/proc/stat`.
fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(ticks_to_duration(busy_ticks(&stat)?))
}

/// The busy ticks of `/proc/stat`'s first line: user, nice, system, irq, softirq and steal (guest time is
/// already inside user).
fn busy_ticks(stat: &str) -> Result<u64> {
    let line = stat.lines().next().context("an empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat's cpu line")?;
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Ok(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// The cores of this machine.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A reading taken before a measured stretch.
pub(crate) struct CpuMark {
    at: Instant,
    machine: Duration,
    server: Duration,
    bench: Duration,
    server_pid: u32,
}

/// CPU used over a measured stretch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUse {
    pub wall: Duration,
    pub machine: Duration,
    pub server: Duration,
    pub bench: Duration,
}

impl CpuMark {
    pub(crate) fn now(server_pid: u32) -> Result<CpuMark> {
        Ok(CpuMark {
            at: Instant::now(),
            machine: machine_busy()?,
            server: process_cpu(server_pid)?,
            bench: process_cpu(std::process::id())?,
            server_pid,
        })
    }

    pub(crate) fn used(&self) -> Result<CpuUse> {
        Ok(CpuUse {
            wall: self.at.elapsed(),
            machine: machine_busy()?.saturating_sub(self.machine),
            server: process_cpu(self.server_pid)?.saturating_sub(self.server),
            bench: process_cpu(std::process::id())?.saturating_sub(self.bench),
        })
    }
}

impl CpuUse {
    /// Cores kept busy on average.
    pub(crate) fn busy_cores(&self) -> f64 {
        self.machine.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Machine CPU per operation, in microseconds, for `ops` operations.
    pub(crate) fn micros_per(&self, ops: f64) -> f64 {
        self.machine.as_secs_f64() * 1e6 / ops.max(1.0)
    }

    /// CPU of everything but the server and the bench (the database server, on a quiet machine).
    pub(crate) fn rest(&self) -> Duration {
        self.machine
            .saturating_sub(self.server)
            .saturating_sub(self.bench)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_and_io_wait() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 5 20 9000 300 1 2 3 0 0\ncpu0 50 2 10 4500 150 0 1 1 0 0\n";
        assert_eq!(busy_ticks(stat).unwrap(), 100 + 5 + 20 + 1 + 2 + 3);
    }

    #[test]
    fn spinning_shows_up_in_this_process_cpu_time() {
        // Spin until /proc shows at least 50 ms more CPU, however slowly a loaded machine gives it to us.
        let before = process_cpu(std::process::id()).unwrap();
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut spun = 0u64;
        while process_cpu(std::process::id()).unwrap() < before + Duration::from_millis(50) {
            assert!(
                Instant::now() < give_up,
                "20 s of spinning never showed as CPU time"
            );
            for _ in 0..100_000 {
                spun = std::hint::black_box(spun.wrapping_add(1));
            }
        }
        assert!(spun > 0);
    }
}
