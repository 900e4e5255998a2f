//! The records the store keeps and the inputs that change them.
//!
//! Records are stored as JSON (not a binary format) so that a damaged or
//! hand-inspected database can still be read with `serde_json`, and so that the
//! JSON payloads they carry (trigger items, rendered requests) need no second
//! encoding.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run's id: sled's `generate_id`, monotonic across restarts of one store,
/// so ids sort in creation order and "newest first" is a reverse scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a run is in its life.
///
/// A run waiting for a retry is `Failed` with `next_retry_at` set; `Dead` is a
/// failure the engine has given up on. `InDoubt` means a request may or may not
/// have reached GHL and a person (or an idempotency check) must decide; `Held`
/// runs wait for their flow to be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Dead,
    InDoubt,
    Held,
}

impl RunStatus {
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Dead,
        RunStatus::InDoubt,
        RunStatus::Held,
    ];

    /// The one-byte tag used as the prefix of the status index; stable on disk.
    ///
    /// `pending` and `running` share one (since store format 3): every run passes from one
    /// to the other, and a shared tag spares that step two index writes. Readers of the
    /// index check the record's status, which they load anyway.
    pub(crate) fn tag(self) -> u8 {
        match self {
            RunStatus::Pending | RunStatus::Running => b'p',
            RunStatus::Succeeded => b's',
            RunStatus::Failed => b'f',
            RunStatus::Dead => b'd',
            RunStatus::InDoubt => b'i',
            RunStatus::Held => b'h',
        }
    }

    /// Finished runs never change again, so they are the ones retention may drop.
    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Dead)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Dead => "dead",
            RunStatus::InDoubt => "in_doubt",
            RunStatus::Held => "held",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one step of a run is. `Sent` is written before the request leaves, so
/// a step found `Sent` after a crash may or may not have reached GHL. `Skipped`: the
/// step's `if:` was false; nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Sent,
    Succeeded,
    Failed,
    InDoubt,
    Skipped,
}

pub use crate::payload::Payload;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub status: StepStatus,
    pub request: Payload,
    #[serde(default)]
    pub response: Option<Payload>,
    #[serde(serialize_with = "crate::time_format::serialize")]
    pub started_at: DateTime<Utc>,
    #[serde(default, serialize_with = "crate::time_format::serialize_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub error: Option<String>,
    /// How many times this step was started (re-sends after a failure or an
    /// in-doubt decision count).
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub flow: String,
    /// The trigger id (flow name + trigger hash) that produced the run, if any.
    #[serde(default)]
    pub trigger: Option<String>,
    /// The dedupe key of the trigger item, if the run came from a poll.
    #[serde(default)]
    pub dedupe_key: Option<String>,
    pub item: Value,
    pub status: RunStatus,
    #[serde(serialize_with = "crate::time_format::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::time_format::serialize")]
    pub updated_at: DateTime<Utc>,
    /// Times the run entered `Running` since it was created or last replayed.
    pub attempts: u32,
    /// Times an operator replayed the run (see [`RunChange::Replay`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replays: u32,
    #[serde(default, serialize_with = "crate::time_format::serialize_opt")]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// The GHL records the run touched, as refs like `contact:abc123`, each once, in the
    /// order first recorded ([`NewRun::touched`], [`RunChange::Touched`]). Indexed for
    /// [`RunFilter::touched`]. Absent from the records of runs that touched nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Run {
    /// A run as created: `pending` (`held` for a paused flow), no steps, no attempts.
    pub fn new(id: RunId, new: NewRunFields, item: Value, now: DateTime<Utc>) -> Run {
        Run {
            id,
            flow: new.flow,
            trigger: new.trigger,
            dedupe_key: new.dedupe_key,
            item,
            status: if new.held { RunStatus::Held } else { RunStatus::Pending },
            created_at: now,
            updated_at: now,
            attempts: 0,
            replays: 0,
            next_retry_at: None,
            error: None,
            steps: Vec::new(),
            touched: new.touched,
        }
    }

    pub fn step(&self, step: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == step)
    }
}

/// What a new run is made of besides its id, item and time (see [`Run::new`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRunFields {
    pub flow: String,
    pub trigger: Option<String>,
    pub dedupe_key: Option<String>,
    pub held: bool,
    pub touched: Vec<String>,
}

/// A run to create. Runs start `Pending` (or `Held` when `held` is set, for a
/// paused flow).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewRun {
    pub flow: String,
    pub trigger: Option<String>,
    pub item: Value,
    pub held: bool,
    /// GHL records the run already touched when it is created (refs like
    /// `contact:abc123`; see [`Run::touched`]). Usually empty: steps add theirs with
    /// [`RunChange::Touched`].
    pub touched: Vec<String>,
}

impl NewRun {
    pub fn new(flow: impl Into<String>, item: Value) -> Self {
        NewRun { flow: flow.into(), item, ..NewRun::default() }
    }
}

/// One item of a poll: its dedupe key is recorded as seen, and if `run` is set
/// a run is created for it in the same transaction. Baseline polls (the first
/// poll of a trigger, which must not fire for what already exists) pass no run.
#[derive(Debug, Clone, PartialEq)]
pub struct PollItem {
    pub key: String,
    pub run: Option<NewRun>,
}

/// Everything one poll changes, committed atomically and flushed by
/// [`crate::Store::commit_poll`] before the engine sends any action.
#[derive(Debug, Clone, PartialEq)]
pub struct PollCommit {
    pub trigger: String,
    /// The trigger's new cursor/state; `None` leaves the stored state as is.
    pub state: Option<Value>,
    pub items: Vec<PollItem>,
    /// Set by a node of a cluster ([`crate::Cluster`]): the epoch of its lease on `trigger`.
    /// The commit is refused ([`crate::StoreError::Fenced`]) unless that lease is still the
    /// node's, so a node that was paused past its lease cannot move the trigger's state or
    /// record its items; the runs it creates are for any node to claim
    /// ([`crate::Cluster::claim_runs`]). `None`: no lease is checked and the runs belong to
    /// the committer (a webhook's or an inbound request's runs, executed where they came in;
    /// every commit of a store one process owns).
    pub lease: Option<i64>,
}

impl PollCommit {
    /// Refuses a commit without a trigger, or with a dedupe key twice (which would make
    /// the transaction's seen check read its own write), before anything is written.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.trigger.is_empty() {
            return Err(crate::StoreError::Invalid("a poll commit needs a trigger id".into()));
        }
        let mut keys = std::collections::HashSet::with_capacity(self.items.len());
        if let Some(twice) = self.items.iter().find(|item| !keys.insert(item.key.as_str())) {
            return Err(crate::StoreError::Invalid(format!(
                "dedupe key {:?} appears twice in one poll of {}",
                twice.key, self.trigger
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// The runs created, with the dedupe key each was created for, in item order.
    pub created: Vec<(String, RunId)>,
    /// Keys that were already recorded (another poller got there first): no run
    /// was created for them. The engine should treat this as a bug or a race.
    pub already_seen: Vec<String>,
    /// Each created run's trigger item as the compact JSON the store wrote, in the order of
    /// `created`, from a store that encodes it anyway (empty otherwise): the engine holds
    /// a waiting run's item in this form instead of a decoded tree several times its size.
    pub created_items: Vec<Box<[u8]>>,
}

/// Which runs [`crate::Store::list_runs`] returns: newest first. The conditions that are
/// set all apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub flow: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs that touched this GHL record (a ref like `contact:abc123`).
    pub touched: Option<String>,
    /// Only runs created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only runs created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only runs older than this id (for paging).
    pub before: Option<RunId>,
    /// At most this many; `0` means no limit.
    pub limit: usize,
}

/// One change to a run; several are applied in one transaction and one flush
/// by [`crate::Store::update_run`], which is how the engine batches.
#[derive(Debug, Clone, PartialEq)]
pub enum RunChange {
    /// The request is about to be sent. Refused if the step already succeeded
    /// or is still `Sent` (a crash left it in doubt: record `InDoubt` or a
    /// result first, so a re-send is always an explicit decision).
    StepStarted { step: String, request: Payload },
    /// The result of a started step: status must not be `Sent`.
    StepFinished { step: String, status: StepStatus, response: Option<Payload>, error: Option<String> },
    /// Entering `Running` counts an attempt; any status change clears a
    /// scheduled retry. `Succeeded` and `Dead` are final.
    Status { status: RunStatus, error: Option<String> },
    /// Fail the run and schedule it for another attempt at `at`.
    RetryAt { at: DateTime<Utc>, error: String },
    /// Like `RetryAt` for an attempt that sent nothing (the location's daily budget was
    /// spent): it does not count against the run's attempts.
    Defer { at: DateTime<Utc>, error: String },
    /// An operator's replay: a `dead` run (or an `in_doubt` one, if `in_doubt`) becomes
    /// `pending` again for a new series of attempts; anything else is refused, so the same
    /// replay asked twice acts once. Steps that succeeded keep their result and are not
    /// sent again; an in-doubt step becomes `failed`, to be sent again.
    Replay { in_doubt: bool },
    /// Adds GHL records the run touched (refs like `contact:abc123`) to
    /// [`Run::touched`], each once, whatever the run's status. A ref must be non-empty
    /// text without NUL.
    Touched { records: Vec<String> },
    /// Changes nothing; refused unless the run is `status`. Lets a writer that did not
    /// read the record first (the engine starting a run it has just created) be sure it
    /// acts on what it believes.
    Expect { status: RunStatus },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    pub payload: Value,
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub processed_at: Option<DateTime<Utc>>,
}

/// What [`crate::Store::prune`] may drop. `None` limits are not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Drop seen keys first seen longer ago than this...
    pub seen_max_age: Option<Duration>,
    /// ...but always keep this many of the most recently seen keys per trigger,
    /// so items still inside the poll window never fire again. Set it to at
    /// least the largest page a trigger reads.
    pub seen_keep_per_trigger: usize,
    /// Drop finished runs (succeeded, dead) last updated longer ago than this.
    pub runs_max_age: Option<Duration>,
    /// Keep at most this many finished runs (the newest) in the whole store.
    pub runs_keep: Option<usize>,
    /// Drop processed webhook events received longer ago than this.
    pub webhooks_max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Retention {
            seen_max_age: Some(Duration::from_secs(90 * DAY)),
            seen_keep_per_trigger: 1000,
            runs_max_age: Some(Duration::from_secs(30 * DAY)),
            runs_keep: Some(100_000),
            webhooks_max_age: Some(Duration::from_secs(7 * DAY)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub seen_removed: u64,
    pub runs_removed: u64,
    pub webhooks_removed: u64,
}
