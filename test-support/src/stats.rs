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
}
