//! `headroom-allocator`'s commands end a failure with one line naming
//! what failed and the value, and a non-zero exit: an unreachable
//! allocator (every client command, the report page too), a listen
//! address in use. (Unreachable upstreams at `serve` are not a failure:
//! the allocator connects on first use and answers UNAVAILABLE meanwhile.)

use std::process::{Command, Output};

fn allocator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headroom-allocator"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("HEADROOM_LOG")
        .output()
        .unwrap()
}

fn one_line_failure(out: &Output, want: &[&str]) {
    headroom_testkit::assert_one_line_failure("headroom-allocator", out, want);
}

#[test]
fn an_unreachable_allocator_is_named_by_every_command() {
    let nobody = "http://127.0.0.1:1";
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("r.html");
    for args in [
        vec!["recommend", "--services", "api"],
        vec!["plan", "--services", "api"],
        vec!["backtest", "--split", "2026-11-28T00:00:00Z"],
        vec!["place", "--services", "api", "--node", "a=4,8589934592"],
        vec![
            "report",
            "--services",
            "api",
            "--html",
            page.to_str().unwrap(),
        ],
    ] {
        let mut all = args.clone();
        all.extend(["--allocator", nobody]);
        one_line_failure(
            &allocator(&all),
            &["cannot reach the allocator at http://127.0.0.1:1"],
        );
    }
    assert!(!page.exists(), "no page written");
}

#[test]
fn a_listen_address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    one_line_failure(&allocator(&["--listen", &addr]), &[&addr]);
}
