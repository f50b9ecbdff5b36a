//! What every benchmark here shares: one warm-up, then timed repeats, and
//! one JSON line with the median, the minimum and the peak memory.

use std::time::Instant;

/// Runs `step` once to warm up (lazy initialisation, kernel compilation,
/// autotuning), then `repeats` times; returns each timed run's output and
/// the sorted seconds.
pub fn time_repeats<T>(repeats: usize, mut step: impl FnMut() -> T) -> (Vec<T>, Vec<f64>) {
    step();
    let mut outputs = Vec::with_capacity(repeats);
    let mut seconds: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            outputs.push(step());
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    (outputs, seconds)
}

/// Prints `fields` plus the timing figures of sorted `seconds` and this
/// process's peak memory as one JSON line.
pub fn report(mut fields: serde_json::Value, seconds: &[f64]) {
    fields["seconds_per_step"] = seconds[seconds.len() / 2].into();
    fields["min_seconds"] = seconds[0].into();
    fields["all_seconds"] = seconds.into();
    fields["peak_rss_mib"] = peak_rss_mib().into();
    println!("{fields}");
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
