//! What the black-box tests share: the flowd binary they drive and the repository root.
//! Each test file is its own crate (`mod support;`) and uses a part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The root of the repository (the workspace), where `flows/` and `catalog/` are.
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The flowd binary to drive: `FLOWD_BIN` when set (to test a build made elsewhere, a
/// release build say), else the one cargo built for these tests.
pub fn flowd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("FLOWD_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from(env!("CARGO_BIN_EXE_flowd")),
    })
}

/// Runs `flowd args` in `dir`, without the variables that would change which config or
/// catalog it reads (`FLOWD_CONFIG`, `FLOWD_CATALOG_DIR`).
///
/// # Panics
/// When the binary cannot be started.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(flowd_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FLOWD_CONFIG")
        .env_remove("FLOWD_CATALOG_DIR")
        .output()
        .expect("flowd runs")
}

/// What a run printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The database the PostgreSQL tests use (`FLOWD_TEST_POSTGRES`); `None`, said on stderr,
/// when it is not set, except under `CI=true`, where a missing database fails the test.
pub fn pg_url() -> Option<String> {
    match std::env::var("FLOWD_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and FLOWD_TEST_POSTGRES is not set: this test needs a PostgreSQL database")
        }
        _ => {
            eprintln!("not run: needs FLOWD_TEST_POSTGRES=postgres://… (README: `.ci/with-postgres cargo test`)");
            None
        }
    }
}

/// A port nothing listens on now, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
