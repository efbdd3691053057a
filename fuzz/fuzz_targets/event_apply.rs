//! `event_apply`: bytes decoded as a sequence of length-delimited `BuildEvent`s are applied by the
//! fold to a state seeded with a request in each lifecycle state. `State::apply` never panics, a
//! rejected event changes nothing, and whatever is accepted survives a snapshot round trip.

#![no_main]

use databuild::events as ev;
use databuild::proto::{BuildEvent, BuildRequestStatus as B, JobGraph, JobStatus as J, PartitionStatus as P};
use databuild::state::State;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn seeded() -> State {
    let mut s = State::new();
    let mut seq = 0;
    let mut push = |s: &mut State, e: BuildEvent| {
        seq += 1;
        s.apply(seq, &e).expect("the seed is legal");
    };
    let out = vec!["out".to_string()];
    push(&mut s, ev::received("r1", &out, false, ""));
    push(&mut s, ev::partition("r1", "out", P::PartitionRequested, "", ""));
    push(&mut s, ev::request("r1", B::BuildRequestPlanning, ""));
    push(&mut s, ev::job_graph("r1", JobGraph::default()));
    push(&mut s, ev::request("r1", B::BuildRequestAnalysisCompleted, ""));
    push(&mut s, ev::request("r1", B::BuildRequestExecuting, ""));
    push(&mut s, ev::partition("r1", "out", P::PartitionAnalyzed, "", ""));
    push(&mut s, ev::job("r1", "j1", "job", &out).event(J::JobScheduled));
    push(&mut s, ev::job("r1", "j1", "job", &out).event(J::JobRunning));
    push(&mut s, ev::partition("r1", "out", P::PartitionBuilding, "j1", ""));
    push(&mut s, ev::received("r2", &out, true, ""));
    s
}

fuzz_target!(|data: &[u8]| {
    let mut state = seeded();
    let mut buf = data;
    while !buf.is_empty() {
        let Ok(e) = BuildEvent::decode_length_delimited(&mut buf) else { break };
        let before = state.clone();
        let seq = state.last_seq + 1;
        if state.apply(seq, &e).is_err() {
            assert_eq!(state, before, "a rejected event changed the state");
        }
    }
    let bytes = databuild::state::snapshot::encode(&state, [1; 16], Default::default());
    let back = databuild::state::snapshot::decode(&bytes, [1; 16]).expect("a snapshot decodes");
    assert_eq!(back, state, "snapshot round trip");
});
