//! The pages: each a function of a folded [`State`] (live or as of a seq) and the request.

use std::collections::{BTreeMap, HashMap};

use maud::{DOCTYPE, Markup, html};

use super::svg::{self, Bar, Node, TreeNode};
use super::{Ctx, PageError, enc};
use crate::proto::build_event::EventType;
use crate::proto::{BuildEvent, JobGraph, JobStatus, PartitionStatus};
use crate::query::{self, LineageNode};
use crate::state::{Run, State};
use crate::store::{self, StoreError};

/// Rows per page of every list.
pub const PAGE: usize = 25;
/// Above this many nodes a build's graph collapses by job label (unless `expand=1`).
pub const COLLAPSE_OVER: usize = 300;

fn short(name: &str) -> String {
    query::short_status(name).to_lowercase()
}

fn pclass(s: PartitionStatus) -> String {
    short(s.as_str_name())
}

fn jclass(s: JobStatus) -> String {
    short(s.as_str_name())
}

/// A timestamp (ns) as RFC 3339, UTC, to the second.
pub fn fmt_ts(ns: i64) -> String {
    if ns == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .map(|t| t.replace_nanosecond(0).unwrap_or(t))
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ns.to_string())
}

fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{:.1} min", ms as f64 / 60_000.0)
    }
}

fn badge(class: &str) -> Markup {
    html! { span class=(format!("badge st-{class}")) { (class) } }
}

fn plink(c: &Ctx, r: &str) -> Markup {
    html! { a href=(c.link(&format!("/partition?ref={}", enc(r)))) { (r) } }
}

fn blink(c: &Ctx, id: &str) -> Markup {
    html! { a class="id" href=(c.link(&format!("/builds/{}", enc(id)))) { (id) } }
}

fn rlink(c: &Ctx, id: &str) -> Markup {
    html! { a class="id" href=(c.link(&format!("/runs/{}", enc(id)))) { (id) } }
}

fn jlink(c: &Ctx, label: &str) -> Markup {
    html! { a href=(c.link(&format!("/jobs/{}", enc(label)))) { (label) } }
}

fn seqlink(c: &Ctx, seq: u64) -> Markup {
    html! { a href=(format!("{}?at={seq}", c.path_for_at())) title="show this page as of this seq" { (seq) } }
}

impl Ctx<'_> {
    fn path_for_at(&self) -> String {
        self.path.clone()
    }
}

/// The frame of every page: header, history bar, the body, the script.
fn layout(c: &Ctx, state: &State, title: &str, body: Markup) -> Markup {
    let live = c.at.is_none();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · databuild" }
                link rel="stylesheet" href="/assets/app.css";
                script defer src="/assets/app.js" {}
            }
            body data-seq=(state.last_seq) data-live=(if live { "1" } else { "0" }) {
                header {
                    nav {
                        a class="brand" href=(c.link("/")) { "databuild" }
                        span class="graph-label" { (c.shared.graph.label) }
                        a href=(c.link("/")) { "Builds" }
                        a href=(c.link("/events")) { "Events" }
                    }
                    (history_bar(c, state))
                }
                main { (body) }
            }
        }
    }
}

/// Where in history the page is, with links to step and a slider to scrub (a plain GET form:
/// it works without JavaScript; the script submits it when the slider is let go).
fn history_bar(c: &Ctx, state: &State) -> Markup {
    let seq = state.last_seq;
    let step = |d: i64| -> String {
        let s = (seq as i64 + d).clamp(0, c.end as i64) as u64;
        c.with("at", Some(&s.to_string()))
    };
    html! {
        div class=(if c.at.is_some() { "history past" } else { "history" }) data-live-id="history" {
            @if c.at.is_some() {
                strong { "History: " } "as of seq " (seq) " of " (c.end)
                @if state.last_ts > 0 { " (" (fmt_ts(state.last_ts)) ")" }
                " · " a class="live-link" href=(c.with("at", None)) { "back to live" }
            } @else {
                span class="dot" {} strong { "Live" } " at seq " (seq)
                @if state.last_ts > 0 { " (" (fmt_ts(state.last_ts)) ")" }
            }
            span class="steps" {
                a href=(c.with("at", Some("0"))) title="before the first event" { "« 0" }
                @for d in [-100i64, -10, -1] { a href=(step(d)) { (d) } }
                @for d in [1i64, 10, 100] { a href=(step(d)) { "+" (d) } }
            }
            form method="get" action=(c.path) class="scrub" {
                @for (k, v) in &c.params.0 {
                    @if k != "at" && k != "page" { input type="hidden" name=(k) value=(v); }
                }
                input type="range" name="at" min="0" max=(c.end) value=(seq) data-scrub="1" aria-label="seq";
                input type="text" name="at" value="" placeholder="seq or RFC 3339 time" size="22" aria-label="seq or time";
                button type="submit" { "Go" }
            }
        }
    }
}

/// An error page (any status), with the message escaped.
pub fn error_page(status: axum::http::StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · databuild" }
                link rel="stylesheet" href="/assets/app.css";
            }
            body data-live="0" {
                header { nav { a class="brand" href="/" { "databuild" } } }
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p class="error" { (message) }
                    p { a href="/" { "Back to the dashboard" } }
                }
            }
        }
    }
}

fn pager(c: &Ctx, page: usize, total: usize) -> Markup {
    let pages = total.div_ceil(PAGE).max(1);
    html! {
        @if pages > 1 {
            nav class="pager" {
                @if page > 0 { a href=(c.with("page", Some(&(page - 1).to_string()))) { "← newer" } }
                " page " (page + 1) " of " (pages) " (" (total) ") "
                @if page + 1 < pages { a href=(c.with("page", Some(&(page + 1).to_string()))) { "older →" } }
            }
        }
    }
}

fn token_field(c: &Ctx) -> Markup {
    html! { input type="hidden" name="token" value=(c.shared.token); }
}

/// Counts of a request's runs by class, and (done, total) for its progress bar.
fn progress(state: &State, runs: &[crate::state::Sym]) -> (BTreeMap<String, usize>, usize, usize) {
    let mut by = BTreeMap::new();
    let (mut done, mut total) = (0, 0);
    for id in runs {
        if let Some(r) = state.runs.get(id) {
            *by.entry(jclass(r.status)).or_insert(0) += 1;
            total += 1;
            if !r.is_live() {
                done += 1;
            }
        }
    }
    (by, done, total)
}

// ---------------------------------------------------------------------------------------------
// Home

/// `/`: live builds with progress, recent build requests, job health, the build form.
pub fn home(c: &Ctx, state: &State) -> Result<Markup, PageError> {
    let page = c.params.page()?;
    let open = state.open_requests();
    // Ids are UUIDv7: their order is the order requests were received in, so a page needs no
    // decoding of the others.
    let mut ids: Vec<&crate::state::Sym> = state.requests.keys().collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let total = ids.len();
    let shown: Vec<&crate::state::Request> =
        ids.iter().skip(page * PAGE).take(PAGE).filter_map(|id| state.requests.get(id)).collect();
    let stats = query::job_stats(state);
    // The newest request's first ref shows what a ref of this graph looks like.
    let placeholder = shown
        .first()
        .and_then(|r| r.requested.first())
        .map_or_else(|| "a partition ref".to_string(), |r| format!("e.g. {r}"));
    let body = html! {
        @if c.at.is_none() {
            section class="card" {
                h2 { "Build or analyze" }
                form method="post" action="/ui/build" class="build-form" {
                    (token_field(c))
                    label for="refs" { "Partitions (one ref per line, or separated by spaces)" }
                    textarea id="refs" name="refs" rows="3" placeholder=(placeholder) {}
                    div class="row" {
                        label { input type="checkbox" name="force" value="1"; " force (rebuild even if available)" }
                        button type="submit" class="primary" { "Build" }
                        button type="submit" formaction="/ui/analyze" { "Analyze" }
                    }
                }
            }
        }
        section data-live-id="live-builds" {
            h2 { "Live builds (" (open.len()) ")" }
            @if open.is_empty() { p class="muted" { "No build request is running." } }
            @else {
                table {
                    thead { tr { th { "request" } th { "status" } th { "requested" } th { "progress" } th { "received" } } }
                    tbody {
                        @for r in &open {
                            @let (by, done, total) = progress(state, &r.runs);
                            tr {
                                td { (blink(c, &r.id)) }
                                td { (badge(&short(r.status.as_str_name()))) }
                                td { (refs_cell(c, &r.requested)) }
                                td {
                                    progress value=(done) max=(total.max(1)) {}
                                    " " (done) "/" (total) " runs"
                                    @for (k, v) in &by { " · " (v) " " (k) }
                                }
                                td { (fmt_ts(r.received_ts)) }
                            }
                        }
                    }
                }
            }
        }
        section data-live-id="recent" {
            h2 { "Build requests" }
            @if shown.is_empty() { p class="muted" { "No build request yet." } }
            @else {
                table id="requests" {
                    thead { tr { th { "request" } th { "status" } th { "requested" } th { "runs" } th { "received" } th { "message" } } }
                    tbody {
                        @for r in &shown {
                            tr {
                                td { (blink(c, &r.id)) }
                                td { (badge(&short(r.status.as_str_name()))) }
                                td { (refs_cell(c, &r.requested)) }
                                td { (r.runs.len()) }
                                td { (fmt_ts(r.received_ts)) }
                                td class="msg" { (svg::cut(&r.message, 120)) }
                            }
                        }
                    }
                }
                (pager(c, page, total))
            }
        }
        section data-live-id="jobs" {
            h2 { "Job health" }
            table {
                thead { tr { th { "job" } th { "runs" } th { "completed" } th { "failed" } th { "success" } th { "p50" } th { "p95" } } }
                tbody {
                    @for j in &c.shared.graph.jobs {
                        @let s = stats.iter().find(|s| s.label == j.label);
                        tr {
                            td { (jlink(c, &j.label)) }
                            td { (s.map_or(0, |s| s.runs)) }
                            td { (s.map_or(0, |s| s.completed)) }
                            td { (s.map_or(0, |s| s.failed)) }
                            td { (s.and_then(|s| s.success_ratio).map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0))) }
                            td { (s.and_then(|s| s.p50_ms).map_or("-".to_string(), fmt_ms)) }
                            td { (s.and_then(|s| s.p95_ms).map_or("-".to_string(), fmt_ms)) }
                        }
                    }
                    @for s in stats.iter().filter(|s| c.shared.graph.job(&s.label).is_none()) {
                        tr class="muted" {
                            td { (jlink(c, &s.label)) " (not in the graph file)" }
                            td { (s.runs) } td { (s.completed) } td { (s.failed) }
                            td { (s.success_ratio.map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0))) }
                            td { (s.p50_ms.map_or("-".to_string(), fmt_ms)) }
                            td { (s.p95_ms.map_or("-".to_string(), fmt_ms)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(c, state, "Builds", body))
}

fn refs_cell(c: &Ctx, refs: &[crate::state::Sym]) -> Markup {
    html! {
        @for (i, r) in refs.iter().take(3).enumerate() {
            @if i > 0 { ", " }
            (plink(c, r))
        }
        @if refs.len() > 3 { " and " (refs.len() - 3) " more" }
    }
}

// ---------------------------------------------------------------------------------------------
// Build request

/// The plan picture: a node per ref, an edge per input a task reads; `class` colours a ref.
fn plan_picture(
    c: &Ctx,
    graph: &JobGraph,
    extra: &[String],
    class: impl Fn(&str) -> (String, String),
) -> Markup {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut group: Vec<String> = Vec::new();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut add = |r: &str, g: &str, nodes: &mut Vec<Node>, group: &mut Vec<String>| -> usize {
        if let Some(&i) = index.get(r) {
            if !g.is_empty() && group[i] == "inputs" {
                group[i] = g.to_string();
            }
            return i;
        }
        let (cls, mut sub) = class(r);
        if sub.is_empty() {
            sub = g.to_string();
        }
        nodes.push(Node {
            label: r.to_string(),
            sub,
            class: cls,
            href: c.link(&format!("/partition?ref={}", enc(r))),
        });
        group.push(if g.is_empty() { "inputs".into() } else { g.to_string() });
        index.insert(r.to_string(), nodes.len() - 1);
        nodes.len() - 1
    };
    for t in &graph.nodes {
        let label = t.job.as_ref().map_or("?", |j| j.label.as_str());
        let Some(cfg) = &t.config else { continue };
        let outs: Vec<usize> =
            cfg.outputs.iter().map(|o| add(&o.str, label, &mut nodes, &mut group)).collect();
        for i in &cfg.inputs {
            if let Some(p) = &i.partition_ref {
                let a = add(&p.str, "", &mut nodes, &mut group);
                for &o in &outs {
                    edges.push((a, o));
                }
            }
        }
    }
    for r in extra {
        add(r, "requested", &mut nodes, &mut group);
    }
    let expand = c.params.get("expand").is_some();
    html! {
        @if nodes.is_empty() {
            p class="muted" { "No plan yet." }
        } @else if nodes.len() > COLLAPSE_OVER && !expand {
            @let (g, e) = svg::collapse(&nodes, &edges, &group, |_| c.with("expand", Some("1")));
            p class="muted" {
                (nodes.len()) " partitions, collapsed by job label. "
                a href=(c.with("expand", Some("1"))) { "Expand every partition" }
            }
            div class="scroll" { (svg::graph(&g, &e)) }
        } @else {
            @if expand && nodes.len() > COLLAPSE_OVER {
                p { a href=(c.with("expand", None)) { "Collapse by job label" } }
            }
            div class="scroll" { (svg::graph(&nodes, &edges)) }
        }
    }
}

fn plan_of(reader: &databuild_log::Reader, seq: u64) -> Result<Option<JobGraph>, StoreError> {
    Ok(store::event_at(reader, seq)?.and_then(|e| match e.event_type {
        Some(EventType::JobGraphEvent(g)) => g.job_graph,
        _ => None,
    }))
}

/// `/builds/ID`.
pub fn build(c: &Ctx, state: &State, id: &str) -> Result<Markup, PageError> {
    let Some(r) = state.requests.get(id) else {
        let later = c.at.is_some();
        return Err(PageError::not_found(if later {
            format!("no build request {id} in the log as of seq {}", state.last_seq)
        } else {
            format!("no build request {id} in the log")
        }));
    };
    let reader = c.shared.store.reader().map_err(StoreError::Open)?;
    let plan = match r.plan_seq {
        Some(s) if s <= state.last_seq => plan_of(&reader, s)?,
        _ => None,
    };
    let keys = state.keys_of(id);
    let key_of: HashMap<&str, &crate::state::Key> = keys.iter().map(|(k, v)| (&***k, *v)).collect();
    let runs: Vec<&Run> = r.runs.iter().filter_map(|id| state.runs.get(id)).collect();
    let live = !r.is_terminal();
    let (by, done, total) = progress(state, &r.runs);
    let class = |p: &str| -> (String, String) {
        match key_of.get(p) {
            Some(k) => {
                let label = state.runs.get(&*k.job_run_id).map(|r| r.job_label.to_string());
                (pclass(k.status), label.unwrap_or_default())
            }
            None => (pclass(state.partition_status(p)), "input".into()),
        }
    };
    let requested: Vec<String> = r.requested.iter().map(|s| s.to_string()).collect();
    let now = if live { state.last_ts } else { r.ended.map_or(state.last_ts, |e| e.1) };
    let bars: Vec<Bar> = runs
        .iter()
        .filter(|r| r.status != JobStatus::JobSkipped)
        .take(300)
        .map(|run| Bar {
            label: match run.targets.len() {
                0 => run.job_label.to_string(),
                1 => run.targets[0].to_string(),
                n => format!("{} +{}", run.targets[0], n - 1),
            },
            queued: run.first_ts,
            start: run.running.map(|x| x.1),
            end: run.ended.map(|x| x.1),
            class: jclass(run.status),
            href: c.link(&format!("/runs/{}", enc(&run.id))),
        })
        .collect();
    let delegated: Vec<(&crate::state::Sym, &crate::state::Key)> = keys
        .iter()
        .filter(|(_, k)| k.status == PartitionStatus::PartitionDelegated)
        .map(|(p, k)| (*p, *k))
        .collect();
    let body = html! {
        h1 { "Build request " span class="id" { (id) } }
        div data-live-id="build-head" class="card" {
            p {
                (badge(&short(r.status.as_str_name())))
                @if r.force { " " span class="badge" { "force" } }
                " received " (fmt_ts(r.received_ts)) " (seq " (seqlink(c, r.received_seq)) ")"
                @if let Some((s, t)) = r.ended { ", ended " (fmt_ts(t)) " (seq " (seqlink(c, s)) ")" }
            }
            @if !r.message.is_empty() { p class="msg" { (r.message) } }
            p {
                progress value=(done) max=(total.max(1)) {}
                " " (done) "/" (total) " runs done"
                @for (k, v) in &by { " · " (v) " " (k) }
            }
            @if live && c.at.is_none() {
                form method="post" action=(format!("/ui/cancel/{}", enc(id))) class="inline" {
                    (token_field(c))
                    button type="submit" class="danger" id="cancel" { "Cancel" }
                }
            }
        }
        section data-live-id="requested" {
            h2 { "Requested partitions" }
            table {
                thead { tr { th { "partition" } th { "status here" } th { "seq" } th { "message" } } }
                tbody {
                    @for p in &r.requested {
                        @let k = key_of.get(&**p);
                        tr {
                            td { (plink(c, p)) }
                            td { (badge(&k.map_or("unknown".into(), |k| pclass(k.status)))) }
                            td { @if let Some(k) = k { (seqlink(c, k.seq)) } }
                            td class="msg" { @if let Some(k) = k { (k.message) } }
                        }
                    }
                }
            }
        }
        section data-live-id="graph" {
            h2 { "Graph" }
            @match &plan {
                Some(g) => (plan_picture(c, g, &requested, class)),
                None => (plan_picture(c, &JobGraph::default(), &requested, class)),
            }
            (legend())
        }
        section data-live-id="timeline" {
            h2 { "Timeline" }
            @if bars.is_empty() { p class="muted" { "No run yet." } }
            @else { div class="scroll" { (svg::timeline(&bars, r.received_ts, now)) } }
            @if runs.len() > 300 { p class="muted" { "(the first 300 runs)" } }
        }
        @if !delegated.is_empty() {
            section data-live-id="delegations" {
                h2 { "Delegations" }
                ul {
                    @for (p, k) in &delegated {
                        li {
                            (plink(c, p)) ": " (k.message)
                            @for w in k.message.split_whitespace() {
                                @if w != id && state.requests.contains_key(w) { " → " (blink(c, w)) }
                            }
                        }
                    }
                }
            }
        }
        section data-live-id="runs" {
            h2 { "Runs (" (runs.len()) ")" }
            (runs_table(c, &runs, true))
        }
    };
    Ok(layout(c, state, &format!("Build {id}"), body))
}

fn legend() -> Markup {
    html! {
        p class="legend" {
            @for s in ["requested", "analyzed", "building", "available", "failed", "delegated", "unknown"] {
                (badge(s)) " "
            }
        }
    }
}

fn runs_table(c: &Ctx, runs: &[&Run], with_label: bool) -> Markup {
    html! {
        @if runs.is_empty() { p class="muted" { "No runs." } }
        @else {
            table {
                thead { tr {
                    th { "run" } @if with_label { th { "job" } } th { "status" } th { "attempt" }
                    th { "builds" } th { "duration" } th { "message" }
                } }
                tbody {
                    @for r in runs {
                        tr {
                            td { (rlink(c, &r.id)) }
                            @if with_label { td { (jlink(c, &r.job_label)) } }
                            td { (badge(&jclass(r.status))) }
                            td { (r.attempt) }
                            td { (refs_cell(c, &r.targets)) }
                            td { (query::run_duration_ms(r).map_or("-".into(), fmt_ms)) }
                            td class="msg" { (svg::cut(&r.message, 160)) }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Analyze

/// The plan of refs, as a picture, without running anything.
pub fn analyze(
    c: &Ctx,
    state: &State,
    refs: &[String],
    force: bool,
    graph: &JobGraph,
) -> Result<Markup, PageError> {
    let outputs: std::collections::HashSet<&str> = graph
        .nodes
        .iter()
        .filter_map(|t| t.config.as_ref())
        .flat_map(|c| c.outputs.iter().map(|o| o.str.as_str()))
        .collect();
    let class = |p: &str| -> (String, String) {
        if outputs.contains(p) {
            ("analyzed".into(), "to build".into())
        } else {
            let s = state.partition_status(p);
            (pclass(s), "input".into())
        }
    };
    let body = html! {
        h1 { "Analysis" }
        p {
            "The plan for " (refs_cell_str(c, refs)) @if force { " (force)" } ": "
            (graph.nodes.len()) " job runs. Nothing was recorded or run."
        }
        form method="post" action="/ui/build" class="inline" {
            (token_field(c))
            @for r in refs { input type="hidden" name="refs" value=(r); }
            @if force { input type="hidden" name="force" value="1"; }
            button type="submit" class="primary" { "Build this" }
        }
        section { h2 { "Plan" } (plan_picture(c, graph, refs, class)) }
        section {
            h2 { "Job runs" }
            table {
                thead { tr { th { "job" } th { "outputs" } th { "inputs" } th { "args" } } }
                tbody {
                    @for t in &graph.nodes {
                        @let cfg = t.config.clone().unwrap_or_default();
                        tr {
                            td { (t.job.as_ref().map_or("?", |j| j.label.as_str())) }
                            td { @for o in &cfg.outputs { (plink(c, &o.str)) " " } }
                            td { @for i in &cfg.inputs { @if let Some(p) = &i.partition_ref { (plink(c, &p.str)) " " } } }
                            td { code { (cfg.args.join(" ")) } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(c, state, "Analysis", body))
}

fn refs_cell_str(c: &Ctx, refs: &[String]) -> Markup {
    html! { @for (i, r) in refs.iter().enumerate() { @if i > 0 { ", " } (plink(c, r)) } }
}

// ---------------------------------------------------------------------------------------------
// Partition

/// Children shown per node in the lineage picture (the rest are one "N more" box; the lists
/// below the picture have them all).
const LINEAGE_FAN: usize = 8;

fn more_box(c: &Ctx, n: usize, of: &str) -> TreeNode {
    TreeNode {
        node: Node {
            label: format!("… {n} more"),
            sub: "see the lists below".into(),
            class: "unknown".into(),
            href: c.link(&format!("/partition?ref={}", enc(of))),
        },
        children: Vec::new(),
    }
}

/// The picture's trees for `n`'s children: at most [`LINEAGE_FAN`] per node, `budget` boxes in
/// all.
fn lineage_kids(c: &Ctx, n: &LineageNode, budget: &mut usize) -> Vec<TreeNode> {
    let mut kids = Vec::new();
    for (i, ch) in n.children.iter().enumerate() {
        if *budget == 0 || i == LINEAGE_FAN {
            kids.push(more_box(c, n.children.len() - i, &n.partition));
            break;
        }
        *budget -= 1;
        kids.push(lineage_tree(c, ch, budget));
    }
    kids
}

fn lineage_tree(c: &Ctx, n: &LineageNode, budget: &mut usize) -> TreeNode {
    let kids = lineage_kids(c, n, budget);
    let sub = if n.job_label.is_empty() {
        "external or not built".to_string()
    } else {
        format!("{} · seq {}", n.job_label, n.seq)
    };
    TreeNode {
        node: Node {
            label: n.partition.clone(),
            sub,
            class: if n.rebuilt_since_seq.is_some() {
                "stale".into()
            } else if n.job_run_id.is_empty() {
                "unknown".into()
            } else {
                "available".into()
            },
            href: c.link(&format!("/partition?ref={}", enc(&n.partition))),
        },
        children: kids,
    }
}

fn lineage_list(c: &Ctx, n: &LineageNode) -> Markup {
    html! {
        ul {
            @for ch in &n.children {
                li {
                    (plink(c, &ch.partition))
                    @if !ch.job_run_id.is_empty() { " · " (jlink(c, &ch.job_label)) " run " (rlink(c, &ch.job_run_id)) }
                    @if let Some(s) = ch.rebuilt_since_seq { " (rebuilt since, at seq " (s) ")" }
                    @if !ch.children.is_empty() && !ch.repeated { (lineage_list(c, ch)) }
                }
            }
        }
    }
}

/// `/partition?ref=R`.
pub fn partition(c: &Ctx, state: &State) -> Result<Markup, PageError> {
    let Some(r) = c.params.get("ref") else {
        return Err(PageError::bad("no partition named: open /partition?ref=REF"));
    };
    let r = r.to_string();
    let owner = c.shared.graph.owner(&r);
    if owner.is_err() && !state.catalog.contains_key(&r) && !state.readers.contains_key(&r) {
        let msg = match owner {
            Err(e) => crate::server::grpc::lookup_message(&e),
            Ok(_) => String::new(),
        };
        return Err(PageError::not_found(msg));
    }
    let page = c.params.page()?;
    // Now: the graph file's job versions count too; in the past (`?at=`): the log alone.
    let versions = if c.at.is_none() { Some(&*c.shared.graph) } else { None };
    let e = query::explain_with(&crate::views::freshness(state, versions), &r);
    let reader = c.shared.store.reader().map_err(StoreError::Open)?;
    let depth = Some(3);
    let up = match query::lineage_up(state, &reader, &r, depth) {
        Ok(n) => Some(n),
        Err(query::LineageError::NeverBuilt(_)) => None,
        Err(query::LineageError::Store(e)) => return Err(e.into()),
    };
    let down = match query::lineage_down(state, &reader, &r, depth) {
        Ok(n) => Some(n),
        Err(query::LineageError::NeverBuilt(_)) => None,
        Err(query::LineageError::Store(e)) => return Err(e.into()),
    };
    let mut budget = 40;
    let up_t: Vec<TreeNode> = up.iter().flat_map(|n| lineage_kids(c, n, &mut budget)).collect();
    let mut budget = 40;
    let down_t: Vec<TreeNode> = down.iter().flat_map(|n| lineage_kids(c, n, &mut budget)).collect();
    let status = pclass(e.status);
    let center = Node {
        label: r.clone(),
        sub: format!("{status} (this partition)"),
        class: format!("{status} center"),
        href: c.link(&format!("/partition?ref={}", enc(&r))),
    };
    let instances: Vec<(u64, crate::state::Sym)> = state
        .catalog
        .get(&r)
        .map(|c| c.available.iter().rev().cloned().collect())
        .unwrap_or_default();
    let mut builds: Vec<(&crate::state::Sym, &crate::state::Key)> = state.keys_for(&r).collect();
    builds.sort_by_key(|(_, k)| std::cmp::Reverse(k.seq));
    let total = builds.len();
    let body = html! {
        h1 { "Partition " code { (r) } }
        div class="card" data-live-id="pstatus" {
            p {
                (badge(&status)) " " span class="badge" { (e.reason.as_str()) }
                @if e.stale.is_some() { " " span class="badge st-stale" { "stale" } }
            }
            p class="msg" { (e.message) }
            @if let Some(st) = &e.stale {
                ul class="stale-reasons" {
                    @for x in &st.reasons {
                        li {
                            (x.text())
                            @if x.seq() > 0 { " (seq " (seqlink(c, x.seq())) ")" }
                            @else { " (graph file; not yet in the log)" }
                        }
                    }
                }
            }
            @if e.seq > 0 {
                p {
                    "seq " (seqlink(c, e.seq))
                    @if !e.build_request_id.is_empty() { " · request " (blink(c, &e.build_request_id)) }
                    @if !e.job_run_id.is_empty() { " · run " (rlink(c, &e.job_run_id)) }
                    @if let Some(x) = e.exit_code { " · exit code " (x) }
                }
            }
            @if let Ok(j) = &owner { p { "Built by job " (jlink(c, &c.shared.graph.jobs[*j].label)) } }
        }
        @if c.at.is_none() && owner.is_ok() {
            div class="actions" {
                form method="post" action="/ui/build" class="inline" {
                    (token_field(c))
                    input type="hidden" name="refs" value=(r);
                    button type="submit" class="primary" id="build" { "Build" }
                }
                form method="post" action="/ui/build" class="inline" {
                    (token_field(c))
                    input type="hidden" name="refs" value=(r);
                    input type="hidden" name="force" value="1";
                    button type="submit" id="force" { "Force rebuild" }
                }
                form method="post" action="/ui/analyze" class="inline" {
                    (token_field(c))
                    input type="hidden" name="refs" value=(r);
                    button type="submit" { "Analyze" }
                }
            }
        }
        section data-live-id="lineage" {
            h2 { "Lineage" }
            @if up.is_none() && down.is_none() {
                p class="muted" { "Never AVAILABLE, so no lineage yet." }
            } @else {
                p class="muted" { "Upstream (what its current instance was built from) on the left, downstream (what was built from it) on the right; three levels each." }
                div class="scroll" { (svg::lineage(&center, &up_t, &down_t)) }
                div class="cols" {
                    div {
                        h3 { "Upstream" }
                        @match &up {
                            Some(n) if !n.children.is_empty() => (lineage_list(c, n)),
                            _ => p class="muted" { "Read nothing." },
                        }
                    }
                    div {
                        h3 { "Downstream" }
                        @match &down {
                            Some(n) if !n.children.is_empty() => (lineage_list(c, n)),
                            _ => p class="muted" { "Nothing was built from it yet." },
                        }
                    }
                }
            }
        }
        section data-live-id="instances" {
            h2 { "Instances (" (instances.len()) ")" }
            p class="muted" { "Every run that made it AVAILABLE, newest first, and what each read." }
            @for (seq, run) in instances.iter().take(50) {
                @let rr = state.runs.get(run);
                div class="instance" {
                    p {
                        "seq " (seqlink(c, *seq)) " · run " (rlink(c, run))
                        @if let Some(rr) = rr {
                            " · " (jlink(c, &rr.job_label)) " · request " (blink(c, &rr.request))
                            @if let Some(d) = query::run_duration_ms(rr) { " · " (fmt_ms(d)) }
                        }
                    }
                    @if let Some(rr) = rr {
                        @if rr.inputs.is_empty() { p class="muted" { "read nothing" } }
                        @else {
                            ul {
                                @for i in &rr.inputs {
                                    li {
                                        (short(i.dep_type.as_str_name())) " " (plink(c, &i.partition))
                                        @if !i.producer_run.is_empty() { " (instance of run " (rlink(c, &i.producer_run)) ")" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if instances.len() > 50 { p class="muted" { "(the newest 50)" } }
        }
        section data-live-id="pbuilds" {
            h2 { "Build requests that asked for it or built it (" (total) ")" }
            table {
                thead { tr { th { "request" } th { "status here" } th { "seq" } th { "run" } th { "message" } } }
                tbody {
                    @for (req, k) in builds.iter().skip(page * PAGE).take(PAGE) {
                        tr {
                            td { (blink(c, req)) }
                            td { (badge(&pclass(k.status))) }
                            td { (seqlink(c, k.seq)) }
                            td { @if !k.job_run_id.is_empty() { (rlink(c, &k.job_run_id)) } }
                            td class="msg" { (k.message) }
                        }
                    }
                }
            }
            (pager(c, page, total))
        }
    };
    Ok(layout(c, state, &r, body))
}

// ---------------------------------------------------------------------------------------------
// Job

fn tail_lines(path: &std::path::Path, n: usize) -> Option<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(16 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(16 * 1024).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let skip = lines.len().saturating_sub(n);
    Some(lines[skip..].to_vec())
}

/// `/jobs/LABEL`.
pub fn job(c: &Ctx, state: &State, label: &str) -> Result<Markup, PageError> {
    let runs = query::job_runs(state, label);
    let in_graph = c.shared.graph.job(label).is_some();
    if runs.is_empty() && !in_graph {
        return Err(PageError::not_found(format!(
            "no job {label} in the graph file or the log; the jobs are listed on the home page"
        )));
    }
    let page = c.params.page()?;
    let stats = query::job_stats(state).into_iter().find(|s| s.label == label);
    let mut chart: Vec<(u64, String, String, String)> = runs
        .iter()
        .filter_map(|r| query::run_duration_ms(r).map(|d| (d, r)))
        .take(120)
        .map(|(d, r)| {
            (d, jclass(r.status), c.link(&format!("/runs/{}", enc(&r.id))), r.id.to_string())
        })
        .collect();
    chart.reverse();
    let failures: Vec<&&Run> =
        runs.iter().filter(|r| r.status == JobStatus::JobFailed).take(5).collect();
    let total = runs.len();
    let body = html! {
        h1 { "Job " code { (label) } }
        @if !in_graph { p class="muted" { "Not in the graph file the server runs (the log has runs of it)." } }
        div class="card" data-live-id="jstats" {
            @match &stats {
                Some(s) => p {
                    (s.runs) " runs · " (s.completed) " completed · " (s.failed) " failed · success "
                    (s.success_ratio.map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0)))
                    " · p50 " (s.p50_ms.map_or("-".to_string(), fmt_ms))
                    " · p95 " (s.p95_ms.map_or("-".to_string(), fmt_ms))
                },
                None => p class="muted" { "No runs yet." },
            }
        }
        section data-live-id="chart" {
            h2 { "Durations" }
            @if chart.is_empty() { p class="muted" { "No finished run yet." } }
            @else {
                p class="muted" { "The last " (chart.len()) " finished runs, oldest on the left." }
                div class="scroll" { (svg::durations(&chart)) }
            }
        }
        section data-live-id="failures" {
            h2 { "Recent failures" }
            @if failures.is_empty() { p class="muted" { "None." } }
            @for r in &failures {
                div class="instance" {
                    p { (rlink(c, &r.id)) " · request " (blink(c, &r.request)) " · " (r.message) }
                    @let paths = crate::executor::output_paths(&c.shared.logs_dir, &r.id);
                    @let lines = tail_lines(&paths.stderr, 10).filter(|l| !l.is_empty()).or_else(|| tail_lines(&paths.stdout, 10));
                    @if let Some(lines) = lines { pre class="output" { (lines.join("\n")) } }
                }
            }
        }
        section data-live-id="jruns" {
            h2 { "Runs" }
            @let shown: Vec<&Run> = runs.iter().skip(page * PAGE).take(PAGE).copied().collect();
            (runs_table(c, &shown, false))
            (pager(c, page, total))
        }
    };
    Ok(layout(c, state, label, body))
}

// ---------------------------------------------------------------------------------------------
// Run

/// `/runs/ID`.
pub fn run(c: &Ctx, state: &State, id: &str) -> Result<Markup, PageError> {
    let Some(r) = state.runs.get(id) else {
        return Err(PageError::not_found(format!("no job run {id} in the log")));
    };
    let reader = c.shared.store.reader().map_err(StoreError::Open)?;
    let config = query::run_config(state, &reader, id)?;
    let paths = crate::executor::output_paths(&c.shared.logs_dir, &r.id);
    let body = html! {
        h1 { "Job run " span class="id" { (id) } }
        div class="card" data-live-id="rhead" {
            p {
                (badge(&jclass(r.status))) " job " (jlink(c, &r.job_label)) " · request " (blink(c, &r.request))
                " · attempt " (r.attempt)
            }
            p {
                "scheduled " (fmt_ts(r.first_ts)) " (seq " (seqlink(c, r.first_seq)) ")"
                @if let Some((s, t)) = r.running { " · running " (fmt_ts(t)) " (seq " (seqlink(c, s)) ")" }
                @if let Some((s, t)) = r.ended { " · ended " (fmt_ts(t)) " (seq " (seqlink(c, s)) ")" }
                @if let Some(d) = query::run_duration_ms(r) { " · " (fmt_ms(d)) }
                @if let Some(x) = r.exit_code { " · exit code " (x) }
            }
            @if !r.message.is_empty() { p class="msg" { (r.message) } }
            p { "Builds: " (refs_cell(c, &r.targets)) }
        }
        section {
            h2 { "Config" }
            @match &config {
                None => p class="muted" { "No config recorded." },
                Some(cfg) => {
                    table {
                        tr { th { "outputs" } td { @for o in &cfg.outputs { (plink(c, &o.str)) " " } } }
                        tr { th { "inputs" } td { @for i in &cfg.inputs { @if let Some(p) = &i.partition_ref { (plink(c, &p.str)) " " } } } }
                        tr { th { "args" } td { code { (format!("{:?}", cfg.args)) } } }
                        tr { th { "env" } td { @for (k, v) in &cfg.env { code { (k) "=" (v) } " " } } }
                    }
                }
            }
        }
        @if !r.inputs.is_empty() {
            section {
                h2 { "Read (from its manifest)" }
                ul {
                    @for i in &r.inputs {
                        li {
                            (short(i.dep_type.as_str_name())) " " (plink(c, &i.partition))
                            @if !i.producer_run.is_empty() { " (instance of run " (rlink(c, &i.producer_run)) ")" }
                        }
                    }
                }
            }
        }
        section data-live-id="output" {
            h2 { "Output" }
            @for (name, p) in [("stdout", &paths.stdout), ("stderr", &paths.stderr)] {
                @if let Some(lines) = tail_lines(p, 200) {
                    h3 { (name) }
                    pre class="output" { (lines.join("\n")) }
                }
            }
            @if !paths.stdout.exists() && !paths.stderr.exists() {
                p class="muted" { "No output captured (the run never started, or its logs were removed)." }
            }
        }
    };
    Ok(layout(c, state, &format!("Run {id}"), body))
}

// ---------------------------------------------------------------------------------------------
// Events

/// `*` and `?` globbing.
pub fn glob(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn event_kind(ev: &BuildEvent) -> (&'static str, String) {
    match &ev.event_type {
        Some(EventType::BuildRequestEvent(e)) => ("request", short(e.status().as_str_name())),
        Some(EventType::PartitionEvent(e)) => ("partition", short(e.status().as_str_name())),
        Some(EventType::JobEvent(e)) => ("job", short(e.status().as_str_name())),
        Some(EventType::DelegationEvent(_)) => ("delegation", "delegated".into()),
        Some(EventType::JobGraphEvent(_)) => ("job graph", "planned".into()),
        Some(EventType::EngineEvent(e)) => ("engine", short(e.kind().as_str_name())),
        None => ("?", String::new()),
    }
}

fn event_refs(ev: &BuildEvent) -> Vec<&str> {
    match &ev.event_type {
        Some(EventType::PartitionEvent(e)) => {
            e.partition_ref.iter().map(|p| p.str.as_str()).collect()
        }
        Some(EventType::JobEvent(e)) => {
            e.target_partitions.iter().map(|p| p.str.as_str()).collect()
        }
        Some(EventType::DelegationEvent(e)) => {
            e.partition_ref.iter().map(|p| p.str.as_str()).collect()
        }
        Some(EventType::BuildRequestEvent(e)) => {
            e.requested_partitions.iter().map(|p| p.str.as_str()).collect()
        }
        _ => Vec::new(),
    }
}

/// Events scanned per page at most (older ones are a link away), so a filtered page of a
/// million-event log stays fast.
const SCAN: u64 = 40_000;

/// `/events`: newest first, filtered by build, partition glob and job label.
pub fn events(c: &Ctx, state: &State) -> Result<Markup, PageError> {
    let build = c.params.get("build").map(str::to_string);
    let part = c.params.get("partition").map(str::to_string);
    let job = c.params.get("job").map(str::to_string);
    let top = state.last_seq;
    let before = match c.params.get("before") {
        None => top + 1,
        Some(b) => b
            .parse::<u64>()
            .map_err(|_| PageError::bad(format!("before={b:?} is not a seq (a number)")))?
            .min(top + 1),
    };
    let reader = c.shared.store.reader().map_err(StoreError::Open)?;
    let keep = |ev: &BuildEvent| -> bool {
        build.as_ref().is_none_or(|b| &ev.build_request_id == b)
            && part.as_ref().is_none_or(|p| event_refs(ev).iter().any(|r| glob(p, r)))
            && job.as_ref().is_none_or(|j| match &ev.event_type {
                Some(EventType::JobEvent(e)) => e.job_label.as_ref().is_some_and(|l| &l.label == j),
                _ => false,
            })
    };
    // Walk back in chunks from `before`, keeping the newest PAGE matches.
    let mut found: Vec<(u64, BuildEvent)> = Vec::new();
    let mut hi = before; // exclusive
    let floor = before.saturating_sub(SCAN).max(1);
    let chunk = 2_000u64;
    while hi > floor && found.len() < PAGE {
        let lo = hi.saturating_sub(chunk).max(floor);
        let mut got: Vec<(u64, BuildEvent)> = Vec::new();
        for frame in reader.frames_from(lo) {
            let frame = frame.map_err(StoreError::Read)?;
            let mut past = false;
            for rec in frame.records_from(lo) {
                let (seq, bytes) =
                    rec.map_err(|e| StoreError::Read(databuild_log::ReadError::from(e)))?;
                if seq >= hi {
                    past = true;
                    break;
                }
                let ev = <BuildEvent as prost::Message>::decode(bytes)
                    .map_err(|e| StoreError::Decode { seq, reason: e.to_string() })?;
                if keep(&ev) {
                    got.push((seq, ev));
                }
            }
            if past {
                break;
            }
        }
        got.reverse();
        found.extend(got);
        hi = lo;
    }
    found.truncate(PAGE);
    let oldest_scanned = if found.len() >= PAGE { found.last().map_or(hi, |f| f.0) } else { hi };
    let more = oldest_scanned > 1;
    let body = html! {
        h1 { "Events" }
        form method="get" action="/events" class="filters" {
            @if let Some(at) = c.at { input type="hidden" name="at" value=(at); }
            label { "build " input type="text" name="build" value=(build.clone().unwrap_or_default()) size="38"; }
            label { "partition glob " input type="text" name="partition" value=(part.clone().unwrap_or_default()) size="24" placeholder="report/*"; }
            label { "job " input type="text" name="job" value=(job.clone().unwrap_or_default()) size="20"; }
            button type="submit" { "Filter" }
            " " a href=(c.link("/events")) { "clear" }
        }
        section data-live-id="events" {
            @if before <= top { p { "Older than seq " (before) ". " a href=(c.with("before", None)) { "Newest" } } }
            @if found.is_empty() { p class="muted" { "No matching event in seqs " (hi) "–" (before.saturating_sub(1)) "." } }
            @else {
                table class="events" {
                    thead { tr { th { "seq" } th { "time" } th { "kind" } th { "request" } th { "what" } } }
                    tbody {
                        @for (seq, ev) in &found {
                            @let (kind, what) = event_kind(ev);
                            tr {
                                td { (seqlink(c, *seq)) }
                                td { (fmt_ts(ev.timestamp)) }
                                td { (kind) " " (badge(&what)) }
                                td { @if !ev.build_request_id.is_empty() { (blink(c, &ev.build_request_id)) } }
                                td class="msg" { (event_summary(c, ev)) }
                            }
                        }
                    }
                }
            }
            @if more {
                nav class="pager" {
                    a href=(c.with("before", Some(&oldest_scanned.to_string()))) { "older →" }
                    @if found.len() < PAGE { " (searched seqs " (hi) "–" (before.saturating_sub(1)) ")" }
                }
            }
        }
    };
    Ok(layout(c, state, "Events", body))
}

fn event_summary(c: &Ctx, ev: &BuildEvent) -> Markup {
    match &ev.event_type {
        Some(EventType::PartitionEvent(e)) => html! {
            @if let Some(p) = &e.partition_ref { (plink(c, &p.str)) }
            @if !e.job_run_id.is_empty() { " run " (rlink(c, &e.job_run_id)) }
            @if !e.message.is_empty() { " · " (svg::cut(&e.message, 160)) }
        },
        Some(EventType::JobEvent(e)) => html! {
            @if let Some(l) = &e.job_label { (jlink(c, &l.label)) " " }
            (rlink(c, &e.job_run_id))
            @for p in e.target_partitions.iter().take(3) { " " (plink(c, &p.str)) }
            @if !e.message.is_empty() { " · " (svg::cut(&e.message, 160)) }
        },
        Some(EventType::BuildRequestEvent(e)) => html! {
            @for p in e.requested_partitions.iter().take(3) { (plink(c, &p.str)) " " }
            (svg::cut(&e.message, 160))
        },
        Some(EventType::DelegationEvent(e)) => html! {
            @if let Some(p) = &e.partition_ref { (plink(c, &p.str)) }
            " → " (blink(c, &e.delegated_to_build_request_id))
        },
        Some(EventType::JobGraphEvent(g)) => html! {
            (g.job_graph.as_ref().map_or(0, |g| g.nodes.len())) " job runs planned"
        },
        Some(EventType::EngineEvent(e)) => html! { (e.message) },
        None => html! {},
    }
}
