//! `flowd validate [PATH...]`: every problem in every file, compiler-style.

use crate::cli::ValidateArgs;
use crate::config::Config;
use crate::exit::UserError;
use crate::flows;
use catalog::Catalog;
use std::io::Write;
use std::path::PathBuf;

/// `config` is the one `--config` names, if any.
pub fn run(catalog: &Catalog, config: Option<&Config>, args: &ValidateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (paths, accounts) = match config {
        Some(config) => {
            let paths = if args.paths.is_empty() { vec![config.flows.clone()] } else { args.paths.clone() };
            (paths, config.accounts.keys().cloned().collect())
        }
        None => (if args.paths.is_empty() { vec![PathBuf::from("flows")] } else { args.paths.clone() }, Vec::new()),
    };
    let files = flows::discover(&paths).map_err(UserError::new)?;
    if files.is_empty() {
        return Err(UserError::new(format!(
            "no flow files (*.yaml) in {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    let loaded = flows::load_files(&files, catalog, &flows::compile_env(accounts));
    for d in &loaded.diagnostics {
        writeln!(out, "{d}")?;
    }
    let summary = format!(
        "{} file(s), {} flow(s) valid, {} error(s), {} warning(s)",
        loaded.files,
        loaded.flows.len(),
        loaded.errors(),
        loaded.warnings()
    );
    if loaded.errors() > 0 {
        // The summary goes to stderr (as the error): what `out` holds must reach its
        // stream first, whole lines, so a shared terminal shows them in order.
        out.flush()?;
        return Err(UserError::new(summary).into());
    }
    writeln!(out, "{summary}")?;
    Ok(())
}
