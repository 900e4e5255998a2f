//! The rules for changing a run, kept apart from storage so that both the
//! rules and their refusals are the same whatever writes the record.
//!
//! The rules exist for the "never fire twice" promise: a step that succeeded
//! cannot be started again, a step left `Sent` by a crash cannot be silently
//! re-sent, and finished runs stay finished.

use chrono::{DateTime, Utc};

use crate::error::{Result, StoreError};
use crate::model::{NewRun, NewRunFields, Run, RunChange, RunId, RunStatus, StepRecord, StepStatus};

/// The record of a new run, without its item: the store keeps the item apart (it never
/// changes) and puts it back when the run is read.
pub fn new_run(id: RunId, new: &NewRun, trigger: Option<&str>, dedupe_key: Option<&str>, now: DateTime<Utc>) -> Run {
    let fields = NewRunFields {
        flow: new.flow.clone(),
        trigger: trigger.map(str::to_string).or_else(|| new.trigger.clone()),
        dedupe_key: dedupe_key.map(str::to_string),
        held: new.held,
        touched: new.touched.clone(),
    };
    Run::new(id, fields, serde_json::Value::Null, now)
}

fn conflict(run: &Run, reason: String) -> StoreError {
    StoreError::Conflict(format!("run {} ({}): {reason}", run.id, run.flow))
}

pub fn apply(run: &mut Run, change: &RunChange, now: DateTime<Utc>) -> Result<()> {
    match change {
        RunChange::StepStarted { step, request } => {
            if run.status != RunStatus::Running {
                return Err(conflict(
                    run,
                    format!("cannot start step {step:?}: the run is {}, not running", run.status),
                ));
            }
            match run.steps.iter_mut().find(|s| &s.step == step) {
                Some(s) if s.status == StepStatus::Succeeded => {
                    return Err(conflict(
                        run,
                        format!("step {step:?} already succeeded; sending it again would fire twice"),
                    ))
                }
                Some(s) if s.status == StepStatus::Sent => {
                    return Err(conflict(
                        run,
                        format!("step {step:?} was sent and has no result (it may have reached GHL); record its outcome before sending it again"),
                    ))
                }
                Some(s) => {
                    s.status = StepStatus::Sent;
                    s.request = request.clone();
                    s.response = None;
                    s.error = None;
                    s.started_at = now;
                    s.finished_at = None;
                    s.tries = s.tries.saturating_add(1);
                }
                None => run.steps.push(StepRecord {
                    step: step.clone(),
                    status: StepStatus::Sent,
                    request: request.clone(),
                    response: None,
                    started_at: now,
                    finished_at: None,
                    error: None,
                    tries: 1,
                }),
            }
        }
        RunChange::StepFinished { step, status, response, error } => {
            if *status == StepStatus::Sent {
                return Err(StoreError::Invalid("a step result cannot have status `sent`".into()));
            }
            let run_id = run.id;
            let flow = run.flow.clone();
            let Some(s) = run.steps.iter_mut().find(|s| &s.step == step) else {
                return Err(StoreError::Conflict(format!(
                    "run {run_id} ({flow}): step {step:?} has no record of being started"
                )));
            };
            if !matches!(s.status, StepStatus::Sent | StepStatus::InDoubt) {
                return Err(StoreError::Conflict(format!(
                    "run {run_id} ({flow}): step {step:?} already finished as {:?}",
                    s.status
                )));
            }
            s.status = *status;
            s.response = response.clone();
            s.error = error.clone();
            s.finished_at = Some(now);
        }
        RunChange::Status { status, error } => {
            if run.status.is_final() && run.status != *status {
                return Err(conflict(run, format!("the run is {} (final); cannot make it {status}", run.status)));
            }
            if *status == RunStatus::Running && run.status != RunStatus::Running {
                run.attempts = run.attempts.saturating_add(1);
            }
            run.status = *status;
            run.next_retry_at = None;
            if *status == RunStatus::Succeeded {
                run.error = None;
            } else if error.is_some() {
                run.error = error.clone();
            }
        }
        RunChange::Replay { in_doubt } => {
            let replayable = match run.status {
                RunStatus::Dead => true,
                RunStatus::InDoubt => *in_doubt,
                _ => false,
            };
            if !replayable {
                let what = if run.status == RunStatus::InDoubt {
                    "it may have reached GHL: check, then replay it with --include-in-doubt".to_string()
                } else {
                    format!("it is {}; only dead and in_doubt runs are replayed", run.status)
                };
                return Err(conflict(run, format!("not replayed: {what}")));
            }
            for s in run.steps.iter_mut().filter(|s| matches!(s.status, StepStatus::InDoubt | StepStatus::Sent)) {
                s.status = StepStatus::Failed;
                s.error = Some(format!("{} (replayed)", s.error.as_deref().unwrap_or("in doubt")));
                s.finished_at.get_or_insert(now);
            }
            run.status = RunStatus::Pending;
            run.attempts = 0;
            run.replays = run.replays.saturating_add(1);
            run.next_retry_at = None;
            run.error = None;
        }
        RunChange::Touched { records } => {
            for r in records {
                if !run.touched.contains(r) {
                    run.touched.push(r.clone());
                }
            }
            return Ok(());
        }
        RunChange::Expect { status } => {
            if run.status != *status {
                return Err(conflict(run, format!("expected it {status}, but it is {}", run.status)));
            }
            return Ok(());
        }
        RunChange::RetryAt { at, error } => {
            if run.status.is_final() {
                return Err(conflict(run, format!("the run is {} (final); cannot retry it", run.status)));
            }
            run.status = RunStatus::Failed;
            run.next_retry_at = Some(*at);
            run.error = Some(error.clone());
        }
        RunChange::Defer { at, error } => {
            if run.status.is_final() {
                return Err(conflict(run, format!("the run is {} (final); cannot defer it", run.status)));
            }
            run.status = RunStatus::Failed;
            run.next_retry_at = Some(*at);
            run.error = Some(error.clone());
            run.attempts = run.attempts.saturating_sub(1);
        }
    }
    run.updated_at = now;
    Ok(())
}
