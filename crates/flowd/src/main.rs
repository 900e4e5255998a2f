//! flowd: parse the command line, load the catalog, dispatch, map errors to exit codes.

mod cli;
mod cmd;
mod exit;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use std::io::Write;

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(err) => exit::report(&err),
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match &cli.command {
        Command::Catalog(command) => {
            let catalog = load_catalog(&cli)?;
            cmd::catalog::run(&catalog, command, &mut out)?;
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "flowd", &mut out);
        }
    }
    out.flush()?;
    Ok(())
}

/// The built-in catalog, plus the user's extension files when `--catalog-dir` is given.
fn load_catalog(cli: &Cli) -> anyhow::Result<catalog::Catalog> {
    let catalog = match &cli.catalog_dir {
        Some(dir) => catalog::Catalog::with_extensions(dir),
        None => catalog::Catalog::builtin(),
    };
    catalog.map_err(|e| exit::UserError::new(e.to_string()).into())
}
