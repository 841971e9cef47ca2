//! Figures a benchmark reports for `scripts/bench`: with
//! `HEADROOM_BENCH_JSON=FILE` set, each [`record`] appends one JSON line
//! (bench, figure, value, unit, baseline figure and value, ratio) to FILE.
//! Benchmarks still print their own tables; this is what runs compare.

use std::io::Write;

/// One measured figure and, when it has one, the baseline it is compared
/// with in the same run.
pub fn record(bench: &str, figure: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>) {
    let Some(path) = std::env::var_os("HEADROOM_BENCH_JSON") else {
        return;
    };
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let num = |v: f64| {
        if v.is_finite() {
            format!("{v}")
        } else {
            "null".to_string()
        }
    };
    let (baseline_name, baseline_value, ratio) = match baseline {
        Some((name, b)) => (
            format!("\"{}\"", esc(name)),
            num(b),
            num(if b != 0.0 { value / b } else { f64::NAN }),
        ),
        None => ("null".into(), "null".into(), "null".into()),
    };
    let line = format!(
        "{{\"bench\":\"{}\",\"figure\":\"{}\",\"value\":{},\"unit\":\"{}\",\"baseline\":{baseline_name},\"baseline_value\":{baseline_value},\"ratio\":{ratio}}}\n",
        esc(bench),
        esc(figure),
        num(value),
        esc(unit)
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "bench figures not recorded in {}: {e}",
            path.to_string_lossy()
        );
    }
}
