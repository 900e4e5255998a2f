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
use service::wiring;
use std::io::Write;
use std::sync::Arc;

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
    let catalog_dir = cli.catalog_dir.as_deref();
    // The config, where the command reads one, and the catalog, with the config's
    // `catalog_dir` unless `--catalog-dir` is given.
    let configured = |path: &std::path::Path| -> anyhow::Result<(config::Config, Arc<catalog::Catalog>)> {
        let config = wiring::load_config(path)?;
        let catalog = Arc::new(wiring::catalog(catalog_dir, Some(&config))?);
        Ok((config, catalog))
    };
    let optional = |path: Option<&std::path::Path>| -> anyhow::Result<(Option<config::Config>, catalog::Catalog)> {
        let config = path.map(wiring::load_config).transpose()?;
        let catalog = wiring::catalog(catalog_dir, config.as_ref())?;
        Ok((config, catalog))
    };
    match &cli.command {
        Command::Catalog(command) => cmd::catalog::run(&wiring::catalog(catalog_dir, None)?, command, &mut out)?,
        Command::Validate(args) => {
            let (config, catalog) = optional(args.config.as_deref())?;
            cmd::validate::run(&catalog, config.as_ref(), args, &mut out)?
        }
        Command::Test(args) => {
            let (config, catalog) = optional(args.config.as_deref())?;
            cmd::test::run(&catalog, config.as_ref(), args, &mut out)?
        }
        Command::Plan(args) => {
            let config = cmd::plan::load_config(&args.config)?;
            let catalog = wiring::catalog(catalog_dir, Some(&config))?;
            cmd::plan::run(&catalog, &config, args, &mut out)?
        }
        Command::Schema => {
            serde_json::to_writer_pretty(&mut out, &flow::json_schema_for(&wiring::catalog(catalog_dir, None)?))?;
            writeln!(out)?;
        }
        Command::Completions { shell } => clap_complete::generate(*shell, &mut Cli::command(), "flowd", &mut out),
        Command::Sandbox(args) => runtime()?.block_on(cmd::sandbox::run(args))?,
        Command::Auth(command) => {
            let (config, catalog) = configured(cmd::auth::config_path(command))?;
            runtime()?.block_on(cmd::auth::run(&config, &catalog, command, &mut out))?
        }
        Command::Run(args) => {
            init_logging(cli.log_format);
            let (config, catalog) = configured(&args.config.config)?;
            runtime()?.block_on(service::run(config, catalog, args.once))?;
        }
        Command::Demo(args) => {
            let catalog = Arc::new(wiring::catalog(catalog_dir, None)?);
            runtime()?.block_on(cmd::demo::run(catalog, args))?;
        }
        Command::Store(command) => {
            let config = wiring::load_config(cmd::store::config_path(command))?;
            cmd::store::run(&config, command, &mut out)?
        }
        Command::Nodes(args) => {
            let config = wiring::load_config(&args.config.config)?;
            cmd::nodes::run(&config, args, &mut out)?
        }
        Command::Runs(args) => {
            let config = wiring::load_config(&args.config.config)?;
            runtime()?.block_on(cmd::runs::list(&config, args, &mut out))?;
        }
        Command::Replay(args) => {
            init_logging(cli.log_format);
            let (config, catalog) = configured(&args.config.config)?;
            runtime()?.block_on(cmd::runs::replay(&config, catalog, args, &mut out))?;
        }
        Command::Release(args) => {
            init_logging(cli.log_format);
            let (config, catalog) = configured(&args.config.config)?;
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
/// store calls: CPU-bound or waiting on one shared flush, so more threads add no
/// throughput, while a burst of polls (thousands of flows starting together) would grow
/// the pool to the limit, each thread with its stack and its share of malloc arenas, RSS
/// that stays after the burst (BENCHMARKS.md, "Scale").
const BLOCKING_THREADS: usize = 16;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build()?)
}
