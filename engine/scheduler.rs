//! Pure scheduling decisions over a plan and the folded state: which tasks are ready, what a
//! failure makes unbuildable, and how a request ends. No I/O, no clock; the engine loop
//! (`engine.rs`) performs what these decide.

use crate::planner::Plan;
use crate::proto::{BuildRequestStatus, PartitionStatus};
use crate::state::State;

/// Where a task of a plan stands in one execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Waiting for its MATERIALIZE inputs.
    Waiting,
    /// JOB_SCHEDULED is written; not started yet.
    Queued {
        /// The run id.
        run: String,
        /// Its attempt number.
        attempt: u32,
    },
    /// Its run is prepared held and JOB_RUNNING submitted; it starts once that is durable.
    Running {
        /// The run id.
        run: String,
        /// Its attempt number.
        attempt: u32,
    },
    /// Its outputs are AVAILABLE (built by this request, or delegated).
    Done,
    /// Its last attempt failed.
    Failed,
    /// An upstream task failed: it will not run.
    Blocked,
    /// Cancelled before it could finish.
    Cancelled,
    /// Its outputs are being built by another live request of this engine (active delegation):
    /// done when they become AVAILABLE, failed if that request cannot build them.
    Delegated {
        /// That request.
        to: String,
    },
}

impl NodeState {
    /// Whether a run of this task is queued or running, or it waits for its delegate.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            NodeState::Queued { .. } | NodeState::Running { .. } | NodeState::Delegated { .. }
        )
    }
}

/// Nodes that depend, directly or not, on `node`.
pub fn downstream(plan: &Plan, node: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut hit = vec![false; plan.nodes.len()];
    hit[node] = true;
    // Nodes are in topological order: one forward pass finds the whole closure.
    for i in node + 1..plan.nodes.len() {
        if plan.nodes[i].deps.iter().any(|&d| hit[d]) {
            hit[i] = true;
            out.push(i);
        }
    }
    out
}

/// Whether `node` may be scheduled: it waits, every task it depends on is done, and every
/// MATERIALIZE input is AVAILABLE in the catalog.
pub fn is_ready(state: &State, plan: &Plan, nodes: &[NodeState], node: usize) -> bool {
    nodes[node] == NodeState::Waiting
        && plan.nodes[node].deps.iter().all(|&d| nodes[d] == NodeState::Done)
        && plan.nodes[node].materialize.iter().all(|i| state.is_available(i))
}

/// Nodes waiting for an input that can no longer appear: nothing live produces it and it is not
/// AVAILABLE. Only meaningful once nothing of the execution is live.
pub fn stuck(state: &State, plan: &Plan, nodes: &[NodeState]) -> Vec<usize> {
    (0..plan.nodes.len())
        .filter(|&i| nodes[i] == NodeState::Waiting && !is_ready(state, plan, nodes, i))
        .collect()
}

/// How a request ends once nothing of it is live: COMPLETED if every requested ref is AVAILABLE.
pub fn outcome(state: &State, requested: &[String], cancelled: bool) -> BuildRequestStatus {
    if cancelled {
        BuildRequestStatus::BuildRequestCancelled
    } else if requested.iter().all(|r| state.is_available(r)) {
        BuildRequestStatus::BuildRequestCompleted
    } else {
        BuildRequestStatus::BuildRequestFailed
    }
}

/// Partitions of `request` still REQUESTED, ANALYZED or BUILDING: the final commit closes them.
pub fn open_partitions(state: &State, request: &str) -> Vec<(String, PartitionStatus)> {
    state
        .keys_of(request)
        .into_iter()
        .filter(|(_, k)| crate::state::is_open(k.status))
        .map(|(p, k)| (p.to_string(), k.status))
        .collect()
}

/// The events that close every partition of `request` still open, as FAILED with `why`. A
/// BUILDING one names the (ended) run that was building it, so the catalog shows it FAILED
/// rather than still BUILDING.
pub fn closing_events(state: &State, request: &str, why: &str) -> Vec<crate::proto::BuildEvent> {
    open_partitions(state, request)
        .into_iter()
        .map(|(p, status)| {
            let run = match status {
                PartitionStatus::PartitionBuilding => state
                    .key(request, &p)
                    .map(|k| k.job_run_id.to_string())
                    .filter(|r| state.runs.get(r.as_str()).is_some_and(|r| !r.is_live()))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            crate::events::partition(request, &p, PartitionStatus::PartitionFailed, &run, why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Node;
    use crate::proto::JobConfig;

    fn plan(deps: &[&[usize]]) -> Plan {
        Plan {
            label: "g".into(),
            requested: vec![],
            nodes: deps
                .iter()
                .enumerate()
                .map(|(i, d)| Node {
                    job: "j".into(),
                    config: JobConfig::default(),
                    outputs: vec![format!("p{i}")],
                    materialize: d.iter().map(|x| format!("p{x}")).collect(),
                    query: vec![],
                    deps: d.to_vec(),
                })
                .collect(),
            satisfied: vec![],
            producer: Default::default(),
            dropped: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn downstream_is_the_transitive_closure() {
        // 0 -> 1 -> 3, 0 -> 2, 4 independent
        let p = plan(&[&[], &[0], &[0], &[1], &[]]);
        assert_eq!(downstream(&p, 0), vec![1, 2, 3]);
        assert_eq!(downstream(&p, 1), vec![3]);
        assert!(downstream(&p, 4).is_empty());
    }

    #[test]
    fn a_node_is_ready_only_when_its_dependencies_are_done() {
        let p = plan(&[&[], &[0]]);
        let s = State::new();
        let mut nodes = vec![NodeState::Waiting, NodeState::Waiting];
        assert!(is_ready(&s, &p, &nodes, 0));
        assert!(!is_ready(&s, &p, &nodes, 1));
        nodes[0] = NodeState::Done;
        // Done, but its output is not AVAILABLE in this (empty) state.
        assert!(!is_ready(&s, &p, &nodes, 1));
        assert_eq!(stuck(&s, &p, &nodes), vec![1]);
        assert_eq!(outcome(&s, &[], false), BuildRequestStatus::BuildRequestCompleted);
        assert_eq!(outcome(&s, &["x".into()], false), BuildRequestStatus::BuildRequestFailed);
        assert_eq!(outcome(&s, &[], true), BuildRequestStatus::BuildRequestCancelled);
    }
}
