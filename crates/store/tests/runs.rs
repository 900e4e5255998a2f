#[macro_use]
mod common;

use common::*;
use serde_json::json;
use store::{NewRun, OpenStore, RunChange, RunFilter, RunId, RunStatus, StepStatus, Store, StoreError};

fn running(s: &impl Store, flow: &str) -> RunId {
    let id = s.create_run(&NewRun::new(flow, json!({"x": 1}))).unwrap();
    s.set_run_status(id, RunStatus::Running, None).unwrap();
    id
}

fn a_run_and_its_steps_round_trip_across_reopen<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    let id = running(&s, "f");
    let t0 = clock.now();
    s.mark_step_started(id, "create_contact", &json!({"method": "POST", "path": "/contacts/"})).unwrap();
    let mid = s.get_run(id).unwrap().unwrap();
    assert_eq!(mid.step("create_contact").unwrap().status, StepStatus::Sent);
    clock.advance_secs(2);
    s.record_step_result(id, "create_contact", StepStatus::Succeeded, Some(&json!({"id": "c1"})), None).unwrap();
    s.mark_step_started(id, "tag", &json!({"tags": ["new"]})).unwrap();
    s.record_step_result(id, "tag", StepStatus::Failed, None, Some("422 bad tag")).unwrap();
    s.set_run_status(id, RunStatus::Dead, Some("tag failed")).unwrap();

    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    let run = s.get_run(id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Dead);
    assert_eq!(run.attempts, 1);
    assert_eq!(run.error.as_deref(), Some("tag failed"));
    assert_eq!(run.item, json!({"x": 1}));
    let c = run.step("create_contact").unwrap();
    assert_eq!(c.status, StepStatus::Succeeded);
    assert_eq!(*c.request, json!({"method": "POST", "path": "/contacts/"}));
    assert_eq!(c.response.as_deref(), Some(&json!({"id": "c1"})));
    assert_eq!(c.started_at, t0);
    assert_eq!(c.finished_at, Some(t0 + chrono::Duration::seconds(2)));
    assert_eq!(c.tries, 1);
    let t = run.step("tag").unwrap();
    assert_eq!(t.status, StepStatus::Failed);
    assert_eq!(t.error.as_deref(), Some("422 bad tag"));
    assert_eq!(run.steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(), ["create_contact", "tag"]);
    assert!(s.get_run(RunId(999_999)).unwrap().is_none());
}

fn steps_cannot_fire_twice<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let id = running(&s, "f");
    s.mark_step_started(id, "a", &json!(1)).unwrap();
    // Still `sent` (as after a crash): a re-send must be decided explicitly.
    assert!(matches!(s.mark_step_started(id, "a", &json!(1)), Err(StoreError::Conflict(_))));
    s.record_step_result(id, "a", StepStatus::InDoubt, None, Some("timeout")).unwrap();
    s.mark_step_started(id, "a", &json!(2)).unwrap();
    assert_eq!(s.get_run(id).unwrap().unwrap().step("a").unwrap().tries, 2);
    s.record_step_result(id, "a", StepStatus::Succeeded, None, None).unwrap();
    let err = s.mark_step_started(id, "a", &json!(3)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // Results need a started step, and `sent` is not a result.
    assert!(matches!(
        s.record_step_result(id, "never", StepStatus::Succeeded, None, None),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(s.record_step_result(id, "a", StepStatus::Sent, None, None), Err(StoreError::Invalid(_))));
    assert!(matches!(s.record_step_result(id, "a", StepStatus::Failed, None, None), Err(StoreError::Conflict(_))));
    // Steps only start on running runs; finished runs stay finished.
    let p = s.create_run(&NewRun::new("f", json!(null))).unwrap();
    assert!(matches!(s.mark_step_started(p, "a", &json!(1)), Err(StoreError::Conflict(_))));
    s.set_run_status(id, RunStatus::Succeeded, None).unwrap();
    assert!(matches!(s.set_run_status(id, RunStatus::Running, None), Err(StoreError::Conflict(_))));
    assert!(matches!(s.set_run_status(RunId(424242), RunStatus::Running, None), Err(StoreError::RunNotFound(_))));
}

fn a_refused_batch_changes_nothing<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let id = s.create_run(&NewRun::new("f", json!(null))).unwrap();
    let changes = [
        RunChange::Status { status: RunStatus::Running, error: None },
        RunChange::StepStarted { step: "a".into(), request: json!(1).into() },
        RunChange::StepStarted { step: "a".into(), request: json!(1).into() },
    ];
    assert!(s.update_run(id, &changes).is_err());
    let run = s.get_run(id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Pending);
    assert!(run.steps.is_empty());
    assert_eq!(run.attempts, 0);
    // The batch without the bad change applies as one.
    let run = s.update_run(id, &changes[..2]).unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.steps.len(), 1);
    assert_eq!(s.get_run(id).unwrap().unwrap(), run);
}

fn list_runs_filters_newest_first_and_pages<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let mut a = vec![];
    let mut b = vec![];
    for i in 0..5 {
        a.push(s.create_run(&NewRun::new("a", json!(i))).unwrap());
        b.push(s.create_run(&NewRun::new("a-b", json!(i))).unwrap());
    }
    s.set_run_status(a[1], RunStatus::Running, None).unwrap();
    s.set_run_status(b[2], RunStatus::Running, None).unwrap();

    let all = s.list_runs(&RunFilter::default()).unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    let ids = |f: RunFilter| s.list_runs(&f).unwrap().iter().map(|r| r.id).collect::<Vec<_>>();
    let mut a_rev = a.clone();
    a_rev.reverse();
    assert_eq!(ids(RunFilter { flow: Some("a".into()), ..Default::default() }), a_rev);
    assert_eq!(ids(RunFilter { flow: Some("a".into()), limit: 2, ..Default::default() }), a_rev[..2]);
    assert_eq!(
        ids(RunFilter { flow: Some("a".into()), before: Some(a[3]), ..Default::default() }),
        vec![a[2], a[1], a[0]]
    );
    assert_eq!(ids(RunFilter { status: Some(RunStatus::Running), ..Default::default() }), vec![b[2], a[1]]);
    assert_eq!(
        ids(RunFilter { status: Some(RunStatus::Running), flow: Some("a".into()), ..Default::default() }),
        vec![a[1]]
    );
    assert_eq!(
        ids(RunFilter { status: Some(RunStatus::Pending), before: Some(a[1]), ..Default::default() }),
        vec![b[0], a[0]]
    );
    assert_eq!(ids(RunFilter { before: Some(a[1]), ..Default::default() }), vec![b[0], a[0]]);
    assert_eq!(ids(RunFilter { limit: 3, ..Default::default() }), vec![b[4], a[4], b[3]]);
}

fn resumable_retries_and_held_runs<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let s = store_in::<S>(&dir).with_clock(clock.clock());
    let pending = s.create_run(&NewRun::new("f", json!(1))).unwrap();
    let run = running(&s, "f");
    let done = running(&s, "f");
    s.set_run_status(done, RunStatus::Succeeded, None).unwrap();
    let r1 = running(&s, "f");
    let r2 = running(&s, "f");
    let t = clock.now();
    s.schedule_retry(r1, t + chrono::Duration::seconds(10), "429").unwrap();
    s.schedule_retry(r2, t + chrono::Duration::seconds(60), "500").unwrap();
    let held1 = s.create_run(&NewRun { held: true, ..NewRun::new("paused", json!(1)) }).unwrap();
    let held2 = s.create_run(&NewRun { held: true, ..NewRun::new("paused", json!(2)) }).unwrap();
    let held_other = s.create_run(&NewRun { held: true, ..NewRun::new("other", json!(3)) }).unwrap();

    let ids = |v: Vec<store::Run>| v.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_resumable().unwrap()), vec![pending, run]);

    assert!(s.list_due_retries(t, 0).unwrap().is_empty());
    assert_eq!(ids(s.list_due_retries(t + chrono::Duration::seconds(10), 0).unwrap()), vec![r1]);
    assert_eq!(ids(s.list_due_retries(t + chrono::Duration::seconds(61), 0).unwrap()), vec![r1, r2]);
    assert_eq!(ids(s.list_due_retries(t + chrono::Duration::seconds(61), 1).unwrap()), vec![r1]);
    let r = s.get_run(r1).unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("429"));
    // Picking the retry up takes it off the retry list and counts an attempt.
    s.set_run_status(r1, RunStatus::Running, None).unwrap();
    let r = s.get_run(r1).unwrap().unwrap();
    assert_eq!((r.attempts, r.next_retry_at), (2, None));
    assert_eq!(ids(s.list_due_retries(t + chrono::Duration::seconds(61), 0).unwrap()), vec![r2]);
    // Rescheduling moves it in the index rather than adding a second entry.
    s.schedule_retry(r2, t + chrono::Duration::seconds(5), "500").unwrap();
    assert_eq!(ids(s.list_due_retries(t + chrono::Duration::seconds(61), 0).unwrap()), vec![r2]);

    assert_eq!(ids(s.list_held("paused").unwrap()), vec![held1, held2]);
    assert_eq!(s.release_held("paused").unwrap(), vec![held1, held2]);
    assert!(s.list_held("paused").unwrap().is_empty());
    assert_eq!(ids(s.list_held("other").unwrap()), vec![held_other]);
    assert_eq!(s.get_run(held1).unwrap().unwrap().status, RunStatus::Pending);
    assert!(s.release_held("paused").unwrap().is_empty());
    assert_eq!(ids(s.list_resumable().unwrap()), vec![pending, run, r1, held1, held2]);
}

fn a_corrupt_run_record_is_an_error_not_a_panic<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let s = S::create_or_open(&path).unwrap();
    let id = s.create_run(&NewRun::new("f", json!(1))).unwrap();
    drop(s);
    raw_write::<S>(&path, "runs", &[(&id.0.to_be_bytes(), Some(b"{not json"))]);
    let s = S::open(&path).unwrap();
    assert!(matches!(s.get_run(id), Err(StoreError::Corrupt { tree: "runs", .. })));
    assert!(matches!(s.list_resumable(), Err(StoreError::Corrupt { .. })));
    assert!(matches!(s.set_run_status(id, RunStatus::Running, None), Err(StoreError::Corrupt { .. })));
}

fn expect_refuses_a_run_in_another_status_and_leaves_it_as_it_was<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let a = s.create_run(&NewRun::new("f", json!(1))).unwrap();
    let b = s.create_run(&NewRun::new("f", json!(2))).unwrap();
    let running = RunChange::Status { status: RunStatus::Running, error: None };
    let results = s
        .update_runs(&[
            (a, vec![RunChange::Expect { status: RunStatus::Pending }, running.clone()]),
            (b, vec![RunChange::Expect { status: RunStatus::Running }, running]),
        ])
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(StoreError::Conflict(m)) if m.contains("expected it running")), "{results:?}");
    assert_eq!(s.get_run(a).unwrap().unwrap().status, RunStatus::Running);
    let b_run = s.get_run(b).unwrap().unwrap();
    assert_eq!((b_run.status, b_run.attempts), (RunStatus::Pending, 0));
}

/// Runs created by a poll and written in batches (the engine's path, served by the store's
/// cache of open records) read back the same after a reopen, indexes included.
fn batched_updates_of_polled_runs_survive_a_reopen_with_their_indexes<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let out = s.commit_poll(&poll("t", "f", &["a", "b", "c"], None)).unwrap();
    let ids: Vec<RunId> = out.created.iter().map(|(_, id)| *id).collect();
    let start = |id: RunId| {
        (
            id,
            vec![
                RunChange::Expect { status: RunStatus::Pending },
                RunChange::Status { status: RunStatus::Running, error: None },
                RunChange::StepStarted { step: "task".into(), request: json!({"n": id.0}).into() },
            ],
        )
    };
    let finish = |id: RunId| {
        (
            id,
            vec![
                RunChange::StepFinished {
                    step: "task".into(),
                    status: StepStatus::Succeeded,
                    response: Some(json!({"id": format!("t{}", id.0)}).into()),
                    error: None,
                },
                RunChange::Status { status: RunStatus::Succeeded, error: None },
            ],
        )
    };
    let started = s.update_runs(&ids.iter().map(|id| start(*id)).collect::<Vec<_>>()).unwrap();
    assert!(started.iter().all(Result::is_ok), "{started:?}");
    // The second write of the first two runs and a start of the third again (refused: its
    // step is `sent`), in one batch.
    let mut batch: Vec<_> = ids[..2].iter().map(|id| finish(*id)).collect();
    batch.push((ids[2], vec![RunChange::StepStarted { step: "task".into(), request: json!(0).into() }]));
    let results = s.update_runs(&batch).unwrap();
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(matches!(results[2], Err(StoreError::Conflict(_))));

    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    for (n, id) in ids.iter().enumerate() {
        let run = s.get_run(*id).unwrap().unwrap();
        let step = run.step("task").unwrap();
        assert_eq!(*step.request, json!({"n": id.0}));
        assert_eq!(run.attempts, 1);
        if n < 2 {
            assert_eq!((run.status, step.status), (RunStatus::Succeeded, StepStatus::Succeeded));
            assert_eq!(step.response.as_deref(), Some(&json!({"id": format!("t{}", id.0)})));
        } else {
            assert_eq!((run.status, step.status), (RunStatus::Running, StepStatus::Sent));
        }
    }
    let by_status = |status| {
        let mut ids: Vec<RunId> = s
            .list_runs(&RunFilter { status: Some(status), ..RunFilter::default() })
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(by_status(RunStatus::Succeeded), ids[..2].to_vec());
    assert_eq!(by_status(RunStatus::Running), ids[2..].to_vec());
    assert!(by_status(RunStatus::Pending).is_empty());
}

fn transaction_time_counts_poll_commits_and_update_batches<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    assert_eq!(s.transaction_time(), store::TransactionTime::default());
    let items = (0..50)
        .map(|i| store::PollItem { key: format!("k{i}"), run: Some(NewRun::new("f", json!({"i": i}))) })
        .collect();
    let out = s.commit_poll(&store::PollCommit { lease: None, trigger: "t".into(), state: None, items }).unwrap();
    let start: Vec<_> = out
        .created
        .iter()
        .map(|(_, id)| (*id, vec![RunChange::Status { status: RunStatus::Running, error: None }]))
        .collect();
    s.update_runs(&start).unwrap();
    s.update_runs(&start[..1]).unwrap();
    let t = s.transaction_time();
    assert_eq!((t.polls.transactions, t.updates.transactions), (1, 2));
    // 50 runs written under the lock take measurable time; nothing else held it.
    assert!(t.polls.held > std::time::Duration::ZERO && t.updates.held > std::time::Duration::ZERO, "{t:?}");
    // Each call above flushed once (group commit has no one else to share with).
    assert_eq!(t.flushes, 3, "{t:?}");
    // Other writes are not counted as transactions; their flush is.
    s.put_tokens("a", &json!({"t": 1})).unwrap();
    let after = s.transaction_time();
    assert_eq!((after.polls, after.updates, after.flushes), (t.polls, t.updates, t.flushes + 1));
}

/// A replay turns a dead run pending once, keeps what succeeded, and survives a reopen
/// as a run to resume; asked again, or of an in-doubt run without consent, it is refused.
fn replay_makes_a_dead_run_pending_once<S: OpenStore>() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in::<S>(&dir);
    let dead = running(&s, "f");
    s.mark_step_started(dead, "a", &json!({})).unwrap();
    s.record_step_result(dead, "a", StepStatus::Succeeded, Some(&json!({"id": 1})), None).unwrap();
    s.mark_step_started(dead, "b", &json!({})).unwrap();
    s.record_step_result(dead, "b", StepStatus::Failed, None, Some("422")).unwrap();
    s.set_run_status(dead, RunStatus::Dead, Some("b failed")).unwrap();
    let doubt = running(&s, "f");
    s.mark_step_started(doubt, "a", &json!({})).unwrap();
    s.record_step_result(doubt, "a", StepStatus::InDoubt, None, Some("timed out")).unwrap();
    s.set_run_status(doubt, RunStatus::InDoubt, None).unwrap();

    let run = s.update_run(dead, &[RunChange::Replay { in_doubt: false }]).unwrap();
    assert_eq!((run.status, run.attempts, run.replays, run.error.as_deref()), (RunStatus::Pending, 0, 1, None));
    assert_eq!(run.step("a").unwrap().status, StepStatus::Succeeded);
    let again = s.update_run(dead, &[RunChange::Replay { in_doubt: true }]).unwrap_err();
    assert!(matches!(&again, StoreError::Conflict(m) if m.contains("it is pending")), "{again}");
    let refused = s.update_run(doubt, &[RunChange::Replay { in_doubt: false }]).unwrap_err();
    assert!(matches!(&refused, StoreError::Conflict(m) if m.contains("--include-in-doubt")), "{refused}");
    assert_eq!(s.get_run(doubt).unwrap().unwrap().status, RunStatus::InDoubt);
    let run = s.update_run(doubt, &[RunChange::Replay { in_doubt: true }]).unwrap();
    assert_eq!((run.status, run.step("a").unwrap().status), (RunStatus::Pending, StepStatus::Failed));

    let path = s.path().unwrap().to_path_buf();
    drop(s);
    let s = S::open(&path).unwrap();
    let mut resumable: Vec<RunId> = s.list_resumable().unwrap().into_iter().map(|r| r.id).collect();
    resumable.sort();
    assert_eq!(resumable, [dead, doubt]);
    let filter = |status| RunFilter { status: Some(status), ..RunFilter::default() };
    assert!(s.list_runs(&filter(RunStatus::Dead)).unwrap().is_empty());
    assert!(s.list_runs(&filter(RunStatus::InDoubt)).unwrap().is_empty());
    assert_eq!(s.get_run(dead).unwrap().unwrap().replays, 1);
}

on_each_backend!(
    replay_makes_a_dead_run_pending_once,
    a_run_and_its_steps_round_trip_across_reopen,
    steps_cannot_fire_twice,
    a_refused_batch_changes_nothing,
    list_runs_filters_newest_first_and_pages,
    resumable_retries_and_held_runs,
    expect_refuses_a_run_in_another_status_and_leaves_it_as_it_was,
    batched_updates_of_polled_runs_survive_a_reopen_with_their_indexes,
    transaction_time_counts_poll_commits_and_update_batches,
);

// A PostgreSQL `json` column cannot hold a record that does not parse.
on_each_embedded_backend!(a_corrupt_run_record_is_an_error_not_a_panic);
