//! Evaluates a fixed number of rows of the benchmark workload once: run under
//! `valgrind --tool=callgrind` for repeatable instruction counts when tuning.
//!
//! `cargo run --release -p syncgate-rules --example eval_profile -- 20000`

#[path = "../benches/support/workload.rs"]
mod workload;

use syncgate_rules::{RowEvaluation, SqliteValue};

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rules = workload::compile_rules(workload::ROW_RULES);
    let plan = rules.plan_table(&workload::items_table());
    let data: Vec<Vec<SqliteValue>> = (0..1024).map(workload::item_row).collect();
    let mut out = RowEvaluation::default();
    let mut placed = 0usize;
    let start = std::time::Instant::now();
    for i in 0..rows {
        out.clear();
        rules.evaluate_row(&plan, &data[i % data.len()], &mut out);
        placed += out.len();
    }
    let elapsed = start.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let rate = rows as f64 / elapsed.as_secs_f64();
    println!("{rows} rows, {placed} placements in {elapsed:?}: {rate:.0} rows/s");
}
