//! `flowd catalog list|show|categories`.

use crate::cli::{CatalogCommand, Format, KindArg, ListArgs, ShowArgs};
use crate::exit::UserError;
use catalog::{Catalog, DedupeMode, Kind, Operation};
use serde::Serialize;
use std::io::Write;

pub fn run(catalog: &Catalog, command: &CatalogCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        CatalogCommand::List(args) => list(catalog, args, out),
        CatalogCommand::Show(args) => show(catalog, args, out),
        CatalogCommand::Categories => categories(catalog, out),
    }
}

#[derive(Serialize)]
struct Row<'a> {
    key: &'a str,
    name: &'a str,
    kind: &'a str,
    category: &'a str,
    method: &'a str,
    path: &'a str,
    version: &'a str,
    description: &'a str,
}

fn list(catalog: &Catalog, args: &ListArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let category = match &args.category {
        Some(wanted) => Some(resolve_category(catalog, wanted)?),
        None => None,
    };
    let kind = args.kind.map(|k| match k {
        KindArg::Trigger => Kind::Trigger,
        KindArg::Action => Kind::Action,
    });
    let ops: Vec<&Operation> = catalog
        .operations()
        .iter()
        .filter(|o| kind.is_none_or(|k| o.kind == k))
        .filter(|o| category.as_deref().is_none_or(|c| o.category == c))
        .collect();
    let rows: Vec<Row> = ops
        .iter()
        .map(|o| Row {
            key: &o.key,
            name: &o.name,
            kind: o.kind.as_str(),
            category: &o.category,
            method: o.method.as_str(),
            path: &o.path,
            version: &o.version,
            description: &o.description,
        })
        .collect();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let width = |len: &dyn Fn(&Row) -> usize, title: &str| rows.iter().map(len).max().unwrap_or(0).max(title.len());
    let wk = width(&|r| r.key.len(), "KEY");
    let wkind = width(&|r| r.kind.len(), "KIND");
    let wm = width(&|r| r.method.len(), "METHOD");
    let wp = width(&|r| r.path.len(), "PATH");
    writeln!(out, "{:wk$}  {:wkind$}  {:wm$}  {:wp$}  NAME", "KEY", "KIND", "METHOD", "PATH")?;
    for r in &rows {
        writeln!(out, "{:wk$}  {:wkind$}  {:wm$}  {:wp$}  {}", r.key, r.kind, r.method, r.path, r.name)?;
    }
    let triggers = ops.iter().filter(|o| o.kind == Kind::Trigger).count();
    writeln!(out, "\n{} operations: {} triggers, {} actions", ops.len(), triggers, ops.len() - triggers)?;
    Ok(())
}

/// A category given by name (any case) or by the stem of its file (`calendars`).
fn resolve_category(catalog: &Catalog, wanted: &str) -> anyhow::Result<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['&', ' ', '_', '-'], "");
    let w = norm(wanted);
    let names: Vec<&str> = catalog.categories().iter().map(|c| c.name.as_str()).collect();
    if let Some(hit) = names.iter().find(|n| norm(n) == w || norm(n).starts_with(&w) && w.len() >= 4) {
        return Ok(hit.to_string());
    }
    let hint = catalog::did_you_mean(&catalog::nearest(wanted, names.iter().copied(), 2));
    Err(UserError::new(format!("unknown category `{wanted}`{hint} (see `flowd catalog categories`)")).into())
}

fn show(catalog: &Catalog, args: &ShowArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(op) = catalog.get(&args.key) else {
        let hint = catalog::did_you_mean(&catalog.suggest(&args.key));
        return Err(UserError::new(format!("unknown operation `{}`{hint}", args.key)).into());
    };
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, op)?;
            writeln!(out)?;
        }
        Format::Yaml => {
            write!(out, "{}", serde_saphyr::to_string(op)?)?;
            for line in amendment_summary(op).into_iter().chain(read_summary(op)) {
                writeln!(out, "# {line}")?;
            }
        }
    }
    Ok(())
}

/// The parameters where the catalog deliberately departs from GHL's official spec, and why.
pub fn amendment_summary(op: &Operation) -> Vec<String> {
    op.params
        .iter()
        .filter_map(|p| {
            let why = p.amended.as_deref()?;
            Some(format!(
                "amended: `{}` ({} {}, differs from the spec): {why}",
                p.name,
                p.location.as_str(),
                p.ty.as_str()
            ))
        })
        .collect()
}

/// How a trigger reads and what one poll costs, per dedupe mode.
pub fn read_summary(op: &Operation) -> Vec<String> {
    let Some(spec) = op.trigger.as_ref() else { return Vec::new() };
    let read = spec.read_spec();
    let incremental: Vec<&str> = read.modes().iter().map(|m| m.as_str()).collect();
    let mut lines = vec![match read.as_ref() {
        catalog::ReadSpec::Full { why } => format!("read strategy: full ({why})"),
        r if incremental.is_empty() => format!("read strategy: {}", r.strategy()),
        r => format!("read strategy: {} (incremental for dedupe {})", r.strategy(), incremental.join(", ")),
    }];
    for mode in [DedupeMode::New, DedupeMode::Updated, DedupeMode::Changed] {
        if mode == DedupeMode::Updated && spec.updated.is_none() {
            continue;
        }
        let cost = spec.poll_cost(mode);
        lines.push(format!(
            "one poll with dedupe {}: {} (at 10 records: {}, at 20,000: {})",
            mode.as_str(),
            cost.describe(),
            cost.requests(10, 0),
            cost.requests(20_000, 0)
        ));
    }
    if let Some(param) = op.fan_out_param() {
        let cost = catalog::FanOutCost { max_per_poll: catalog::DEFAULT_MAX_PER_POLL };
        lines.push(format!(
            "fans out: `for_each_record: {{ of: <parent> }}` polls it for every parent record, `{param}: \"{{{{ parent.id }}}}\"`; \
             one poll with max_per_poll {}: {}",
            cost.max_per_poll,
            cost.describe()
        ));
    }
    if op.parent_read().is_some() {
        lines.push(
            "can be the parent of a fan-out (`for_each_record: { of: ... }`): changed records first, then round-robin"
                .into(),
        );
    }
    lines
}

fn categories(catalog: &Catalog, out: &mut dyn Write) -> anyhow::Result<()> {
    let width = catalog.categories().iter().map(|c| c.name.len()).max().unwrap_or(8);
    writeln!(out, "{:width$}  TRIGGERS  ACTIONS  DESCRIPTION", "CATEGORY")?;
    for c in catalog.categories() {
        let count = |k| catalog.operations().iter().filter(|o| o.category == c.name && o.kind == k).count();
        writeln!(out, "{:width$}  {:>8}  {:>7}  {}", c.name, count(Kind::Trigger), count(Kind::Action), c.description)?;
    }
    Ok(())
}
