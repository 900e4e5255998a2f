//! What the black-box tests share: the flowd binary they drive and the repository root.
//!
//! `CARGO_BIN_EXE_flowd` exists only for tests inside the flowd package, and cargo does
//! not build a dependency's binaries for another package, so [`flowd_bin`] asks cargo
//! itself for the binary, with this test's profile. Cargo rebuilds it when a source
//! changed and does nothing otherwise: a test never drives a binary older than the code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The root of the repository (the workspace), where `flows/` and `catalog/` are.
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The flowd binary to drive: `FLOWD_BIN` when set (to test a build made elsewhere, a
/// release build say), else `<target>/<profile>/flowd`, built first by
/// `cargo build -p flowd --bin flowd` in the profile and target directory this test
/// was built in (with flowd's default features). Built once per test process.
///
/// # Panics
/// When cargo cannot build the binary: every test that drives it would fail anyway, and
/// cargo's own errors (printed above) say why.
pub fn flowd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("FLOWD_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build(),
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

fn build() -> PathBuf {
    // A test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary is in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("the profile directory is in the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--package", "flowd", "--bin", "flowd", "--profile", profile])
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo could not build flowd ({status})");
    let bin = profile_dir.join(format!("flowd{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "cargo built flowd, but {} is not there", bin.display());
    bin
}
