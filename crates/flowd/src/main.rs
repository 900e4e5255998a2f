//! flowd: parse the command line, load what the command needs, dispatch, and map errors
//! to messages and exit codes.

mod cli;
mod cmd;
mod config;
mod exit;
mod flows;
mod service;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use std::io::Write;

/// See crates/flowd/Cargo.toml for why jemalloc.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One arena instead of jemalloc's four per core: flowd's few worker threads gain nothing
/// from more (each thread keeps its own cache in front of the arena), while every extra
/// arena keeps its own freed pages resident after a burst. `_RJEM_MALLOC_CONF` in the
/// environment still overrides it (jemalloc reads it after this).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"narenas:1\0"[0];

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
        Command::Catalog(command) => cmd::catalog::run(&load_catalog(&cli)?, command, &mut out)?,
        Command::Validate(args) => cmd::validate::run(&load_catalog(&cli)?, args, &mut out)?,
        Command::Test(args) => cmd::test::run(&load_catalog(&cli)?, args, &mut out)?,
        Command::Plan(args) => cmd::plan::run(&load_catalog(&cli)?, args, &mut out)?,
        Command::Schema => {
            serde_json::to_writer_pretty(&mut out, &flow::json_schema_for(&load_catalog(&cli)?))?;
            writeln!(out)?;
        }
        Command::Completions { shell } => clap_complete::generate(*shell, &mut Cli::command(), "flowd", &mut out),
        Command::Sandbox(args) => runtime()?.block_on(cmd::sandbox::run(args))?,
        Command::Auth(command) => runtime()?.block_on(cmd::auth::run(command, cli.catalog_dir.as_deref(), &mut out))?,
        Command::Run(args) => {
            init_logging(cli.log_format);
            let config = config::load(&args.config.config, &|k| std::env::var(k).ok())?;
            let catalog = std::sync::Arc::new(match &config.catalog_dir {
                Some(dir) if cli.catalog_dir.is_none() => {
                    catalog::Catalog::with_extensions(dir).map_err(|e| exit::UserError::new(e.to_string()))?
                }
                _ => load_catalog(&cli)?,
            });
            runtime()?.block_on(service::run(config, catalog, args.once))?;
        }
        Command::Demo(args) => {
            let catalog = std::sync::Arc::new(load_catalog(&cli)?);
            runtime()?.block_on(cmd::demo::run(catalog, args))?;
        }
        Command::Store(command) => cmd::store::run(command, &mut out)?,
        Command::Runs(args) => {
            let config = config::load(&args.config.config, &|k| std::env::var(k).ok())?;
            runtime()?.block_on(cmd::runs::list(&config, args, &mut out))?;
        }
        Command::Replay(args) => {
            init_logging(cli.log_format);
            let config = config::load(&args.config.config, &|k| std::env::var(k).ok())?;
            let catalog = std::sync::Arc::new(load_catalog(&cli)?);
            runtime()?.block_on(cmd::runs::replay(&config, catalog, args, &mut out))?;
        }
        Command::Release(args) => {
            init_logging(cli.log_format);
            let config = config::load(&args.config.config, &|k| std::env::var(k).ok())?;
            let catalog = std::sync::Arc::new(load_catalog(&cli)?);
            runtime()?.block_on(cmd::runs::release(&config, catalog, args, &mut out))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// What is logged without `RUST_LOG`: flowd's own crates at INFO, dependencies at WARN
/// (the database alone logs a few INFO lines per partition at every start).
const DEFAULT_LOG: &str =
    "warn,flowd=info,engine=info,ghl=info,store=info,flow=info,catalog=info,webhooks=info,sandbox=info";

/// Logs go to stderr: readable by default, JSON lines with `--log-format json`;
/// `RUST_LOG` replaces the default filter ([`DEFAULT_LOG`]).
fn init_logging(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        cli::LogFormat::Text => builder.try_init(),
        cli::LogFormat::Json => builder.json().try_init(),
    };
}

/// Threads for blocking work at most (tokio's default is 512). flowd's blocking work is
/// store calls (sled): CPU-bound or waiting on one shared flush, so more threads than this
/// add no throughput. Unbounded, a burst of polls (10,000 flows starting together) grew
/// the pool to 512 threads, each with its stack and its share of malloc arenas: hundreds
/// of MB of RSS that stayed after the burst (see BENCHMARKS.md, "Scale").
const BLOCKING_THREADS: usize = 16;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build()?)
}

/// The built-in catalog, plus the user's extension files when `--catalog-dir` is given.
fn load_catalog(cli: &Cli) -> anyhow::Result<catalog::Catalog> {
    let catalog = match &cli.catalog_dir {
        Some(dir) => catalog::Catalog::with_extensions(dir),
        None => catalog::Catalog::builtin(),
    };
    catalog.map_err(|e| exit::UserError::new(e.to_string()).into())
}
