//! Running a step with `if:`, `for_each:` or `on_error:` (see `flow::StepControl`).
//!
//! - A skipped step is recorded with status `skipped` (nothing was sent) and its record
//!   holds on a retry or replay: the `if:` is not evaluated again.
//! - Each element of a `for_each` step is a record of its own, `<id>[<index>]`, with its
//!   own "sent" mark, result and tries. A retry, a replay or a resume after a crash sends
//!   only the elements that have not succeeded; an element found `sent` is handled like any
//!   interrupted step (sent again if idempotent, else the run is in doubt).
//! - `on_error: continue` records the failure (status `failed`, response `{"error": ...}`)
//!   and goes on. A failure a later attempt may fix fails the run for that attempt first;
//!   only the last attempt's failure, or one no retry can fix, continues. An in-doubt
//!   request (a POST that timed out) never continues: the run is in doubt, so an operator
//!   decides, as for any step. A recorded continued failure holds on a retry or replay.

use crate::failure::Failure;
use crate::run::{Pending, Runner, StepRun};
use crate::runtime::{FlowRuntime, Step};
use crate::EngineError;
use flow::OnError;
use serde_json::Value;
use std::time::Duration;
use store::{Run, RunStatus, StepStatus};

/// Why a run stops at a step.
pub(crate) struct Stop {
    pub outcome: RunStatus,
    pub error: String,
    /// Set when nothing can be sent before then (the daily budget is spent).
    pub deferred: Option<Duration>,
}

impl Stop {
    /// The stop a step's failure means for the run; `key` names the step (or element).
    pub(crate) fn of(failure: Failure, key: &str) -> Stop {
        let (outcome, e, deferred) = match failure {
            Failure::Retry(e) => (RunStatus::Failed, e, None),
            Failure::Permanent(e) => (RunStatus::Dead, e, None),
            Failure::InDoubt(e) => (RunStatus::InDoubt, e, None),
            Failure::Deferred { after, why } => (RunStatus::Failed, why, Some(after)),
        };
        Stop { outcome, error: format!("step `{key}`: {e}"), deferred }
    }
}

/// What a step's (or element's) record says to do with it when the run starts.
pub(crate) enum Resume {
    /// Done already: this is its `steps.<id>` value.
    Done(Value),
    /// In doubt: the run stops in doubt, with this text.
    InDoubt(String),
    /// Not sent, or failed, or interrupted and safe to send again: send it.
    Send,
}

/// Reads the record `key` of `step` in `run`, recording in `pending` what an interrupted
/// send turned out to be.
pub(crate) fn resume(run: &Run, key: &str, step: &Step, pending: &mut Pending) -> Resume {
    let Some(record) = run.step(key) else { return Resume::Send };
    match record.status {
        StepStatus::Succeeded => Resume::Done(record.response.as_deref().cloned().unwrap_or(Value::Null)),
        StepStatus::Skipped => Resume::Done(flow::skipped_result()),
        StepStatus::InDoubt => {
            Resume::InDoubt(format!("step `{key}` is in doubt; check it, then replay or discard the run"))
        }
        StepStatus::Sent => {
            // A crash between sending and recording: was it sent? Unknown.
            if step.method(&record.request).is_idempotent() {
                pending.finish(key, StepStatus::Failed, None, Some("interrupted; sent again"));
                Resume::Send
            } else {
                let why = format!("step `{key}` was being sent when flowd stopped; it may have reached the other side");
                pending.finish(key, StepStatus::InDoubt, None, Some(&why));
                Resume::InDoubt(why)
            }
        }
        // Only a continued failure records a response with its failure.
        StepStatus::Failed if step.def.control.on_error == OnError::Continue => match record.response.as_deref() {
            Some(v) => Resume::Done(v.clone()),
            None => Resume::Send,
        },
        StepStatus::Failed => Resume::Send,
    }
}

impl Runner<'_> {
    /// Runs a step that has control keys; `Ok(Ok(v))` is its `steps.<id>` value.
    /// `last_attempt`: a failure now would not be retried, so `on_error: continue` takes it.
    pub(crate) async fn run_controlled(
        &self,
        run: &Run,
        rt: &FlowRuntime,
        step: &Step,
        ctx: &mut Value,
        pending: &mut Pending,
        last_attempt: bool,
    ) -> Result<Result<Value, Stop>, EngineError> {
        let control = &step.def.control;
        if let Some(when) = &control.when {
            // A recorded decision holds: a step (or its first element) with a record has
            // had its `if:` evaluated, and a retry must not decide differently (its
            // context's `now` has moved on).
            let decided = match run.step(step.id()) {
                Some(r) => Some(r.status != StepStatus::Skipped),
                None => run.step(&flow::element_key(step.id(), 0)).map(|_| true),
            };
            match decided.map(Ok).unwrap_or_else(|| when.matches(ctx)) {
                Ok(true) => {}
                Ok(false) => {
                    pending.skip(step.id());
                    return Ok(Ok(flow::skipped_result()));
                }
                Err(e) => {
                    let failure = Failure::Permanent(format!("cannot render `if`: {e}"));
                    return Ok(self.failed(step, step.id(), failure, pending, last_attempt));
                }
            }
        }
        let Some(for_each) = &control.for_each else {
            return self.once(run, rt, step, step.id(), ctx, pending, last_attempt).await;
        };
        // Not subject to `on_error`: a list longer than the flow allows is the flow's
        // mistake, and continuing would hide that nothing was sent for it.
        let list = match flow::elements(for_each, ctx) {
            Ok(list) => list,
            Err(e) => return Ok(Err(Stop::of(Failure::Permanent(e), step.id()))),
        };
        let mut results = Vec::with_capacity(list.len());
        for (i, item) in list.into_iter().enumerate() {
            let key = flow::element_key(step.id(), i);
            flow::enter_element(ctx, item, i);
            let done = self.once(run, rt, step, &key, ctx, pending, last_attempt).await;
            flow::leave_element(ctx);
            match done? {
                Ok(v) => results.push(v),
                Err(stop) => return Ok(Err(stop)),
            }
        }
        Ok(Ok(Value::Array(results)))
    }

    /// Runs the record `key` of `step` once (unless its record says it is done).
    #[allow(clippy::too_many_arguments)]
    async fn once(
        &self,
        run: &Run,
        rt: &FlowRuntime,
        step: &Step,
        key: &str,
        ctx: &Value,
        pending: &mut Pending,
        last_attempt: bool,
    ) -> Result<Result<Value, Stop>, EngineError> {
        match resume(run, key, step, pending) {
            Resume::Done(v) => return Ok(Ok(v)),
            Resume::InDoubt(why) => return Ok(Err(Stop { outcome: RunStatus::InDoubt, error: why, deferred: None })),
            Resume::Send => {}
        }
        let one = StepRun { id: run.id, flow: &rt.name, account: &rt.account, step, key, keep_result: true };
        Ok(match self.run_step(&one, ctx, pending).await? {
            Ok(v) => Ok(v.unwrap_or(Value::Null)),
            Err(failure) => self.failed(step, key, failure, pending, last_attempt),
        })
    }

    /// A failure of `key`: continued (recorded, the run goes on) when `on_error` and the
    /// kind of failure allow it, else the run's stop.
    fn failed(
        &self,
        step: &Step,
        key: &str,
        failure: Failure,
        pending: &mut Pending,
        last_attempt: bool,
    ) -> Result<Value, Stop> {
        let continues = step.def.control.on_error == OnError::Continue
            && match &failure {
                Failure::Permanent(_) => true,
                Failure::Retry(_) => last_attempt,
                Failure::InDoubt(_) | Failure::Deferred { .. } => false,
            };
        if !continues {
            return Err(Stop::of(failure, key));
        }
        let text = match &failure {
            Failure::Retry(e) | Failure::Permanent(e) | Failure::InDoubt(e) | Failure::Deferred { why: e, .. } => e,
        };
        tracing::info!(step = %key, error = %text, "step failed; the run goes on (on_error: continue)");
        let result = flow::error_result(text);
        pending.continue_past(key, result.clone());
        Ok(result)
    }
}
