//! `flowd test`: a dry run of one flow for one trigger item, or the flows' inline tests.

use crate::cli::{Format, TestArgs};
use crate::config::Config;
use crate::exit::{Failed, UserError};
use crate::flows;
use catalog::Catalog;
use chrono::Utc;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;

/// `config` is the one `--config` names, if any: its `flows` are the default paths and
/// `account:` names are checked against its accounts.
pub fn run(catalog: &Catalog, config: Option<&Config>, args: &TestArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let paths = match (args.paths.is_empty(), config) {
        (false, _) => args.paths.clone(),
        (true, Some(config)) => vec![config.flows.clone()],
        (true, None) => vec![PathBuf::from("flows")],
    };
    let files = flows::discover(&paths).map_err(UserError::new)?;
    let mut env = flows::compile_env(config.map(|c| c.accounts.keys().cloned().collect()).unwrap_or_default());
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(UserError::new(format!("--env `{kv}`: expected KEY=VALUE")).into());
        };
        env.env.insert(k.to_string(), v.to_string());
    }
    let loaded = flows::load_files(&files, catalog, &env);
    if loaded.errors() > 0 {
        for d in &loaded.diagnostics {
            writeln!(out, "{d}")?;
        }
        return Err(UserError::new(format!("{} error(s): fix them first (`flowd validate`)", loaded.errors())).into());
    }
    let account = json!({ "name": "test", "location_id": "test-location" });
    match &args.item {
        Some(item_path) => dry_run(catalog, args, &loaded, item_path, account, &env.env, out),
        None => inline_tests(&loaded, account, &env.env, out),
    }
}

fn dry_run(
    catalog: &Catalog,
    args: &TestArgs,
    loaded: &flows::Loaded,
    item_path: &PathBuf,
    account: Value,
    env: &std::collections::BTreeMap<String, String>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let [(_, flow)] = loaded.flows.as_slice() else {
        return Err(UserError::new(format!("--item needs exactly one flow file; got {}", loaded.flows.len())).into());
    };
    let text = std::fs::read_to_string(item_path)
        .map_err(|e| UserError::new(format!("cannot read {}: {e}", item_path.display())))?;
    let item: Value = serde_json::from_str(&text)
        .map_err(|e| UserError::new(format!("{}:{}:{}: not JSON: {e}", item_path.display(), e.line(), e.column())))?;
    let mut stand_ins = Map::new();
    for r in &args.results {
        let Some((step, json)) = r.split_once('=') else {
            return Err(UserError::new(format!("--result `{r}`: expected STEP=JSON")).into());
        };
        let value: Value =
            serde_json::from_str(json).map_err(|e| UserError::new(format!("--result {step}: not JSON: {e}")))?;
        stand_ins.insert(step.to_string(), value);
    }
    let result = engine::dry_run(flow, catalog, item, account, env, &stand_ins, Utc::now()).map_err(UserError::new)?;
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &result)?;
            writeln!(out)?;
        }
        Format::Yaml => write!(out, "{}", serde_saphyr::to_string(&result)?)?,
    }
    Ok(())
}

fn inline_tests(
    loaded: &flows::Loaded,
    account: Value,
    env: &std::collections::BTreeMap<String, String>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (mut passed, mut failed) = (0, 0);
    for (file, flow) in &loaded.flows {
        for test in &flow.tests {
            let outcome = flow.run_test(test, account.clone(), env, Utc::now());
            if outcome.passed() {
                passed += 1;
                writeln!(out, "ok    {} :: {}", flow.name, outcome.name)?;
            } else {
                failed += 1;
                writeln!(out, "FAIL  {} :: {} ({})", flow.name, outcome.name, file.display())?;
                for f in &outcome.failures {
                    writeln!(out, "      {f}")?;
                }
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    if failed > 0 {
        return Err(Failed::new(format!("{failed} flow test(s) failed")).into());
    }
    if passed == 0 {
        writeln!(out, "(no flow has inline `tests:`; use --item ITEM.json for a dry run)")?;
    }
    Ok(())
}
