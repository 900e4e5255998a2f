//! `flowd replay` as an operator runs it, on a real store in a temp dir, against the
//! sandbox: a repeated `--failed` replays nothing twice, and in_doubt runs are replayed
//! only when asked for.

mod support;

use sandbox::{RateLimitConfig, Sandbox, SandboxConfig, Seed};
use std::path::Path;
use std::process::Output;
use store::{NewRun, RunChange, RunId, RunStatus, StepStatus};

const TOKEN: &str = "pit-replay-test";

const FLOW: &str = r#"name: tasks
account: main
trigger:
  uses: contacts.search_contacts
  with: { locationId: "{{ account.location_id }}" }
  every: 1m
steps:
  - id: task
    uses: contacts.create_task
    with: { contactId: "{{ trigger.id }}", title: "Call {{ trigger.firstName }}", dueDate: "2030-01-01T10:00:00Z", completed: false }
"#;

async fn flowd(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(support::flowd_bin());
    cmd.args(args).current_dir(dir).env_remove("FLOWD_CONFIG").env_remove("RUST_LOG").env("REPLAY_TEST_TOKEN", TOKEN);
    cmd.output().await.expect("flowd runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A run whose step ended `status` and the run `run_status`, as the engine leaves them.
fn ended(s: &dyn store::Store, item: &serde_json::Value, step: StepStatus, run_status: RunStatus) -> RunId {
    let mut new = NewRun::new("tasks", item.clone());
    new.trigger = Some("tasks/contacts.search_contacts/new".into());
    let id = s.create_run(&new).expect("run");
    let changes = [
        RunChange::Status { status: RunStatus::Running, error: None },
        RunChange::StepStarted {
            step: "task".into(),
            request: serde_json::json!({"op": "contacts.create_task"}).into(),
        },
        RunChange::StepFinished {
            step: "task".into(),
            status: step,
            response: None,
            error: Some("step `task`: …".into()),
        },
        RunChange::Status { status: run_status, error: Some("step `task`: …".into()) },
    ];
    s.update_run(id, &changes).expect("ended");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_failed_twice_sends_once_and_leaves_in_doubt_runs_unless_asked() {
    let mut config = SandboxConfig::default().with_seed(Seed::Contacts(3)).with_rate_limit(RateLimitConfig::disabled());
    config.tokens = vec![TOKEN.into()];
    let sb = Sandbox::start(config).await.expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("flows")).expect("flows dir");
    std::fs::write(dir.path().join("flows/tasks.yaml"), FLOW).expect("flow");
    let config = format!(
        "store: ./data\nflows: ./flows\naccounts:\n  main:\n    location_id: {}\n    base_url: {}\n    token: ${{REPLAY_TEST_TOKEN}}\n",
        sb.location_id(),
        sb.base_url()
    );
    std::fs::write(dir.path().join("flowd.yaml"), config).expect("config");
    let contacts = sb.records("contacts");
    let (dead, doubt) = {
        let s = store::create_or_open(dir.path().join("data"), store::Backend::FOR_NEW_STORES).expect("store");
        let dead = [
            ended(&*s, &contacts[0], StepStatus::Failed, RunStatus::Dead),
            ended(&*s, &contacts[1], StepStatus::Failed, RunStatus::Dead),
        ];
        (dead, ended(&*s, &contacts[2], StepStatus::InDoubt, RunStatus::InDoubt))
    };
    let tasks = || sb.records("tasks").len();

    let out = flowd(dir.path(), &["replay", "--failed", "--config", "flowd.yaml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let first = text(&out);
    assert!(first.contains("1 in_doubt run(s) left out"), "{first}");
    assert!(
        first.find("left out").unwrap_or(usize::MAX) < first.find("replayed: succeeded").unwrap_or(0),
        "the count comes first: {first}"
    );
    assert_eq!(tasks(), 2, "the two dead runs, not the in-doubt one: {first}");
    // The database's own INFO lines (one per partition) are not shown unless asked for.
    assert!(!first.contains("fjall") && !first.contains("lsm_tree"), "{first}");

    let out = flowd(dir.path(), &["replay", "--failed", "--config", "flowd.yaml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no dead runs to replay"), "{}", text(&out));
    assert_eq!(tasks(), 2, "a second --failed sends nothing again");

    // One at a time: a run already replayed, and an in_doubt run without the flag, are refused.
    let out = flowd(dir.path(), &["replay", &dead[0].to_string(), "--config", "flowd.yaml"]).await;
    assert!(!out.status.success() && text(&out).contains("it is succeeded"), "{}", text(&out));
    let out = flowd(dir.path(), &["replay", &doubt.to_string(), "--config", "flowd.yaml"]).await;
    assert!(!out.status.success() && text(&out).contains("--include-in-doubt"), "{}", text(&out));
    assert_eq!(tasks(), 2);

    let out = flowd(dir.path(), &["replay", "--failed", "--include-in-doubt", "--config", "flowd.yaml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("including 1 in_doubt run(s)"), "{}", text(&out));
    assert_eq!(tasks(), 3);
    let out = flowd(dir.path(), &["replay", "--failed", "--include-in-doubt", "--config", "flowd.yaml"]).await;
    assert!(out.status.success() && text(&out).contains("no dead runs"), "{}", text(&out));
    assert_eq!(tasks(), 3, "nothing twice");

    let s = store::open(dir.path().join("data")).expect("store");
    for id in dead.into_iter().chain([doubt]) {
        let run = s.get_run(id).expect("store").expect("run");
        assert_eq!((run.status, run.replays, run.attempts), (RunStatus::Succeeded, 1, 1), "{run:?}");
    }
}
