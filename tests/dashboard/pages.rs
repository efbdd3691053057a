//! Every page's HTML: status codes, key content, escaping of hostile refs and labels, history,
//! forms (token, Host), with JavaScript nowhere needed (everything asserted is in the served HTML).

use crate::util::*;

const HOSTILE: &str = "h/<script>alert(1)</script>";
const HOSTILE_LABEL: &str = "<i>&job";

fn no_raw_script(body: &str) {
    // The one script tag is the dashboard's own; nothing user-supplied may open another.
    assert!(!body.contains("<script>alert"), "unescaped hostile text:\n{body}");
    assert!(!body.contains("<i>&job"), "unescaped hostile label:\n{body}");
}

#[test]
fn pages_render_escape_and_travel_in_time() {
    let s = Server::start(&[("raw", "raw/.*"), ("agg", "agg/.*"), (HOSTILE_LABEL, "h/.*")]);
    s.dep("agg/1", "raw/1");
    let id = s.build(&["agg/1"], false);
    s.wait_status(&id, "completed");
    let hostile = s.build(&[HOSTILE], false);
    s.wait_status(&hostile, "completed");

    // Home: both requests, job health (the hostile label escaped), the form with the token.
    let home = s.get("/");
    assert_eq!(home.status, 200);
    assert!(home.header("content-type").unwrap().starts_with("text/html"));
    assert!(home.body.contains(&id) && home.body.contains(&hostile));
    assert!(home.body.contains("&lt;i&gt;&amp;job"), "{}", home.body);
    assert!(home.body.contains(&format!("name=\"token\" value=\"{}\"", s.token)));
    assert!(home.body.contains("action=\"/ui/build\""));
    assert!(home.body.contains("data-live=\"1\""));
    no_raw_script(&home.body);

    // The build page: status, requested partitions, the graph (two boxes, one edge), timeline.
    let b = s.get(&format!("/builds/{id}"));
    assert_eq!(b.status, 200);
    assert!(b.body.contains("st-completed\">completed"));
    assert!(b.body.contains("href=\"/partition?ref=agg%2F1\""));
    let graph = b.body.split("data-live-id=\"graph\"").nth(1).unwrap();
    let graph = graph.split("</svg>").next().unwrap();
    assert_eq!(graph.matches("<rect").count(), 2, "{graph}");
    assert_eq!(graph.matches("class=\"edge\"").count(), 1, "{graph}");
    assert!(b.body.contains("class=\"timeline\""));
    assert!(!b.body.contains("id=\"cancel\""), "no Cancel on an ended request");
    let hb = s.get(&format!("/builds/{hostile}"));
    assert_eq!(hb.status, 200);
    assert!(hb.body.contains("h/&lt;script&gt;alert(1)&lt;/script&gt;"));
    no_raw_script(&hb.body);
    assert_eq!(s.get("/builds/no-such-request").status, 404);

    // The partition page: explain, the instance and what it read, lineage both ways.
    let p = s.get("/partition?ref=agg%2F1");
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Instances (1)"), "{}", p.body);
    assert!(p.body.contains("href=\"/partition?ref=raw%2F1\""));
    assert!(p.body.contains("Force rebuild"));
    let up = s.get("/partition?ref=raw%2F1");
    assert!(up.body.contains("Downstream") && up.body.contains("href=\"/partition?ref=agg%2F1\""));
    let hp = s.get(&format!("/partition?ref={}", enc(HOSTILE)));
    assert_eq!(hp.status, 200);
    no_raw_script(&hp.body);
    let unknown = s.get(&format!("/partition?ref={}", enc("zzz/<script>alert(1)</script>")));
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("&lt;script&gt;"));
    no_raw_script(&unknown.body);
    assert_eq!(s.get("/partition").status, 400);

    // Jobs and runs.
    let j = s.get("/jobs/agg");
    assert_eq!(j.status, 200);
    assert!(j.body.contains("class=\"durations\""), "{}", j.body);
    let hj = s.get(&format!("/jobs/{}", enc(HOSTILE_LABEL)));
    assert_eq!(hj.status, 200);
    no_raw_script(&hj.body);
    assert_eq!(s.get("/jobs/nope").status, 404);
    let run = j.body.split("href=\"/runs/").nth(1).unwrap().split('"').next().unwrap();
    let r = s.get(&format!("/runs/{run}"));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("built agg/1"), "the run's output: {}", r.body);
    assert_eq!(s.get("/runs/nope").status, 404);

    // Events: filters, bad input.
    let e = s.get("/events?partition=raw%2F*");
    assert_eq!(e.status, 200);
    assert!(e.body.contains("raw/1") && !e.body.contains(">agg/1<"), "{}", e.body);
    let he = s.get(&format!("/events?partition={}", enc("<script>alert(1)</script>")));
    assert_eq!(he.status, 200);
    no_raw_script(&he.body);
    assert_eq!(s.get("/events?before=x").status, 400);

    // History: the build as of its RECEIVED seq was not completed; a bad `at` is a 400.
    let received: u64 = b
        .body
        .split("(seq <a href=\"")
        .nth(1)
        .unwrap()
        .split("at=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let past = s.get(&format!("/builds/{id}?at={received}"));
    assert_eq!(past.status, 200);
    assert!(past.body.contains("data-live=\"0\""));
    assert!(past.body.contains(&format!("as of seq {received}")));
    assert!(!past.body.contains("st-completed\">completed"), "{}", past.body);
    assert!(!past.body.contains("id=\"cancel\""), "no actions in the past");
    assert_eq!(s.get(&format!("/builds/{id}?at=0")).status, 404, "not yet received at 0");
    let t = s.get("/?at=2000-01-01T00:00:00Z");
    assert_eq!(t.status, 200);
    assert!(t.body.contains("as of seq 0"), "{}", t.body);
    assert_eq!(s.get("/?at=yesterday").status, 400);
    // The history bar without JavaScript sends the slider's value, then the typed one: typed wins.
    let typed = s.get(&format!("/builds/{id}?at=999&at={received}"));
    assert!(typed.body.contains(&format!("as of seq {received}")), "{}", typed.body);
    assert_eq!(s.get("/?page=x").status, 400);

    // Assets are served by databuild itself.
    let js = s.get("/assets/app.js");
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().contains("javascript"));
    assert!(js.body.contains("EventSource"));
    assert_eq!(s.get("/assets/nope.js").status, 404);
}

#[test]
fn forms_need_the_token_and_the_host_check_applies() {
    let s = Server::start(&[("raw", "raw/.*")]);
    let ct = ("Content-Type", "application/x-www-form-urlencoded");
    let post = |path: &str, body: &str, extra: &[(&str, &str)]| {
        let mut h = vec![ct];
        h.extend_from_slice(extra);
        request(&s.addr, "POST", path, &h, body)
    };
    // No token, a wrong one: 401, nothing recorded.
    assert_eq!(post("/ui/build", &form(&[("refs", "raw/1")]), &[]).status, 401);
    assert_eq!(post("/ui/build", &form(&[("refs", "raw/1"), ("token", "x")]), &[]).status, 401);
    assert!(s.get("/").body.contains("No build request yet."), "nothing was built");
    // Another Host: 403, for pages and forms.
    let evil = [("Host", "evil.example:80")];
    assert_eq!(request(&s.addr, "GET", "/", &evil, "").status, 403);
    let body = form(&[("refs", "raw/1"), ("token", &s.token)]);
    assert_eq!(post("/ui/build", &body, &evil).status, 403);
    // Bad refs: 400 with the reason, escaped.
    let bad = post("/ui/build", &form(&[("refs", "nope/<b>"), ("token", &s.token)]), &[]);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("nope/&lt;b&gt;"), "{}", bad.body);
    assert_eq!(post("/ui/build", &form(&[("token", &s.token)]), &[]).status, 400);
    // The token in a form field, or as a bearer header: 303 to the new build's page.
    let ok = post("/ui/build", &body, &[]);
    assert_eq!(ok.status, 303, "{}", ok.body);
    let loc = ok.header("location").unwrap().to_string();
    assert!(loc.starts_with("/builds/"), "{loc}");
    let id = loc.trim_start_matches("/builds/").to_string();
    s.wait_status(&id, "completed");
    let auth = format!("Bearer {}", s.token);
    let forced =
        post("/ui/build", &form(&[("refs", "raw/1"), ("force", "1")]), &[("Authorization", &auth)]);
    assert_eq!(forced.status, 303);
    // Analyze shows the plan and records nothing.
    let a = post("/ui/analyze", &form(&[("refs", "raw/2"), ("token", &s.token)]), &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("<svg") && a.body.contains("raw/2"), "{}", a.body);
    assert!(a.body.contains("Nothing was recorded"));
    assert!(!s.get("/events").body.contains("raw/2"), "analyze recorded nothing");
    // Cancel: unknown 404, ended 409.
    assert_eq!(post("/ui/cancel/nope", &form(&[("token", &s.token)]), &[]).status, 404);
    assert_eq!(post(&format!("/ui/cancel/{id}"), &form(&[("token", &s.token)]), &[]).status, 409);
    assert_eq!(post(&format!("/ui/cancel/{id}"), "", &[]).status, 401);
}

#[test]
fn the_partition_page_says_when_a_partition_is_stale_and_why() {
    let s = Server::start(&[("raw", "raw/.*"), ("agg", "agg/.*")]);
    s.dep("agg/1", "raw/1");
    let id = s.build(&["agg/1"], false);
    s.wait_status(&id, "completed");
    let fresh = s.get("/partition?ref=agg%2F1");
    assert!(!fresh.body.contains("st-stale\">stale"), "{}", fresh.body);
    // Rebuilding the input makes what read the old instance stale.
    let forced = s.build(&["raw/1"], true);
    s.wait_status(&forced, "completed");
    let p = s.get("/partition?ref=agg%2F1");
    assert_eq!(p.status, 200);
    assert!(p.body.contains("st-stale\">stale"), "{}", p.body);
    assert!(p.body.contains("input raw/1 rebuilt at seq "), "{}", p.body);
}
