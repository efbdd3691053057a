//! `graph`: the graph before anything is built (its jobs and their patterns, or with refs the
//! plan `analyze` prints), and `build -n`, which is `analyze`.

use serde_json::json;

use crate::args::{AnalyzeArgs, BuildArgs, Format, GraphArgs};
use crate::context::Ctx;
use crate::exit::{self, CliError};
use crate::render::{self, Table, out};

pub fn graph(ctx: &Ctx, a: GraphArgs) -> Result<u8, CliError> {
    ctx.formats("graph", &[Format::Text, Format::Json, Format::Mermaid])?;
    if !a.refs.is_empty() {
        // The planned DAG is exactly what `analyze` prints.
        let plan = AnalyzeArgs { refs: a.refs, plan: a.plan };
        return crate::cmd_build::analyze(ctx, plan);
    }
    let g = ctx.graph()?;
    match ctx.format {
        Format::Json => {
            for j in &g.jobs {
                out(&render::json(&json!({
                    "jobLabel": j.label,
                    "entrypoint": j.entrypoint_text,
                    "partitionPatterns": j.patterns,
                })));
            }
        }
        Format::Mermaid => {
            out("graph LR");
            for (i, j) in g.jobs.iter().enumerate() {
                let patterns: Vec<String> =
                    j.patterns.iter().map(|p| render::mermaid_label(p)).collect();
                out(&format!(
                    "  j{i}{{{{\"{}<br/>{}\"}}}}:::task",
                    render::mermaid_label(&j.label),
                    patterns.join("<br/>")
                ));
            }
            out("  classDef task fill:#e8f0fe,stroke:#4a6fd0");
        }
        Format::Text => {
            out(&format!(
                "graph {} ({}): {} jobs",
                render::safe(&g.label),
                g.path.display(),
                g.jobs.len()
            ));
            let mut t = Table::new(&["JOB", "PRODUCES (pattern)", "ENTRYPOINT"]);
            for j in &g.jobs {
                for (k, p) in j.patterns.iter().enumerate() {
                    let (label, entry) = if k == 0 {
                        (j.label.clone(), j.entrypoint_text.clone())
                    } else {
                        (String::new(), String::new())
                    };
                    t.plain(vec![label, p.clone(), entry]);
                }
            }
            t.print();
            out("`databuild graph REF...` shows the jobs a build of REF would run");
        }
    }
    Ok(exit::SUCCESS)
}

/// `build -n`: plan as `build` would, print the plan as `analyze` does, run and write nothing.
pub fn dry_run(ctx: &Ctx, a: BuildArgs) -> Result<u8, CliError> {
    let plan = crate::args::PlanOpts { force: a.force, stale: a.stale, jobs: a.jobs };
    crate::cmd_build::analyze(ctx, AnalyzeArgs { refs: a.refs, plan })
}
