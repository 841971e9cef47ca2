//! The `headroom-train` binary: simulate into PostgreSQL, train from it,
//! inspect the model; bad sources end with a one-line reason, a non-zero
//! exit, and the existing model untouched.

use std::process::Command;

use headroom_testkit as kit;

fn train_cmd(db_url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headroom-train"));
    c.env("HEADROOM_DATABASE_URL", db_url)
        .env_remove("RUST_LOG");
    c
}

fn assert_one_line_failure(out: &std::process::Output, expect: &str) {
    assert!(!out.status.success(), "exit {:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line of reason, got: {err}");
    assert!(
        lines[0].starts_with("headroom-train: ") && lines[0].contains(expect),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_train_inspect_and_refuse_bad_sources() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, b"the previous model")?;

    // An empty database: no schema, no samples.
    let out = train_cmd(&db.url)
        .args(["train", "--quiet", "--out"])
        .arg(&model)
        .output()?;
    assert_one_line_failure(&out, "no samples to train on in the database");
    assert_eq!(std::fs::read(&model)?, b"the previous model");

    // An unreadable CSV.
    let out = train_cmd(&db.url)
        .args([
            "train",
            "--quiet",
            "--csv",
            "/nonexistent/dump.csv",
            "--out",
        ])
        .arg(&model)
        .output()?;
    assert_one_line_failure(&out, "cannot read CSV /nonexistent/dump.csv");
    // A CSV that is not a dump.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,b\n1,2\n")?;
    let out = train_cmd(&db.url)
        .args(["train", "--quiet", "--csv"])
        .arg(&bad)
        .arg("--out")
        .arg(&model)
        .output()?;
    assert_one_line_failure(&out, "no \"task_id\" column");
    assert_eq!(std::fs::read(&model)?, b"the previous model");

    // Simulate into the database, then train from it.
    let out = train_cmd(&db.url)
        .args([
            "simulate",
            "--services",
            "4",
            "--tasks",
            "12",
            "--interval",
            "30s",
            "--min-duration",
            "4m",
            "--max-duration",
            "8m",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = train_cmd(&db.url)
        .args([
            "train",
            "--quiet",
            "--epochs",
            "3",
            "--model-version",
            "bin-1",
            "--out",
        ])
        .arg(&model)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("bucket percentile") && table.contains("historical max"),
        "{table}"
    );
    for f in ["report.json", "loss.png", "model.ckpt"] {
        assert!(
            dir.path().join(f).exists(),
            "{f} is written beside the model"
        );
    }
    let out = train_cmd(&db.url).arg("inspect").arg(&model).output()?;
    assert!(out.status.success());
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(spec["version"], "bin-1");
    assert_eq!(spec["services"].as_array().map(Vec::len), Some(4));
    // A reader that leaves early (`inspect | head -1`) ends it quietly:
    // the pipe is closed before the model is even read.
    let mut child = train_cmd(&db.url)
        .arg("inspect")
        .arg(&model)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An output directory that does not exist is refused before any sample
/// is read (here the database is not even reachable).
#[test]
fn a_missing_output_directory_is_named_before_training() {
    let out = train_cmd("postgres://postgres@127.0.0.1:1/headroom")
        .args([
            "train",
            "--quiet",
            "--out",
            "/nonexistent-dir/sub/model.onnx",
        ])
        .output()
        .unwrap();
    assert_one_line_failure(&out, "the directory /nonexistent-dir/sub does not exist");
}

/// An unreachable database ends training with one line naming it.
#[test]
fn an_unreachable_database_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_cmd("postgres://postgres@127.0.0.1:1/headroom")
        .args(["train", "--quiet", "--out"])
        .arg(dir.path().join("model.onnx"))
        .output()
        .unwrap();
    assert_one_line_failure(
        &out,
        "cannot connect to the database at postgres://postgres@127.0.0.1:1/headroom",
    );
}
