//! `headroom-collector` ends a failure of its input or environment with
//! one line naming what failed and the value, and a non-zero exit: an
//! unreachable database, a missing trace file, a listen address in use.
//! (An unreachable broker or database at `serve` is not a failure: the
//! collector starts, reports NOT_SERVING and begins when they answer.)

use std::process::{Command, Output};

fn collector() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headroom-collector"));
    c.env_remove("RUST_LOG").env_remove("HEADROOM_LOG");
    c
}

fn one_line_failure(out: &Output, want: &[&str]) {
    headroom_testkit::assert_one_line_failure("headroom-collector", out, want);
}

#[test]
fn an_unreachable_database_is_named() {
    let out = collector()
        .args(["admin", "storage"])
        .env(
            "HEADROOM_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/headroom",
        )
        .output()
        .unwrap();
    one_line_failure(&out, &["connecting to the database"]);
}

#[test]
fn a_missing_trace_file_is_named() {
    let out = collector()
        .args([
            "import",
            "alibaba",
            "--meta",
            "/nonexistent/container_meta.csv",
            "--usage",
            "/nonexistent/container_usage.csv",
        ])
        .env(
            "HEADROOM_DATABASE_URL",
            std::env::var("HEADROOM_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        )
        .output()
        .unwrap();
    one_line_failure(&out, &["cannot read /nonexistent/container_meta.csv"]);
}

#[test]
fn a_listen_address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = collector()
        .args(["--listen", &addr, "--no-ingest"])
        .env(
            "HEADROOM_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/headroom",
        )
        .output()
        .unwrap();
    one_line_failure(&out, &[&addr]);
}
