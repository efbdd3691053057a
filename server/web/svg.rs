//! Pictures laid out on the server: a graph (layered, left to right), a timeline of runs, a bar
//! chart of durations, a lineage tree. Each is plain SVG with links, readable without
//! JavaScript; colours come from the stylesheet through `st-*` classes.

use std::collections::{BTreeMap, HashMap};

use maud::{Markup, html};

/// A node of a graph picture.
#[derive(Clone, Debug)]
pub struct Node {
    /// What the box says (cut to fit; the whole text is its tooltip).
    pub label: String,
    /// A second, smaller line (may be empty).
    pub sub: String,
    /// A CSS class suffix: `st-<class>` colours the box.
    pub class: String,
    /// Where a click goes (may be empty).
    pub href: String,
}

const NODE_W: f64 = 270.0;
const NODE_H: f64 = 38.0;
const GAP_X: f64 = 70.0;
const GAP_Y: f64 = 12.0;

/// Cuts `s` to at most `n` characters, with an ellipsis.
pub fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Layers of a graph: the longest path from a source (cycles cannot occur in a plan; if they
/// did, the nodes on them keep layer 0 rather than looping).
pub fn layers(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut indeg = vec![0usize; n];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        if a < n && b < n && a != b {
            indeg[b] += 1;
            out[a].push(b);
        }
    }
    let mut layer = vec![0usize; n];
    let mut queue: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(a) = queue.pop() {
        for &b in &out[a] {
            layer[b] = layer[b].max(layer[a] + 1);
            indeg[b] -= 1;
            if indeg[b] == 0 {
                queue.push(b);
            }
        }
    }
    layer
}

/// A layered picture of a directed graph: sources on the left, each node in the column of its
/// longest path from a source, ordered in its column by where its predecessors are.
pub fn graph(nodes: &[Node], edges: &[(usize, usize)]) -> Markup {
    let n = nodes.len();
    let layer = layers(n, edges);
    let depth = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut cols: Vec<Vec<usize>> = vec![Vec::new(); depth];
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        if a < n && b < n && a != b {
            preds[b].push(a);
        }
    }
    let mut row = vec![0f64; n];
    for (l, col) in cols.iter_mut().enumerate() {
        let mut members: Vec<usize> = (0..n).filter(|&i| layer[i] == l).collect();
        // Barycentre of the predecessors (already placed), then the label: stable and readable.
        let key = |i: usize| -> f64 {
            let p = &preds[i];
            if p.is_empty() {
                f64::MAX
            } else {
                p.iter().map(|&j| row[j]).sum::<f64>() / p.len() as f64
            }
        };
        members.sort_by(|&a, &b| {
            key(a).total_cmp(&key(b)).then_with(|| nodes[a].label.cmp(&nodes[b].label))
        });
        for (r, &i) in members.iter().enumerate() {
            row[i] = r as f64;
        }
        *col = members;
    }
    let rows = cols.iter().map(Vec::len).max().unwrap_or(0);
    let width = depth as f64 * (NODE_W + GAP_X) - GAP_X + 20.0;
    let height = rows as f64 * (NODE_H + GAP_Y) + 10.0;
    let pos =
        |i: usize| (10.0 + layer[i] as f64 * (NODE_W + GAP_X), 5.0 + row[i] * (NODE_H + GAP_Y));
    html! {
        svg class="graph" xmlns="http://www.w3.org/2000/svg" width=(width.max(100.0)) height=(height.max(50.0))
            viewBox=(format!("0 0 {} {}", width.max(100.0), height.max(50.0))) role="img" {
            @for &(a, b) in edges {
                @if a < n && b < n && a != b {
                    @let (ax, ay) = pos(a);
                    @let (bx, by) = pos(b);
                    @let (x1, y1, x2, y2) = (ax + NODE_W, ay + NODE_H / 2.0, bx, by + NODE_H / 2.0);
                    path class="edge" d=(format!("M{x1:.0},{y1:.0} C{:.0},{y1:.0} {:.0},{y2:.0} {x2:.0},{y2:.0}", x1 + GAP_X / 2.0, x2 - GAP_X / 2.0)) {}
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                @let (x, y) = pos(i);
                a href=(node.href) {
                    g class=(format!("node st-{}", node.class)) {
                        title { (node.label) @if !node.sub.is_empty() { " — " (node.sub) } }
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="5" {}
                        text x=(x + 8.0) y=(y + 16.0) class="nl" { (cut(&node.label, 37)) }
                        text x=(x + 8.0) y=(y + 31.0) class="ns" { (cut(&node.sub, 42)) }
                    }
                }
            }
        }
    }
}

/// Collapses a graph to one node per group (`group[i]` names node i's group): the box counts its
/// members by class, and takes the class that matters most (failed, then building, ...).
pub fn collapse(
    nodes: &[Node],
    edges: &[(usize, usize)],
    group: &[String],
    href: impl Fn(&str) -> String,
) -> (Vec<Node>, Vec<(usize, usize)>) {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for g in group {
        let next = index.len();
        index.entry(g).or_insert(next);
    }
    let mut counts: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); index.len()];
    for (i, g) in group.iter().enumerate() {
        *counts[index[g.as_str()]].entry(nodes[i].class.as_str()).or_default() += 1;
    }
    let rank = |c: &str| match c {
        "failed" => 0,
        "building" | "running" => 1,
        "scheduled" | "analyzed" | "requested" => 2,
        "delegated" => 3,
        "cancelled" => 4,
        "available" | "completed" => 5,
        _ => 6,
    };
    let mut out = vec![
        Node {
            label: String::new(),
            sub: String::new(),
            class: String::new(),
            href: String::new()
        };
        index.len()
    ];
    for (g, &i) in &index {
        let c = &counts[i];
        let total: usize = c.values().sum();
        let class = c.keys().min_by_key(|k| rank(k)).map_or("unknown", |k| k);
        out[i] = Node {
            label: format!("{g} ({total})"),
            sub: c.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
            class: class.to_string(),
            href: href(g),
        };
    }
    let mut e: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|&(a, b)| {
            let (ga, gb) = (index[group.get(a)?.as_str()], index[group.get(b)?.as_str()]);
            (ga != gb).then_some((ga, gb))
        })
        .collect();
    e.sort_unstable();
    e.dedup();
    (out, e)
}

/// A bar of a timeline.
#[derive(Clone, Debug)]
pub struct Bar {
    /// The row's label.
    pub label: String,
    /// When it was queued (ns).
    pub queued: i64,
    /// When it started (ns), if it did.
    pub start: Option<i64>,
    /// When it ended (ns); `None`: still going at `now`.
    pub end: Option<i64>,
    /// Colour class.
    pub class: String,
    /// Link.
    pub href: String,
}

fn fmt_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 120_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.1} min", ms / 60_000.0)
    }
}

/// A Gantt chart: one row per bar, time left to right from `t0` to `now` (ns). The thin part of
/// a bar is time queued, the thick part time running.
pub fn timeline(bars: &[Bar], t0: i64, now: i64) -> Markup {
    let label_w = 260.0;
    let plot_w = 640.0;
    let row_h = 20.0;
    let t_end =
        bars.iter().map(|b| b.end.unwrap_or(now)).chain([now]).max().unwrap_or(now).max(t0 + 1);
    let span = (t_end - t0) as f64;
    let x = |t: i64| label_w + ((t - t0).max(0) as f64 / span) * plot_w;
    let height = bars.len() as f64 * row_h + 24.0;
    html! {
        svg class="timeline" xmlns="http://www.w3.org/2000/svg" width=(label_w + plot_w + 10.0) height=(height)
            viewBox=(format!("0 0 {} {height}", label_w + plot_w + 10.0)) role="img" {
            line class="axis" x1=(label_w) y1=(height - 18.0) x2=(label_w + plot_w) y2=(height - 18.0) {}
            text class="ns" x=(label_w) y=(height - 4.0) { "0" }
            text class="ns" x=(label_w + plot_w) y=(height - 4.0) text-anchor="end" { (fmt_ms(span / 1e6)) }
            @for (i, b) in bars.iter().enumerate() {
                @let y = i as f64 * row_h + 2.0;
                @let end = b.end.unwrap_or(now);
                a href=(b.href) {
                    g class=(format!("bar st-{}", b.class)) {
                        title {
                            (b.label) " — " (b.class)
                            @if let Some(s) = b.start { ", ran " (fmt_ms((end - s).max(0) as f64 / 1e6)) }
                        }
                        text class="ns" x="4" y=(y + 13.0) { (cut(&b.label, 40)) }
                        rect class="queued" x=(x(b.queued)) y=(y + 7.0) width=((x(b.start.unwrap_or(end)) - x(b.queued)).max(1.0)) height="3" {}
                        @if let Some(s) = b.start {
                            rect x=(x(s)) y=(y + 2.0) width=((x(end) - x(s)).max(2.0)) height=(row_h - 6.0) rx="2" {}
                        }
                    }
                }
            }
        }
    }
}

/// A bar chart of run durations, oldest on the left: `(duration ms, class, href)`.
pub fn durations(runs: &[(u64, String, String, String)]) -> Markup {
    let h = 140.0;
    let bw = 8.0;
    let max = runs.iter().map(|r| r.0).max().unwrap_or(0).max(1) as f64;
    let width = runs.len() as f64 * (bw + 2.0) + 60.0;
    html! {
        svg class="durations" xmlns="http://www.w3.org/2000/svg" width=(width.max(200.0)) height=(h + 20.0)
            viewBox=(format!("0 0 {} {}", width.max(200.0), h + 20.0)) role="img" {
            text class="ns" x="0" y="10" { (fmt_ms(max)) }
            text class="ns" x="0" y=(h) { "0" }
            line class="axis" x1="55" y1=(h) x2=(width) y2=(h) {}
            @for (i, (ms, class, href, id)) in runs.iter().enumerate() {
                @let bh = ((*ms as f64 / max) * (h - 10.0)).max(1.0);
                a href=(href) {
                    g class=(format!("bar st-{class}")) {
                        title { (id) ": " (fmt_ms(*ms as f64)) " (" (class) ")" }
                        rect x=(58.0 + i as f64 * (bw + 2.0)) y=(h - bh) width=(bw) height=(bh) {}
                    }
                }
            }
        }
    }
}

/// A tree for the lineage picture: one box per node, children to one side.
#[derive(Clone, Debug)]
pub struct TreeNode {
    /// The box.
    pub node: Node,
    /// Its children.
    pub children: Vec<TreeNode>,
}

fn place(
    t: &TreeNode,
    depth: usize,
    next: &mut f64,
    out: &mut Vec<(usize, f64, Node)>,
    edges: &mut Vec<(usize, usize)>,
) -> usize {
    let kids: Vec<usize> =
        t.children.iter().map(|c| place(c, depth + 1, next, out, edges)).collect();
    let y = if kids.is_empty() {
        let y = *next;
        *next += 1.0;
        y
    } else {
        kids.iter().map(|&k| out[k].1).sum::<f64>() / kids.len() as f64
    };
    out.push((depth, y, t.node.clone()));
    let me = out.len() - 1;
    for k in kids {
        edges.push((me, k));
    }
    me
}

/// Lineage around one node: `up` (what it was built from) to the left, `down` (what was built
/// from it) to the right.
pub fn lineage(center: &Node, up: &[TreeNode], down: &[TreeNode]) -> Markup {
    let root_up = TreeNode { node: center.clone(), children: up.to_vec() };
    let root_down = TreeNode { node: center.clone(), children: down.to_vec() };
    let (mut pu, mut eu, mut nu) = (Vec::new(), Vec::new(), 0.0);
    let (mut pd, mut ed, mut nd) = (Vec::new(), Vec::new(), 0.0);
    let ru = place(&root_up, 0, &mut nu, &mut pu, &mut eu);
    let rd = place(&root_down, 0, &mut nd, &mut pd, &mut ed);
    let du = pu.iter().map(|p| p.0).max().unwrap_or(0);
    let dd = pd.iter().map(|p| p.0).max().unwrap_or(0);
    let rows = nu.max(nd).max(1.0);
    // Centre both trees on the same row.
    let (cu, cd) = (pu[ru].1, pd[rd].1);
    let mid = cu.max(cd);
    let col = |d: isize| 10.0 + (du as isize + d) as f64 * (NODE_W + GAP_X);
    let width = (du + dd + 1) as f64 * (NODE_W + GAP_X) - GAP_X + 20.0;
    let height = (rows + (mid - cu.min(cd))) * (NODE_H + GAP_Y) + 10.0;
    let mut boxes: Vec<(f64, f64, &Node)> = Vec::new();
    let mut lines: Vec<(f64, f64, f64, f64)> = Vec::new();
    let yy = |r: f64| 5.0 + r * (NODE_H + GAP_Y);
    let mut index_u: HashMap<usize, (f64, f64)> = HashMap::new();
    for (i, (d, r, node)) in pu.iter().enumerate() {
        let p = (col(-(*d as isize)), yy(r + mid - cu));
        index_u.insert(i, p);
        boxes.push((p.0, p.1, node));
    }
    for &(a, b) in &eu {
        let (pa, pb) = (index_u[&a], index_u[&b]);
        lines.push((pb.0 + NODE_W, pb.1 + NODE_H / 2.0, pa.0, pa.1 + NODE_H / 2.0));
    }
    let mut index_d: HashMap<usize, (f64, f64)> = HashMap::new();
    for (i, (d, r, node)) in pd.iter().enumerate() {
        let p = (col(*d as isize), yy(r + mid - cd));
        index_d.insert(i, p);
        if i != rd {
            boxes.push((p.0, p.1, node));
        }
    }
    for &(a, b) in &ed {
        let (pa, pb) = (index_d[&a], index_d[&b]);
        lines.push((pa.0 + NODE_W, pa.1 + NODE_H / 2.0, pb.0, pb.1 + NODE_H / 2.0));
    }
    html! {
        svg class="graph lineage" xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img" {
            @for (x1, y1, x2, y2) in &lines {
                path class="edge" d=(format!("M{x1:.0},{y1:.0} C{:.0},{y1:.0} {:.0},{y2:.0} {x2:.0},{y2:.0}", x1 + GAP_X / 2.0, x2 - GAP_X / 2.0)) {}
            }
            @for (x, y, node) in &boxes {
                a href=(node.href) {
                    g class=(format!("node st-{}", node.class)) {
                        title { (node.label) @if !node.sub.is_empty() { " — " (node.sub) } }
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="5" {}
                        text x=(x + 8.0) y=(y + 16.0) class="nl" { (cut(&node.label, 37)) }
                        text x=(x + 8.0) y=(y + 31.0) class="ns" { (cut(&node.sub, 42)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(l: &str) -> Node {
        Node { label: l.into(), sub: String::new(), class: "available".into(), href: "#".into() }
    }

    #[test]
    fn layers_follow_longest_paths() {
        // 0 -> 1 -> 2, 0 -> 2: 2 sits after 1.
        assert_eq!(layers(3, &[(0, 1), (1, 2), (0, 2)]), vec![0, 1, 2]);
        // A cycle does not loop; its nodes stay where they are.
        assert_eq!(layers(2, &[(0, 1), (1, 0)]), vec![0, 0]);
    }

    #[test]
    fn graph_escapes_labels() {
        let s = graph(&[n("<script>alert(1)</script>"), n("b")], &[(0, 1)]).into_string();
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("&lt;script&gt;"));
        assert_eq!(s.matches("<path").count(), 1);
    }

    #[test]
    fn collapse_groups_and_dedups_edges() {
        let nodes = vec![n("a1"), n("a2"), n("b1")];
        let group = vec!["A".to_string(), "A".to_string(), "B".to_string()];
        let (g, e) = collapse(&nodes, &[(0, 2), (1, 2)], &group, |s| s.to_string());
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].label, "A (2)");
        assert_eq!(e, vec![(0, 1)]);
    }
}
