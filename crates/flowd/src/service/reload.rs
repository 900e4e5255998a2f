//! Keeping the running flows in step with the flows directory. Only flows that validate
//! are applied: a broken edit leaves the running version in place and says why.

use engine::Engine;
use flow::{CompiledFlow, Diagnostic};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The problems of the flow files the last reload rejected, each with its file, line
/// and column: what the console's flows page shows.
pub type LoadErrors = Arc<std::sync::Mutex<Vec<(PathBuf, Vec<String>)>>>;

pub struct FlowSet {
    dir: PathBuf,
    errors: LoadErrors,
    accounts: Vec<String>,
    /// File → (its text when it last compiled, the flow).
    running: BTreeMap<PathBuf, (String, CompiledFlow)>,
    signature: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

#[derive(Default)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub removed: Vec<String>,
    /// Files that failed, with their problems; the running version (if any) stays.
    pub rejected: Vec<(PathBuf, Vec<Diagnostic>, bool)>,
}

impl ReloadReport {
    pub fn changed(&self) -> bool {
        !self.applied.is_empty() || !self.removed.is_empty()
    }

    pub fn log(&self) {
        for name in &self.applied {
            tracing::info!(flow = %name, "flow loaded");
        }
        for name in &self.removed {
            tracing::info!(flow = %name, "flow removed");
        }
        for (file, diags, kept) in &self.rejected {
            let problems: Vec<String> = diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
            let what = if *kept { "the running version stays" } else { "it is not running" };
            tracing::error!(file = %file.display(), "flow file rejected ({what}):\n{}", problems.join("\n"));
        }
    }
}

impl FlowSet {
    pub fn new(dir: PathBuf, accounts: Vec<String>) -> FlowSet {
        FlowSet { dir, accounts, errors: LoadErrors::default(), running: BTreeMap::new(), signature: Vec::new() }
    }

    /// The last reload's rejected files, kept up to date by every reload.
    pub fn errors(&self) -> LoadErrors {
        self.errors.clone()
    }

    pub fn compiled(&self) -> Vec<CompiledFlow> {
        self.running.values().map(|(_, f)| f.clone()).collect()
    }

    /// Whether the directory looks different from the last reload (names, sizes, times).
    pub fn looks_changed(&self) -> bool {
        self.scan_signature() != self.signature
    }

    fn scan_signature(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let files = crate::flows::discover(std::slice::from_ref(&self.dir)).unwrap_or_default();
        files
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let modified = meta.and_then(|m| m.modified().ok());
                (f, len, modified)
            })
            .collect()
    }

    pub fn reload(&mut self, catalog: &catalog::Catalog) -> ReloadReport {
        let mut report = ReloadReport::default();
        self.signature = self.scan_signature();
        let files = match crate::flows::discover(std::slice::from_ref(&self.dir)) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("flows directory: {e}");
                return report;
            }
        };
        let env = crate::flows::compile_env(self.accounts.clone());
        let present: HashSet<PathBuf> = files.iter().cloned().collect();
        let gone: Vec<PathBuf> = self.running.keys().filter(|f| !present.contains(*f)).cloned().collect();
        for f in gone {
            if let Some((_, flow)) = self.running.remove(&f) {
                report.removed.push(flow.name);
            }
        }
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            if self.running.get(&file).is_some_and(|(old, _)| *old == text) {
                continue;
            }
            let (compiled, diags) = flow::load(&file.display().to_string(), &text, catalog, &env);
            let clash = compiled.as_ref().and_then(|c| {
                self.running.iter().find(|(other, (_, f))| **other != file && f.name == c.name).map(|(o, _)| o.clone())
            });
            match (compiled, diags.iter().any(Diagnostic::is_error), clash) {
                (Some(flow), false, None) => {
                    report.applied.push(flow.name.clone());
                    self.running.insert(file, (text, flow));
                }
                (_, _, Some(other)) => {
                    let d = Diagnostic {
                        file: file.display().to_string(),
                        line: 1,
                        column: 1,
                        severity: flow::Severity::Error,
                        message: format!("flow name already used by {}", other.display()),
                        help: None,
                    };
                    report.rejected.push((file.clone(), vec![d], self.running.contains_key(&file)));
                }
                _ => {
                    let kept = self.running.contains_key(&file);
                    report.rejected.push((file, diags, kept));
                }
            }
        }
        let rejected = report
            .rejected
            .iter()
            .map(|(file, diags, _)| {
                (file.clone(), diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect())
            })
            .collect();
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()) = rejected;
        report
    }
}

/// Reloads on SIGHUP and when the directory changes (checked every 2 s).
pub fn watch(
    engine: Arc<Engine>,
    catalog: Arc<catalog::Catalog>,
    mut flows: FlowSet,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            #[cfg(unix)]
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_recv = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hup_recv => true,
                _ = shutdown.changed() => return,
            };
            if *shutdown.borrow() {
                return;
            }
            if !forced && !flows.looks_changed() {
                continue;
            }
            let report = flows.reload(&catalog);
            report.log();
            if report.changed() {
                match engine.set_flows(flows.compiled()) {
                    Ok(()) => {
                        drop(engine.schedule_new_flows(&shutdown));
                        tracing::info!(flows = engine.flow_names().len(), "flows reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "reload refused; the running flows stay"),
                }
            }
        }
    })
}
