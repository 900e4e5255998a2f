//! `flowd store info` and `flowd store migrate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::StoreCommand;
use crate::config::Config;
use crate::exit::{Failed, UserError};
use crate::service::wiring::{self, Open};

/// The config file a subcommand reads.
pub fn config_path(command: &StoreCommand) -> &Path {
    match command {
        StoreCommand::Info(a) => &a.config.config,
        StoreCommand::Migrate(a) => &a.config.config,
    }
}

pub fn run(config: &Config, command: &StoreCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        StoreCommand::Info(_) => info(config, out),
        StoreCommand::Migrate(a) => match &a.to {
            Some(url) => to_postgres(config, url, a.password_file.as_deref(), out),
            None => migrate(config, out),
        },
    }
}

fn info(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = wiring::open_store(config, Open::Existing)?.or_in_use("stop it first")?;
    let marker = match config.postgres {
        Some(_) => None,
        None => store::layout::read_marker(&config.store)?,
    };
    writeln!(out, "store:    {}", config.store_name())?;
    writeln!(out, "database: {}", s.backend())?;
    writeln!(out, "id:       {}", s.store_id())?;
    if let Some(m) = marker {
        writeln!(out, "format:   {}", m.format)?;
        writeln!(out, "created:  {}", m.created_at.to_rfc3339())?;
    }
    if s.backend() == store::Backend::Sled {
        writeln!(out, "(`flowd store migrate` moves it to fjall, whose durable writes cost a fraction of sled's)")?;
    }
    Ok(())
}

/// `<store>` with `suffix` appended to its last component.
fn beside(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "store".into());
    name.push(suffix);
    store.with_file_name(name)
}

/// Swaps the directories `a` and `b` in one step where the system can (Linux's
/// `renameat2(RENAME_EXCHANGE)`); `Ok(false)` where it cannot.
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => return Ok(true),
            Err(e) if [Errno::INVAL, Errno::NOSYS, Errno::NOTSUP].contains(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (a, b);
    Ok(false)
}

/// Where the sled store is kept: `<store>.sled-<time>`, numbered if that exists.
fn kept_name(path: &Path) -> PathBuf {
    let stem = format!(".sled-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    let mut kept = beside(path, &stem);
    let mut n = 2;
    while kept.exists() {
        kept = beside(path, &format!("{stem}-{n}"));
        n += 1;
    }
    kept
}

/// `flowd store migrate --to postgres://…`: copies the config's embedded store into
/// PostgreSQL in one transaction; the embedded store is left as it was.
fn to_postgres(config: &Config, url: &str, password_file: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<()> {
    if config.postgres.is_some() {
        return Err(UserError::new(format!(
            "{}: `store:` is a PostgreSQL URL already; `--to` copies an embedded store (a directory) into PostgreSQL",
            config.path.display()
        ))
        .into());
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(UserError::new(format!("--to {url}: give a postgres:// URL")).into());
    }
    if url != store::pg::redacted_url(url) || url.contains("password=") {
        return Err(UserError::new("--to: the URL holds a password; give it with --password-file").into());
    }
    let password = match password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| UserError::new(format!("--password-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let options = store::PgOptions { password, ..store::PgOptions::new(url) };
    let migrated = store::migrate::embedded_to_postgres(&config.store, &options).map_err(|e| match e {
        e @ store::StoreError::Locked { .. } => wiring::store_error(config, e),
        e @ store::StoreError::NotFound { .. } => UserError::new(e.to_string()).into(),
        e => Failed::new(format!("copying {} into {url}: {e}", config.store.display())).into(),
    })?;
    writeln!(out, "Copied {} records from {} into {url}:", migrated.total(), config.store.display())?;
    for (table, n) in &migrated.trees {
        writeln!(out, "  {table:<14} {n}")?;
    }
    writeln!(out, "Point `store:` at {url} (password in `store_password` or `store_password_file`) to run on it;")?;
    writeln!(out, "every trigger keeps what it has seen. {} is left as it was.", config.store.display())?;
    Ok(())
}

fn migrate(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    if config.postgres.is_some() {
        return Err(UserError::new(format!(
            "{}: `store:` is a PostgreSQL URL: its schema is migrated by `flowd run` itself; `flowd store migrate` moves an embedded store",
            config.path.display()
        ))
        .into());
    }
    let path = &config.store;
    let staging = beside(path, ".fjall-migrating");
    match store::layout::existing_backend(path)? {
        None => return Err(UserError::new(format!("no store at {}", path.display())).into()),
        Some(store::Backend::Fjall) => {
            // A migration stopped right after the swap left the sled store in `staging`.
            if store::layout::existing_backend(&staging)? == Some(store::Backend::Sled) {
                let kept = kept_name(path);
                std::fs::rename(&staging, &kept).map_err(|e| {
                    Failed::new(format!("cannot move {} to {}: {e}", staging.display(), kept.display()))
                })?;
                writeln!(
                    out,
                    "{} is the fjall store; finished an interrupted migration: the sled store is kept in {}.",
                    path.display(),
                    kept.display()
                )?;
                return Ok(());
            }
            writeln!(out, "{} is a fjall store already; nothing to do.", path.display())?;
            return Ok(());
        }
        Some(store::Backend::Sled) => {}
        Some(store::Backend::Postgres) => {
            return Err(UserError::new(format!("{} is not an embedded store", path.display())).into())
        }
    }
    if staging.exists() {
        return Err(Failed::new(format!(
            "{} exists (an interrupted migration?); remove it and run again",
            staging.display()
        ))
        .into());
    }
    let migrated = store::migrate::sled_to_fjall(path, &staging).map_err(|e| {
        // Nothing was changed at `path`; the half-made copy is of no use.
        let _ = std::fs::remove_dir_all(&staging);
        wiring::store_error(config, e)
    })?;
    let kept = kept_name(path);
    // One atomic swap where possible: a crash then leaves either the sled store or the
    // complete fjall store in place, never neither (a start would create an empty one).
    if exchange(&staging, path)? {
        std::fs::rename(&staging, &kept)
            .map_err(|e| Failed::new(format!("cannot move {} to {}: {e}", staging.display(), kept.display())))?;
    } else {
        std::fs::rename(path, &kept)
            .map_err(|e| Failed::new(format!("cannot move {} to {}: {e}", path.display(), kept.display())))?;
        std::fs::rename(&staging, path).map_err(|e| {
            Failed::new(format!(
                "cannot move {} to {}: {e}. The migrated store is complete in the first; the sled store is in {}",
                staging.display(),
                path.display(),
                kept.display()
            ))
        })?;
    }
    writeln!(out, "Copied {} records from the sled store into a new fjall store:", migrated.total())?;
    for (tree, n) in &migrated.trees {
        writeln!(out, "  {tree:<14} {n}")?;
    }
    writeln!(out, "{} is now the fjall store; the sled store is kept in {}.", path.display(), kept.display())?;
    writeln!(out, "Every trigger keeps what it has seen: nothing fires again, nothing baselines again.")?;
    Ok(())
}
