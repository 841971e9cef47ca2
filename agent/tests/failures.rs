//! `headroom-agent` ends a failure of its input with one line naming what
//! failed and the value, and a non-zero exit: a missing or malformed
//! configuration file, a listen address in use. (An unreachable broker is
//! not a failure: records wait in memory, then in the spool.)

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headroom-agent"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("HEADROOM_LOG")
        .output()
        .unwrap()
}

fn one_line_failure(out: &Output, want: &[&str]) {
    headroom_testkit::assert_one_line_failure("headroom-agent", out, want);
}

#[test]
fn a_missing_or_malformed_configuration_file_is_named() {
    one_line_failure(
        &agent(&["--config", "/nonexistent/agent.toml"]),
        &["/nonexistent/agent.toml"],
    );
    let bad = scratch("agent.toml");
    std::fs::write(&bad, "[kafka]\nbrokers = 12\n").unwrap();
    one_line_failure(
        &agent(&["--config", bad.to_str().unwrap()]),
        &[bad.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(bad);
}

#[test]
fn a_listen_address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let spool = scratch("spool");
    one_line_failure(
        &agent(&[
            "--listen",
            &addr,
            "--spool-dir",
            spool.to_str().unwrap(),
            "--discovery",
            "false",
        ]),
        &[&addr],
    );
    let _ = std::fs::remove_dir_all(spool);
}

/// A path of this test's own under the temporary directory.
fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "headroom-agent-failures-{}-{name}",
        std::process::id()
    ))
}
