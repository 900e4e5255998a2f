//! How errors become messages and exit codes; the only place exit codes are chosen.

use std::fmt;

/// A problem with what the user asked for (bad flag value, unknown key, invalid file):
/// reported without a cause chain, exit code 1.
#[derive(Debug)]
pub struct UserError(String);

impl UserError {
    pub fn new(message: impl Into<String>) -> Self {
        UserError(message.into())
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// `flowd run` stopped because its store could not write (a full disk, a file size limit,
/// an I/O error). The database refuses further writes until it is reopened, and a new
/// process reopens it with everything that was made durable: exit code [`STORE_FAILED`]
/// tells a supervisor to restart it.
#[derive(Debug)]
pub struct StoreFailed(pub String);

/// EX_TEMPFAIL (sysexits.h): try again later, here once there is space.
pub const STORE_FAILED: i32 = 75;

impl fmt::Display for StoreFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the store cannot write ({}); stopped so that a restart (which reopens the store) recovers", self.0)
    }
}

impl std::error::Error for StoreFailed {}

/// Prints an error (with its causes) to stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<StoreFailed>().is_some() {
        // The log may be on the disk that is full: a failed write must not turn the exit
        // code into an abort (`eprintln!` panics when stderr cannot be written).
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "error: {err}");
        return STORE_FAILED;
    }
    if let Some(e) = err.downcast_ref::<std::io::Error>() {
        // `flowd catalog list | head` closes the pipe early: not an error.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return 0;
        }
    }
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    1
}
