//! The command line: every subcommand and flag, in one place.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// flowd: a self-hosted trigger/action engine for the GoHighLevel (GHL) API v2.
///
/// Write YAML flows that link a GHL trigger (a new contact, a completed task, a note...)
/// to actions (create a task, tag a contact, call your app), and run them as a service.
#[derive(Debug, Parser)]
#[command(name = "flowd", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Add the operations defined in the YAML files of this directory to the catalog.
    #[arg(long, global = true, value_name = "DIR", env = "FLOWD_CATALOG_DIR")]
    pub catalog_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Browse the GHL operations flows can use (triggers and actions).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List operations as a table (or JSON).
    List(ListArgs),
    /// Show one operation's full definition.
    Show(ShowArgs),
    /// List the categories with their trigger and action counts.
    Categories,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only triggers or only actions.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only one category, by name or file name (`Contacts`, `calendars`, ...).
    #[arg(long, value_name = "NAME")]
    pub category: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The operation key, e.g. `contacts.create_task`.
    pub key: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Trigger,
    Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}
