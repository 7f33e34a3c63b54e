//! Resolves buckets for a fixed number of connections of the benchmark workload: run under
//! `valgrind --tool=callgrind` for repeatable instruction counts when tuning.
//!
//! `cargo run --release -p syncgate-rules --example resolve_profile -- 10000`

#[path = "../benches/support/workload.rs"]
mod workload;

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rules = workload::compile_rules(workload::RESOLVE_RULES);
    let index = workload::membership_index(&rules);
    let requests = workload::connections();
    let start = std::time::Instant::now();
    let mut buckets = 0;
    for i in 0..count {
        buckets += workload::resolve(&rules, &requests[i % requests.len()], &index).len();
    }
    let elapsed = start.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / elapsed.as_secs_f64();
    println!("{count} resolutions, {buckets} buckets in {elapsed:?}: {rate:.0} resolutions/s");
}
