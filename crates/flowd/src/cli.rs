//! The command line: every subcommand and flag, in one place.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// flowd: a self-hosted trigger/action engine for the GoHighLevel (GHL) API v2.
///
/// Write YAML flows that link a GHL trigger (a new contact, a completed task, a note...)
/// to actions (create a task, tag a contact, call your app), and run them as a service.
/// Start with `flowd demo`.
#[derive(Debug, Parser)]
#[command(name = "flowd", version, propagate_version = true, max_term_width = 100, after_help = EXIT_CODES)]
pub struct Cli {
    /// Add the operations defined in the YAML files of this directory to the catalog
    /// (instead of the config's `catalog_dir`).
    #[arg(long, global = true, value_name = "DIR", env = "FLOWD_CATALOG_DIR")]
    pub catalog_dir: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Shown at the end of `flowd --help`; the codes are chosen in `exit.rs`.
const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   a runtime failure: runs, tests or checks that failed, a store or service that cannot be
      reached or opened, a plan over GHL's budget
  2   bad input: a bad argument, config file, flow file or item file, an unknown name or run id
  75  `flowd run` stopped because its store cannot write (a full disk): a restart recovers

--catalog-dir (or FLOWD_CATALOG_DIR) wins over the config's `catalog_dir` in every command
that reads a config.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: poll triggers on schedule and execute flows.
    Run(RunArgs),
    /// Check flow files and print every problem, compiler-style (exit 2 if any error).
    Validate(ValidateArgs),
    /// Dry-run a flow for one trigger item, or run the flows' inline tests.
    Test(TestArgs),
    /// Show what the config's flows will spend of each location's GHL request budget
    /// (100 per 10 s, 200,000 a day); exit 1 if a location's flows do not fit.
    Plan(PlanArgs),
    /// List runs recorded in the store.
    Runs(RunsArgs),
    /// Run a recorded run again (a new run with the same trigger item).
    Replay(ReplayArgs),
    /// Execute the runs a flood guard held for a flow.
    Release(ReleaseArgs),
    /// Browse the GHL operations flows can use (triggers and actions).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Serve a local GHL API simulator (for trying flows without a GHL account).
    Sandbox(SandboxArgs),
    /// See flowd work end to end against the built-in sandbox; nothing to configure.
    Demo(DemoArgs),
    /// Connect GHL accounts (OAuth) and check that every account's credentials work.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// List the nodes sharing the config's PostgreSQL store: alive or not, the triggers
    /// whose lease each holds and the runs it is executing.
    Nodes(NodesArgs),
    /// Inspect the store, move a sled store to fjall, or copy a store into PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print the JSON Schema of flow files (for editor completion and checks).
    Schema,
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The service configuration file.
    #[arg(long, short, value_name = "FILE", default_value = "flowd.yaml", env = "FLOWD_CONFIG", global = true)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Poll every flow once, fire the webhook events already stored, execute what they
    /// find, and exit (for cron jobs and checks).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Flow files or directories (default: the `flows` directory of the config, or ./flows).
    pub paths: Vec<PathBuf>,
    /// Take the default flows directory, `account:` names and `catalog_dir` from this config.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The service configuration file.
    #[arg(long, short, value_name = "FILE", default_value = "flowd.yaml", env = "FLOWD_CONFIG")]
    pub config: PathBuf,
    /// Records each trigger's collection holds (what a full read pages through).
    #[arg(long, default_value_t = 1000)]
    pub records: u64,
    /// Changes each flow's trigger sees an hour (each runs the flow's steps once).
    #[arg(long, default_value_t = 60.0)]
    pub changes: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// A flow file (with --item), or flow files and directories whose inline tests to run.
    pub paths: Vec<PathBuf>,
    /// A JSON file holding one trigger item: print the requests the flow would send for it.
    #[arg(long, value_name = "ITEM.json")]
    pub item: Option<PathBuf>,
    /// Set `env.KEY` for the flows, as KEY=VALUE (repeatable; overrides the environment).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Stand-in result of a step for later steps, as STEP=JSON (repeatable).
    #[arg(long = "result", value_name = "STEP=JSON")]
    pub results: Vec<String>,
    /// Output format of the dry run.
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Take the default flows directory, `account:` names and `catalog_dir` from this config.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub show: Option<RunsCommand>,
    /// Only runs of this flow.
    #[arg(long)]
    pub flow: Option<String>,
    /// Only runs in this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Only runs that touched this GHL record: `contact:ID` (a bare ID is a contact's),
    /// `opportunity:ID`, `task:ID`...
    #[arg(long, value_name = "KIND:ID")]
    pub touched: Option<String>,
    /// Only runs created since then: a duration ago (`2h`, `30m`, `1day`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only runs created before then (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// At most this many runs, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run with its steps: rendered requests, results and errors.
    Show { id: u64 },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The run to replay.
    #[arg(required_unless_present = "failed")]
    pub id: Option<u64>,
    /// Replay every dead run instead (in_doubt runs too with --include-in-doubt).
    #[arg(long, conflicts_with = "id")]
    pub failed: bool,
    /// Also replay in_doubt runs: their request may have reached GHL, so check first.
    #[arg(long)]
    pub include_in_doubt: bool,
    /// With --failed: only runs of this flow.
    #[arg(long, requires = "failed")]
    pub flow: Option<String>,
    /// With --failed: only runs created since then (`2h`, or an RFC 3339 time).
    #[arg(long, value_name = "WHEN", requires = "failed")]
    pub since: Option<String>,
    /// With --failed: only runs created before then.
    #[arg(long, value_name = "WHEN", requires = "failed")]
    pub until: Option<String>,
    /// With --failed: only runs that touched this record (`contact:ID`).
    #[arg(long, value_name = "KIND:ID", requires = "failed")]
    pub touched: Option<String>,
    /// With --failed: say how many runs (and which) would be replayed, and replay none.
    #[arg(long, requires = "failed")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The flow whose held runs to execute.
    pub flow: String,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Seed data: `demo` (a small realistic account), `empty`, or a number of contacts.
    #[arg(long, default_value = "demo")]
    pub seed: String,
    /// Location id the sandbox serves.
    #[arg(long)]
    pub location: Option<String>,
    /// Private Integration token it accepts.
    #[arg(long)]
    pub token: Option<String>,
    /// Turn off GHL's rate limits, which are on by default as in GHL (100 requests per 10 s
    /// and 200,000 per day per location, reported in `X-RateLimit-*` headers, 429 beyond).
    #[arg(long)]
    pub no_rate_limit: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run one full cycle, print a summary and exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between cycles (without --once).
    #[arg(long, default_value_t = 5)]
    pub every: u64,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List operations as a table (or JSON).
    List(ListArgs),
    /// Show one operation's full definition; parameters that deliberately differ from
    /// GHL's official spec are marked `amended` with the reason.
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

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Print where the store is, its database (fjall, sled or postgres), id, format and creation time.
    Info(StoreArgs),
    /// Copy a sled store to a new fjall store, record for record, and put it in its place
    /// (the sled store is kept beside it, renamed); or, with `--to postgres://…`, copy the
    /// embedded store into PostgreSQL (seen keys, trigger states, runs, tokens, webhook
    /// inbox), leaving it as it was. Stop `flowd run` first.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Copy into this PostgreSQL database (`postgres://user@host/db`, no password in it)
    /// instead of moving sled to fjall. Its schema must hold no flowd data yet.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// A file holding the database password (a password is never given on the command
    /// line: `--password-file <(printf %s "$PGPASSWORD")` passes one from the environment).
    #[arg(long, value_name = "FILE", requires = "to")]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Connect an account through GHL's OAuth authorization-code flow (installing the app).
    ///
    /// Prints the install URL, receives the code on a loopback redirect, exchanges it and
    /// stores the tokens in the store. The account needs `oauth: {client_id, client_secret}`.
    Oauth(AuthOAuthArgs),
    /// Call GHL once per account: which credentials work, which scopes the flows miss,
    /// which accounts must be reconnected (exit 1 if any account is not ok).
    Check(AuthCheckArgs),
}

#[derive(Debug, Args)]
pub struct AuthOAuthArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The account to connect (a name under `accounts:`).
    #[arg(long, value_name = "NAME")]
    pub account: String,
    /// Port of the loopback listener GHL redirects to (default: any free port). The app's
    /// redirect URL must be http://127.0.0.1:PORT/oauth/callback.
    #[arg(long, value_name = "PORT", conflicts_with = "redirect_uri")]
    pub redirect_port: Option<u16>,
    /// A redirect URI other than the loopback listener (with --no-wait, then --code).
    #[arg(long, value_name = "URI")]
    pub redirect_uri: Option<String>,
    /// Scopes to ask for (repeatable or space-separated; default: those of the operations
    /// the account's flows use, plus locations.readonly for `flowd auth check`).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// The consent page (white-label: https://marketplace.leadconnectorhq.com/v2/oauth/chooselocation).
    #[arg(long, value_name = "URL", default_value = "https://marketplace.gohighlevel.com/v2/oauth/chooselocation")]
    pub authorize_url: String,
    /// Print the install URL and exit; finish with --code.
    #[arg(long, conflicts_with = "code")]
    pub no_wait: bool,
    /// Exchange this authorization code (the redirect's `?code=`) instead of waiting.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// How long to wait for the redirect.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct AuthCheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this account (repeatable).
    #[arg(long = "account", value_name = "NAME")]
    pub accounts: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    Dead,
    InDoubt,
    Held,
}
