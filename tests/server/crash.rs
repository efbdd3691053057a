//! The server dies mid-build (`kill -9`, or SIGTERM) and `serve` starts again: the interrupted
//! requests finish, nothing that was AVAILABLE runs again, and a StreamEvents client that
//! reconnects from its last seq + 1 sees every event exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use databuild::proto::build_event::EventType;
use databuild::proto::{
    BuildEvent, BuildRequestStatus, GraphBuildRequest, JobFailureKind, JobStatus, PartitionRef,
    PartitionStatus, StreamEventsRequest, SubmitBuildRequest,
};
use tokio::sync::mpsc;

use crate::harness::{
    DataBuildControlClient, Server, hold, lattice, release, request_ends, request_status, rt,
};
use crate::util::{DEADLINE, Env};

/// Follows the whole log from seq 1 across server restarts: each URL received is a (new) server
/// to reconnect to, from the last seq seen + 1. Ends at `request`'s terminal event.
async fn follow_across(
    mut urls: mpsc::UnboundedReceiver<String>,
    request: String,
) -> Vec<(u64, String)> {
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut connections = 0;
    while let Some(url) = urls.recv().await {
        connections += 1;
        let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await;
        let mut c = DataBuildControlClient::new(channel.expect("connect"));
        let since = got.last().map_or(1, |(s, _)| s + 1);
        let req =
            StreamEventsRequest { since_seq: since, follow: true, build_request_id: String::new() };
        let mut s = c.stream_events(req).await.expect("StreamEvents").into_inner();
        // The server's death ends the stream with an error (kill -9) or an end (SIGTERM).
        while let Ok(Some(e)) = s.message().await {
            let ev = e.event.unwrap();
            let done = ev.build_request_id == request
                && request_status(&ev).is_some_and(|s| {
                    matches!(
                        s,
                        BuildRequestStatus::BuildRequestCompleted
                            | BuildRequestStatus::BuildRequestFailed
                            | BuildRequestStatus::BuildRequestCancelled
                    )
                });
            got.push((e.seq, ev.event_id));
            if done {
                assert!(connections >= 2, "the request ended before the restart");
                return got;
            }
        }
    }
    panic!("no server left to reconnect to; seen up to {:?}", got.last());
}

fn available(evs: &[(u64, BuildEvent)], p: &str) -> bool {
    evs.iter().any(|(_, e)| {
        matches!(&e.event_type, Some(EventType::PartitionEvent(x))
            if x.status() == PartitionStatus::PartitionAvailable
            && x.partition_ref.as_ref().is_some_and(|r| r.str == p))
    })
}

fn running(evs: &[(u64, BuildEvent)], p: &str) -> bool {
    evs.iter().any(|(_, e)| {
        matches!(&e.event_type, Some(EventType::JobEvent(j))
            if j.status() == JobStatus::JobRunning
            && j.target_partitions.iter().any(|r| r.str == p))
    })
}

/// Builds `c/1` (a/1, a/2, a/3, then b/1 and b/2) with b/1 held; once b/1 runs and the rest
/// below c/1 is AVAILABLE, the server gets `sig`; `serve` again must finish the request,
/// re-running b/1 only (its first run recorded failed, "engine stopped while running").
fn interrupt_and_resume(sig: &str) {
    let env = lattice();
    hold(&env, &["b/1"]);
    let mut server = Server::start(&env, &["--jobs", "4"]);
    let mut ctl = server.control();
    let req = server.authed(SubmitBuildRequest {
        outputs: vec![PartitionRef { str: "c/1".into() }],
        force: false,
        ..Default::default()
    });
    let id =
        rt().block_on(ctl.submit_build(req)).expect("SubmitBuild").into_inner().build_request_id;
    // A follower of the whole log, and a client waiting in Build for the same partition.
    let (urls, rx) = mpsc::unbounded_channel();
    urls.send(server.url()).unwrap();
    let follower = rt().spawn(follow_across(rx, id.clone()));
    let mut svc = server.service();
    let breq =
        server.authed(GraphBuildRequest { outputs: vec![PartitionRef { str: "c/1".into() }] });
    let waiting = rt().spawn(async move { svc.build(breq).await });

    server.wait_for("b/1 running, a/1..a/3 and b/2 AVAILABLE", |evs| {
        running(evs, "b/1") && ["a/1", "a/2", "a/3", "b/2"].iter().all(|p| available(evs, p))
    });
    let before = server.events().len() as u64;
    server.signal(sig);
    let code = server.wait();
    let stderr = server.stderr();
    if sig == "KILL" {
        assert_eq!(code, 128 + 9);
        assert!(env.log_dir().join("server.json").exists(), "kill -9 leaves server.json behind");
    } else {
        assert_eq!(code, 0, "serve exits 0 on SIGTERM: {stderr}");
        assert!(!env.log_dir().join("server.json").exists(), "a clean exit removes server.json");
    }
    // The client waiting in Build learns its server went away.
    let status = rt()
        .block_on(async { tokio::time::timeout(DEADLINE, waiting).await })
        .expect("Build answered")
        .unwrap()
        .expect_err("Build cannot succeed on a dead server");
    // SIGTERM: the server answers UNAVAILABLE; kill -9: the connection breaks (tonic's client
    // calls that UNKNOWN, "transport error").
    let expected = if sig == "KILL" {
        [tonic::Code::Unavailable, tonic::Code::Unknown]
    } else {
        [tonic::Code::Unavailable; 2]
    };
    assert!(expected.contains(&status.code()), "{status:?}");
    if sig == "TERM" {
        assert!(status.metadata().get("databuild-build-request-id").is_some());
    }

    // Reading commands see the interrupted request (no server now).
    let line = env
        .run(&["builds", "--format", "json"])
        .ok()
        .json_lines()
        .into_iter()
        .find(|l| l["buildRequestId"] == id.as_str())
        .expect("builds lists the request");
    assert_eq!(line["status"], "BUILD_REQUEST_EXECUTING", "interrupted, not ended: {line}");

    let server = Server::start(&env, &["--jobs", "4"]);
    assert!(server.stderr().contains(&id), "serve says it resumes {id}: {}", server.stderr());
    release(&env);
    urls.send(server.url()).unwrap();
    let seen = rt()
        .block_on(async { tokio::time::timeout(DEADLINE, follower).await })
        .expect("the follower saw the request end")
        .unwrap();
    server.wait_for("the resumed request ended", |evs| {
        request_ends(evs).get(&id) != Some(&BuildRequestStatus::BuildRequestExecuting)
    });
    let evs = server.events();
    assert_eq!(
        request_ends(&evs)[&id],
        BuildRequestStatus::BuildRequestCompleted,
        "{}",
        server.stderr()
    );

    // Reconnecting from last seq + 1: every event once, in order, no gap, across the restart.
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless, in order, once");
    assert!(seqs.len() as u64 > before, "the stream went on after the restart");
    let by_seq: BTreeMap<u64, &str> = evs.iter().map(|(s, e)| (*s, e.event_id.as_str())).collect();
    for (s, id) in &seen {
        assert_eq!(by_seq[s], id, "seq {s} is the same event on both servers");
    }

    // The first b/1 run was recorded failed; nothing AVAILABLE ran again.
    let stopped = evs.iter().filter(|(_, e)| {
        matches!(&e.event_type, Some(EventType::JobEvent(j))
            if j.status() == JobStatus::JobFailed
            && j.failure() == JobFailureKind::JobFailureEngineStopped
            && j.message.contains("engine stopped while running")
            && j.target_partitions.iter().any(|r| r.str == "b/1"))
    });
    assert_eq!(stopped.count(), 1, "b/1's interrupted run is recorded JOB_FAILED, engine stopped");
    let mut ledger = env.ledger();
    ledger.sort();
    assert_eq!(ledger, ["a/1", "a/2", "a/3", "b/1", "b/1", "b/2", "c/1"], "only b/1 ran again");
    let line = env
        .run(&["builds", "--format", "json"])
        .ok()
        .json_lines()
        .into_iter()
        .find(|l| l["buildRequestId"] == id.as_str())
        .unwrap();
    assert_eq!(line["status"], "BUILD_REQUEST_COMPLETED");
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    no_job_left(&env);
}

/// No job process of `env` is left (they run `jobs/generic.sh` in its directory).
fn no_job_left(env: &Env) {
    let dir = env.path().to_string_lossy().to_string();
    let start = std::time::Instant::now();
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&dir)))
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "processes left in the graph dir: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_older_request_delegating_to_a_younger_one_finishes_after_a_crash() {
    // c/1's config is slow, so the younger request (b/1) plans first and runs b/1; the older one
    // delegates b/1 to it. Resuming goes oldest first: the older request must wait for the
    // younger one again, not fail with "upstream b/1 failed" (a bug this test found).
    let env = lattice();
    hold(&env, &["b/1"]);
    env.write("slowconfig/c_1", "");
    let mut server = Server::start(&env, &["--jobs", "4"]);
    let submit = |server: &Server, r: &str| {
        let mut ctl = server.control();
        let req = server.authed(SubmitBuildRequest {
            outputs: vec![PartitionRef { str: r.into() }],
            force: false,
            ..Default::default()
        });
        rt().block_on(ctl.submit_build(req)).expect("SubmitBuild").into_inner().build_request_id
    };
    let older = submit(&server, "c/1");
    let younger = submit(&server, "b/1");
    let why = format!("delegated to active build {younger}");
    // Everything else below c/1 AVAILABLE first: a run still going at the kill (a/3, say) would
    // rightly run again, and the ledger below would not say whether anything ran twice wrongly.
    server.wait_for("the older request delegating b/1 to the younger, the rest built", |evs| {
        running(evs, "b/1")
            && ["a/1", "a/2", "a/3", "b/2"].iter().all(|p| available(evs, p))
            && evs.iter().any(|(_, e)| {
                e.build_request_id == older
                    && matches!(&e.event_type, Some(EventType::DelegationEvent(d)) if d.message == why)
            })
    });
    server.signal("KILL");
    server.wait();
    let server = Server::start(&env, &["--jobs", "4"]);
    release(&env);
    server.wait_for("both requests ended", |evs| {
        let ends = request_ends(evs);
        [&older, &younger]
            .iter()
            .all(|r| ends.get(*r).is_some_and(|s| *s != BuildRequestStatus::BuildRequestExecuting))
    });
    let ends = request_ends(&server.events());
    assert_eq!(ends[&younger], BuildRequestStatus::BuildRequestCompleted, "{}", server.stderr());
    assert_eq!(ends[&older], BuildRequestStatus::BuildRequestCompleted, "{}", server.stderr());
    let mut ledger = env.ledger();
    ledger.sort();
    assert_eq!(ledger, ["a/1", "a/2", "a/3", "b/1", "b/1", "b/2", "c/1"], "only b/1 ran again");
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    no_job_left(&env);
}

#[test]
fn kill_9_mid_build_then_serve_finishes_the_request_and_reruns_only_the_interrupted_run() {
    interrupt_and_resume("KILL");
}

#[test]
fn sigterm_mid_build_then_serve_finishes_the_request_and_reruns_only_the_interrupted_run() {
    interrupt_and_resume("TERM");
}
