//! Crash safety: a child process commits polls and starts steps, printing each
//! one only after the store call returned; the test SIGKILLs it at a random
//! moment, reopens the store and checks that everything reported is there and
//! that no poll is half-written.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use store::{Backend, NewRun, PollCommit, PollItem, RunChange, RunFilter, RunId, RunStatus, StepStatus};

const CHILD_ENV: &str = "FLOWD_STORE_CRASH_CHILD_DIR";
const CHILD_BACKEND_ENV: &str = "FLOWD_STORE_CRASH_CHILD_BACKEND";
const TRIGGER: &str = "crash-flow:abc123";
const ITEMS_PER_POLL: usize = 10;
const RUNS_PER_POLL: usize = 2;

fn poll_keys(n: u64) -> Vec<String> {
    (0..ITEMS_PER_POLL).map(|j| format!("p{n}-{j}")).collect()
}

/// The child's body. Ignored in normal runs; the parent runs it by name.
#[test]
#[ignore = "run by crash_then_reopen_keeps_everything_reported in a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let backend: Backend = std::env::var(CHILD_BACKEND_ENV).expect("backend").parse().expect("backend name");
    let s = store::create_or_open(&dir, backend).expect("open store");
    let mut n = match s.trigger_state(TRIGGER).expect("state") {
        Some(v) => v["n"].as_u64().expect("n") + 1,
        None => 0,
    };
    // Bounded, in case the parent dies without killing us.
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let items = poll_keys(n)
            .into_iter()
            .enumerate()
            .map(|(j, key)| PollItem {
                run: (j < RUNS_PER_POLL).then(|| NewRun::new("crash-flow", json!({ "key": key }))),
                key,
            })
            .collect();
        let out = s
            .commit_poll(&PollCommit { lease: None, trigger: TRIGGER.into(), state: Some(json!({ "n": n })), items })
            .expect("commit");
        let ids: Vec<String> = out.created.iter().map(|(_, id)| id.to_string()).collect();
        println!("COMMIT {n} {}", ids.join(" "));
        for (_, id) in &out.created {
            s.update_run(
                *id,
                &[
                    RunChange::Status { status: RunStatus::Running, error: None },
                    RunChange::StepStarted { step: "send".into(), request: json!({ "n": n }).into() },
                ],
            )
            .expect("start step");
            println!("SENT {id}");
        }
        n += 1;
    }
}

#[derive(Default)]
struct Reported {
    commits: Vec<(u64, Vec<RunId>)>,
    sent: Vec<RunId>,
}

fn run_child_and_kill(dir: &Path, backend: Backend, kill_after: Duration) -> Reported {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(CHILD_BACKEND_ENV, backend.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Start the clock once the child has committed something, so that the
    // kill lands mid-stream rather than during start-up.
    // The child is a test binary: libtest prints its own lines first.
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("child committed nothing");
        let committed = line.starts_with("COMMIT");
        lines.push(line);
        if committed {
            break;
        }
    }
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "child must die by the signal");
    reader.join().unwrap();
    lines.extend(rx.try_iter());

    let mut rep = Reported::default();
    for line in lines {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("COMMIT") => {
                let n = parts.next().unwrap().parse().unwrap();
                let ids = parts.map(|p| RunId(p.parse().unwrap())).collect();
                rep.commits.push((n, ids));
            }
            Some("SENT") => rep.sent.push(RunId(parts.next().unwrap().parse().unwrap())),
            _ => {}
        }
    }
    rep
}

#[test]
fn crash_then_reopen_keeps_everything_reported_sled() {
    crash_then_reopen_keeps_everything_reported(Backend::Sled);
}

#[test]
fn crash_then_reopen_keeps_everything_reported_fjall() {
    crash_then_reopen_keeps_everything_reported(Backend::Fjall);
}

fn crash_then_reopen_keeps_everything_reported(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut rng = rand::rng();
    let mut total_commits = 0;
    for round in 0..4 {
        // The last round outlives a marker checkpoint (one a second while writing), so a
        // kill after one, or during one, is covered too.
        let kill_after =
            Duration::from_millis(if round == 3 { rng.random_range(1100..1600) } else { rng.random_range(10..400) });
        let rep = run_child_and_kill(&path, backend, kill_after);
        total_commits += rep.commits.len();

        let s = store::open(&path).expect("store reopens after SIGKILL");
        assert_eq!(s.backend(), backend);
        let state_n = s.trigger_state(TRIGGER).unwrap().unwrap()["n"].as_u64().unwrap();
        for (n, ids) in &rep.commits {
            assert!(*n <= state_n, "round {round}: reported poll {n}, state says {state_n}");
            let unseen = s.filter_unseen(TRIGGER, &poll_keys(*n)).unwrap();
            assert!(unseen.iter().all(|u| !u), "round {round}: poll {n} lost keys");
            assert_eq!(ids.len(), RUNS_PER_POLL);
            for id in ids {
                let run = s.get_run(*id).unwrap().unwrap_or_else(|| panic!("run {id} lost"));
                assert_eq!(run.trigger.as_deref(), Some(TRIGGER));
            }
        }
        for id in &rep.sent {
            let run = s.get_run(*id).unwrap().unwrap();
            assert_eq!(run.status, RunStatus::Running, "run {id}");
            assert_eq!(run.step("send").map(|st| st.status), Some(StepStatus::Sent), "run {id}");
        }
        // No half-written poll: every poll up to the stored state is complete
        // with exactly its runs, and the next one left no trace.
        for n in 0..=state_n {
            let unseen = s.filter_unseen(TRIGGER, &poll_keys(n)).unwrap();
            assert!(unseen.iter().all(|u| !u), "round {round}: poll {n} partial");
        }
        let next = s.filter_unseen(TRIGGER, &poll_keys(state_n + 1)).unwrap();
        assert!(next.iter().all(|u| *u), "round {round}: poll {} partial", state_n + 1);
        let runs = s.list_runs(&RunFilter::default()).unwrap();
        assert_eq!(runs.len() as u64, (state_n + 1) * RUNS_PER_POLL as u64);
        let mut ids: Vec<RunId> = runs.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), runs.len(), "run ids unique across crashes");
        eprintln!(
            "{backend} round {round}: killed after {kill_after:?}, {} polls and {} step starts reported, {} polls stored",
            rep.commits.len(),
            rep.sent.len(),
            state_n + 1
        );
    }
    assert!(total_commits > 4, "the child committed too little to prove anything");
}
