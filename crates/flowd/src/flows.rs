//! Finding flow files and compiling them, with every problem collected.

use catalog::Catalog;
use flow::{CompileEnv, CompiledFlow, Diagnostic, Severity};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Flow files under the given paths: files as given, directories searched (not
/// recursively) for `*.yaml` / `*.yml`, sorted by name.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(files)
}

/// What loading a set of flow files gave.
#[derive(Debug, Default)]
pub struct Loaded {
    pub flows: Vec<(PathBuf, CompiledFlow)>,
    pub diagnostics: Vec<Diagnostic>,
    pub files: usize,
}

impl Loaded {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count()
    }
}

/// Compiles every file; a flow name used twice is an error at its second use.
pub fn load_files(files: &[PathBuf], catalog: &Catalog, env: &CompileEnv) -> Loaded {
    let mut out = Loaded { files: files.len(), ..Loaded::default() };
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let shown = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                out.diagnostics.push(Diagnostic {
                    file: shown,
                    line: 0,
                    column: 0,
                    severity: Severity::Error,
                    message: format!("cannot read the file: {e}"),
                    help: None,
                });
                continue;
            }
        };
        let (compiled, diags) = flow::load(&shown, &text, catalog, env);
        let failed = diags.iter().any(|d| d.severity == Severity::Error);
        out.diagnostics.extend(diags);
        if let (Some(f), false) = (compiled, failed) {
            if let Some(first) = names.get(&f.name) {
                out.diagnostics.push(Diagnostic {
                    file: shown,
                    line: 1,
                    column: 1,
                    severity: Severity::Error,
                    message: format!("flow name `{}` is already used by {}", f.name, first.display()),
                    help: Some("flow names must be unique: runs and dedupe state are kept per name".into()),
                });
                continue;
            }
            names.insert(f.name.clone(), file.clone());
            out.flows.push((file.clone(), f));
        }
    }
    out
}

/// The environment flows see as `env.*`: the process environment.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

pub fn compile_env(accounts: Vec<String>) -> CompileEnv {
    CompileEnv { env: process_env(), accounts }
}
