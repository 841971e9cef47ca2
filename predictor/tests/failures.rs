//! `headroom-predictor` ends a failure of its environment or input with a
//! short message naming what failed and what to do, and a non-zero exit:
//! no ONNX Runtime (at most 3 lines, never a panic), a library that is not
//! one, a corrupt model.

use std::process::{Command, Output};

fn predictor() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headroom-predictor"));
    c.args(["--listen", "127.0.0.1:0", "--watch-every", "0s"])
        .env_remove("RUST_LOG")
        .env_remove("HEADROOM_LOG");
    c
}

/// Exit non-zero; stderr of at most `lines` lines, no panic, naming `want`.
fn short_failure(out: &Output, lines: usize, want: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "exit {:?}: {err}", out.status);
    assert!(
        (1..=lines).contains(&err.lines().count()),
        "at most {lines} lines: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} in {err}");
    }
    err
}

#[test]
fn without_onnx_runtime_it_says_where_to_get_it_in_at_most_three_lines() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing to find: no variable, no library on the loader's path.
    let out = predictor()
        .env_remove("ORT_DYLIB_PATH")
        .env("LD_LIBRARY_PATH", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    short_failure(
        &out,
        3,
        &[
            "headroom-predictor: ",
            "libonnxruntime.so",
            "ORT_DYLIB_PATH",
            "scripts/stack up",
        ],
    );

    let missing = dir.path().join("nowhere/libonnxruntime.so");
    let out = predictor()
        .env("ORT_DYLIB_PATH", &missing)
        .output()
        .unwrap();
    short_failure(&out, 1, &[&missing.display().to_string(), "ORT_DYLIB_PATH"]);

    // A file that is not a library.
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared object").unwrap();
    let out = predictor().env("ORT_DYLIB_PATH", &fake).output().unwrap();
    short_failure(
        &out,
        1,
        &[&fake.display().to_string(), "cannot load", "ORT_DYLIB_PATH"],
    );
}

#[test]
fn a_corrupt_model_is_refused_with_its_file_named() {
    let Ok(dylib) = std::env::var("ORT_DYLIB_PATH") else {
        panic!("ORT_DYLIB_PATH is not set: run `scripts/stack up` and source .stack/env");
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, b"\x08\x07garbage that is no ONNX graph").unwrap();
    let out = predictor()
        .env("ORT_DYLIB_PATH", dylib)
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    short_failure(&out, 3, &[&model.display().to_string()]);
}
