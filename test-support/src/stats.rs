//! Small helpers for the benchmarks' latency figures.

use std::time::Duration;

/// The `p` quantile (0.0–1.0) of `sorted` (ascending, not empty), by the nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// The environment variable `name` parsed as a `T` (a benchmark's knob), or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `d` in milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat` (`"self"` for this
/// process); `None` where procfs is missing or the process is gone.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=5).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(3));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(5));
        assert!((ms(Duration::from_micros(2500)) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn cpu_time_grows_while_this_process_works() {
        let before = cpu_time("self").expect("procfs");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time("self").expect("procfs") <= before {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            assert!(started.elapsed() < Duration::from_secs(60), "no CPU time counted");
        }
        assert_eq!(cpu_time("no-such-process"), None);
    }
}
