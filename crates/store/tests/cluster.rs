//! Several nodes on one PostgreSQL store ([`store::Cluster`]): trigger leases with a fencing
//! epoch, run claims by `SKIP LOCKED`, what a node that was superseded or left may still
//! write, and the account lock of an OAuth refresh.
//!
//! Needs `FLOWD_TEST_POSTGRES` (README, "Tests"): fails without it under CI=true.

#[macro_use]
#[allow(unused)]
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::Pg;
use serde_json::json;
use store::{
    ClaimScope, Cluster, NewRun, NodeOptions, OpenStore, PgOptions, PgStore, PollCommit, PollItem, RunChange,
    RunStatus, Store, StoreError,
};

fn node(options: &PgOptions, name: &str, ttl: Duration) -> PgStore {
    let options = PgOptions {
        application_name: name.into(),
        node: Some(NodeOptions { name: name.into(), lease_ttl: ttl, polls: true }),
        ..options.clone()
    };
    PgStore::connect(&options, store::pg::Create::Yes).expect("connect")
}

fn schema() -> (tempfile::TempDir, PgOptions) {
    let dir = tempfile::tempdir().unwrap();
    let first = Pg::create_or_open(&dir.path().join("db")).unwrap();
    (dir, first.options())
}

fn triggers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("flow{i}/contacts.search")).collect()
}

fn poll(trigger: &str, keys: &[&str], lease: Option<i64>) -> PollCommit {
    PollCommit {
        trigger: trigger.into(),
        state: Some(json!({ "cursor": keys.len() })),
        items: keys
            .iter()
            .map(|k| PollItem { key: k.to_string(), run: Some(NewRun::new("f", json!({ "id": k }))) })
            .collect(),
        lease,
    }
}

/// Claims runs of flow "f" (the one [`poll`] creates), none of `holding`.
fn claim(node: &PgStore, limit: usize, holding: &[store::RunId]) -> Vec<store::ClaimedRun> {
    node.claim_runs(limit, ClaimScope { flows: &["f".to_string()], holding }).expect("claim")
}

fn epoch(beat: &store::Heartbeat, trigger: &str) -> Option<i64> {
    beat.leases.iter().find(|(t, _)| t == trigger).map(|(_, e)| *e)
}

#[test]
fn nodes_share_the_triggers_and_a_late_node_gets_its_part() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let wanted = triggers(6);
    let a = node(&options, "a", Duration::from_secs(30));
    let first = a.heartbeat(&wanted).expect("beat");
    assert_eq!(first.leases.len(), 6, "alone, a node takes every trigger");
    let b = node(&options, "b", Duration::from_secs(30));
    let b1 = b.heartbeat(&wanted).expect("beat");
    assert!(b1.leases.is_empty(), "nothing is free yet: {b1:?}");
    assert_eq!(b1.live_nodes, 2);
    let a2 = a.heartbeat(&wanted).expect("beat");
    assert_eq!(a2.leases.len(), 3, "a gives up what is past its share: {a2:?}");
    assert_eq!(a2.released.len(), 3);
    let b2 = b.heartbeat(&wanted).expect("beat");
    assert_eq!(b2.leases.len(), 3, "b takes the released leases: {b2:?}");
    let held: HashSet<&String> = a2.leases.iter().chain(&b2.leases).map(|(t, _)| t).collect();
    assert_eq!(held.len(), 6, "every trigger has exactly one holder");
    assert!(b2.taken_over.is_empty(), "released leases are not takeovers");
    // Each trigger's epoch moved on when it changed hands.
    for (t, e) in &b2.leases {
        assert_eq!(epoch(&first, t).map(|e| e + 1), Some(*e), "{t}");
    }
}

#[test]
fn a_poll_commit_under_a_lease_that_moved_is_refused() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let trigger = "flow0/contacts.search";
    let wanted = vec![trigger.to_string()];
    let a = node(&options, "a", Duration::from_secs(1));
    let beat = a.heartbeat(&wanted).expect("beat");
    let old = epoch(&beat, trigger).expect("a holds it");
    a.commit_poll(&poll(trigger, &["k1"], Some(old))).expect("the holder commits");
    // a stops renewing (paused); once the lease expired, b takes it over.
    std::thread::sleep(Duration::from_millis(1300));
    let b = node(&options, "b", Duration::from_secs(30));
    let taken = b.heartbeat(&wanted).expect("beat");
    assert_eq!(taken.taken_over, wanted, "{taken:?}");
    let new = epoch(&taken, trigger).expect("b holds it");
    assert!(new > old);
    // a wakes up with a poll it made under the old lease: refused, nothing written.
    let late = a.commit_poll(&poll(trigger, &["k2", "k3"], Some(old)));
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    assert!(a.filter_unseen(trigger, &["k2".into()]).unwrap()[0], "the refused poll recorded nothing");
    assert_eq!(a.trigger_state(trigger).unwrap(), Some(json!({ "cursor": 1 })), "nor moved the state");
    // And a's next heartbeat no longer lists the lease.
    let after = a.heartbeat(&wanted).expect("beat");
    assert!(epoch(&after, trigger).is_none(), "{after:?}");
    b.commit_poll(&poll(trigger, &["k2"], Some(new))).expect("the new holder commits");
}

#[test]
fn runs_are_claimed_by_one_node_each_and_a_dead_nodes_runs_move() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let trigger = "flow0/contacts.search";
    let a = Arc::new(node(&options, "a", Duration::from_secs(1)));
    let b = Arc::new(node(&options, "b", Duration::from_secs(30)));
    let c = Arc::new(node(&options, "c", Duration::from_secs(30)));
    let beat = a.heartbeat(&[trigger.to_string()]).expect("beat");
    let keys: Vec<String> = (0..600).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let out = a.commit_poll(&poll(trigger, &refs, epoch(&beat, trigger))).expect("commit");
    assert_eq!(out.created.len(), 600);
    // Three nodes claim at once, in batches: every run goes to exactly one of them.
    let start = Arc::new(Barrier::new(3));
    let claimers: Vec<_> = [a.clone(), b.clone(), c.clone()]
        .into_iter()
        .map(|n| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut mine = Vec::new();
                loop {
                    let got = claim(&n, 25, &mine);
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|r| r.id));
                }
            })
        })
        .collect();
    let claimed: Vec<Vec<store::RunId>> = claimers.into_iter().map(|t| t.join().unwrap()).collect();
    let all: Vec<store::RunId> = claimed.iter().flatten().copied().collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (600, 600), "each run claimed once");
    assert!(
        claimed.iter().all(|c| !c.is_empty()),
        "every node got some: {:?}",
        claimed.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // A run a claimed: b may not change it while a is alive.
    let of_a = claimed[0][0];
    let refused = b.update_run(of_a, &[RunChange::Status { status: RunStatus::Running, error: None }]);
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    a.update_run(of_a, &[RunChange::Status { status: RunStatus::Running, error: None }]).expect("its owner may");
    // a stops renewing: its runs, pending and running, go to the next claimer.
    std::thread::sleep(Duration::from_millis(1300));
    let moved = claim(&b, 1000, &claimed[1]);
    assert_eq!(moved.len(), claimed[0].len(), "all of a's runs move to b");
    assert!(moved.iter().all(|r| r.from.as_deref() == Some(a.node_id())));
    // a, woken up, cannot send a step of a run b now holds.
    let late = a.update_run(of_a, &[RunChange::StepStarted { step: "s".into(), request: json!({}).into() }]);
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
}

#[test]
fn a_node_claims_again_its_own_runs_it_lost_track_of_and_only_flows_it_has() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let wanted = triggers(1);
    let a = node(&options, "a", Duration::from_secs(60));
    let b = node(&options, "b", Duration::from_secs(60));
    let beat = a.heartbeat(&wanted).expect("beat");
    b.heartbeat(&wanted).expect("beat");
    // Runs of a poll under a lease belong to nobody until claimed.
    let mut commit = poll(&wanted[0], &["k0", "k1", "k2"], epoch(&beat, &wanted[0]));
    commit.items.push(PollItem { key: "k3".into(), run: Some(NewRun::new("g", json!({}))) });
    let created: Vec<store::RunId> =
        a.commit_poll(&commit).expect("commit").created.into_iter().map(|(_, id)| id).collect();
    let (runs, other) = (created[..3].to_vec(), created[3]);
    // a claims all three; the answer is "lost": a holds none of them.
    let first = claim(&a, 10, &[]);
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), runs);
    assert!(first.iter().all(|r| !r.again && r.from.is_none()), "{first:?}");
    // b, alive beside it, never gets them; a gets back the two it does not hold.
    assert!(claim(&b, 10, &[]).is_empty(), "a live node's runs stay with it");
    let again = claim(&a, 10, &runs[..1]);
    assert_eq!(again.iter().map(|r| r.id).collect::<Vec<_>>(), runs[1..].to_vec());
    assert!(again.iter().all(|r| r.again && r.from.is_none()), "{again:?}");
    // The run of flow "g" goes to a node that has "g" loaded, and to no other.
    let g = a.claim_runs(10, ClaimScope { flows: &["g".to_string()], holding: &runs }).expect("claim");
    assert_eq!(g.iter().map(|r| r.id).collect::<Vec<_>>(), vec![other]);
    assert!(a.claim_runs(10, ClaimScope { flows: &[], holding: &[] }).expect("claim").is_empty());
}

#[test]
fn a_new_start_under_a_name_takes_over_at_once_and_fences_the_old_one() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let wanted = triggers(2);
    let old = node(&options, "web-1", Duration::from_secs(60));
    let beat = old.heartbeat(&wanted).expect("beat");
    let old_epoch = epoch(&beat, &wanted[0]).expect("held");
    let run = old.create_run(&NewRun::new("f", json!({}))).expect("run");
    // The restarted node does not wait a lease period for its earlier self.
    let new = node(&options, "web-1", Duration::from_secs(60));
    let beat = new.heartbeat(&wanted).expect("beat");
    assert_eq!(beat.leases.len(), 2, "{beat:?}");
    assert_eq!(beat.taken_over.len(), 2);
    let claimed = claim(&new, 10, &[]);
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![run]);
    // The old instance learns it was superseded, and cannot commit or send.
    assert!(matches!(old.heartbeat(&wanted), Err(StoreError::Fenced(_))));
    assert!(matches!(old.commit_poll(&poll(&wanted[0], &["x"], Some(old_epoch))), Err(StoreError::Fenced(_))));
    let send = old.update_run(run, &[RunChange::StepStarted { step: "s".into(), request: json!({}).into() }]);
    assert!(matches!(send, Err(StoreError::Fenced(_))), "{send:?}");
    let nodes = new.nodes().expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes.iter().filter(|n| n.alive).count(), 1);
    assert!(nodes.iter().any(|n| n.ended.as_deref() == Some("superseded")));
}

#[test]
fn a_node_that_leaves_hands_its_work_over_and_writes_nothing_more() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let wanted = triggers(1);
    let a = node(&options, "a", Duration::from_secs(60));
    a.heartbeat(&wanted).expect("beat");
    let run = a.create_run(&NewRun::new("f", json!({}))).expect("run");
    a.leave().expect("leave");
    let late = a.update_run(run, &[RunChange::Status { status: RunStatus::Running, error: None }]);
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    let b = node(&options, "b", Duration::from_secs(60));
    let beat = b.heartbeat(&wanted).expect("beat");
    assert_eq!(beat.leases.len(), 1, "the lease is free at once");
    assert_eq!(claim(&b, 10, &[]).len(), 1, "so is the run");
}

#[test]
fn the_account_lock_is_held_by_one_node_at_a_time() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let nodes: Vec<Arc<PgStore>> =
        (0..3).map(|n| Arc::new(node(&options, &format!("n{n}"), Duration::from_secs(60)))).collect();
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (n, inside, most) = (nodes[i % 3].clone(), inside.clone(), most.clone());
            std::thread::spawn(move || {
                let guard = n.lock_account("acct").expect("lock");
                let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                drop(guard);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1, "never two holders at once");
}

#[test]
fn nodes_take_a_locations_budget_together() {
    let Some(_scope) = common::PgScope::enter() else { return };
    let (_dir, options) = schema();
    let a = node(&options, "a", Duration::from_secs(60));
    let b = node(&options, "b", Duration::from_secs(60));
    // A long window, so the test does not straddle two of them.
    let window = Duration::from_secs(600);
    let mut granted = 0;
    for i in 0..20 {
        let n = if i % 2 == 0 { &a } else { &b };
        let g = n.take_budget("loc", window, 9, 1000, 3).expect("take");
        assert!(!g.day_spent);
        assert!(g.window_ends_in <= window);
        granted += g.granted;
    }
    assert_eq!(granted, 9, "the window's 9 requests, shared by both nodes");
    // The day's budget, whatever the windows allow: 5 a day.
    let day = n_take(&a, "loc2", 5);
    assert_eq!(day, (5, true), "five granted, then the day is spent");
}

/// Takes one request at a time of `location`'s daily budget `daily` until refused: how many
/// were granted, and whether the day was then spent.
fn n_take(n: &PgStore, location: &str, daily: u32) -> (u32, bool) {
    let mut got = 0;
    loop {
        let g = n.take_budget(location, Duration::from_secs(600), 100, daily, 1).expect("take");
        if g.granted == 0 {
            return (got, g.day_spent);
        }
        got += g.granted;
    }
}
