//! How errors become messages and exit codes; the only place exit codes are chosen.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | a runtime failure: runs, checks or requests that failed, a store that cannot be opened |
//! | 2 | bad input: a bad argument (clap), config file, flow file, item file, or an unknown name or run id |
//! | 75 | `flowd run` stopped because its store cannot write ([`STORE_FAILED`]) |
//!
//! A script can tell "fix what you gave me" (2) from "try again or look at the runs" (1).

use std::fmt;

/// Exit code of a runtime failure.
pub const FAILURE: i32 = 1;

/// Exit code of bad input; clap exits with the same code for a bad argument.
pub const BAD_INPUT: i32 = 2;

/// A problem with what the user gave (a bad flag value, an unknown name or run id, an
/// invalid config or flow file): reported without a cause chain, exit code [`BAD_INPUT`].
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

/// A command ran and reports that something failed (runs that did not succeed, accounts
/// that need attention, flows over their request budget): the message says it all, so it
/// is reported without a cause chain, exit code [`FAILURE`].
#[derive(Debug)]
pub struct Failed(String);

impl Failed {
    pub fn new(message: impl Into<String>) -> Self {
        Failed(message.into())
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

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

/// The exit code an error stands for.
pub fn code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<StoreFailed>().is_some() {
        STORE_FAILED
    } else if err.downcast_ref::<UserError>().is_some() || err.downcast_ref::<crate::config::ConfigError>().is_some() {
        BAD_INPUT
    } else {
        FAILURE
    }
}

/// Prints an error (with its causes) to stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    let code = code(err);
    if code == STORE_FAILED {
        // The log may be on the disk that is full: a failed write must not turn the exit
        // code into an abort (`eprintln!` panics when stderr cannot be written).
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "error: {err}");
        return code;
    }
    if let Some(e) = err.downcast_ref::<std::io::Error>() {
        // `flowd catalog list | head` closes the pipe early: not an error.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return 0;
        }
    }
    eprintln!("error: {err}");
    // Bad input and reported failures say everything in their message.
    if code != BAD_INPUT && err.downcast_ref::<Failed>().is_none() {
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_of_error_has_its_code() {
        assert_eq!(code(&UserError::new("unknown run").into()), BAD_INPUT);
        let config = crate::config::ConfigError::Invalid { path: "flowd.yaml".into(), message: "bad".into() };
        assert_eq!(code(&anyhow::Error::from(config).context("loading the config")), BAD_INPUT);
        assert_eq!(code(&Failed::new("2 runs failed").into()), FAILURE);
        assert_eq!(code(&anyhow::anyhow!("connection refused")), FAILURE);
        assert_eq!(code(&StoreFailed("disk full".into()).into()), STORE_FAILED);
    }
}
