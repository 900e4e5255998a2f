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

/// Prints an error (with its causes) to stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
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
