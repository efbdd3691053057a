//! The dashboard in a real browser: headless Chromium driven through chromedriver's W3C
//! WebDriver HTTP API.
//!
//! The WebDriver client is the dozen calls below over the test's own HTTP/1.1 helper, not a
//! crate: WebDriver is plain JSON over HTTP, and a client crate (fantoccini, thirtyfour) would
//! add an HTTP client stack and TLS to compile for six scenarios.
//!
//! Without Chromium (`chromium` and `chromedriver` on PATH) the test prints why and passes, unless
//! `DATABUILD_REQUIRE_BROWSER=1` (CI) makes that a failure. Screenshots go to
//! `target/tmp/dashboard-screenshots/` (kept after the run, for looking at them).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// chromedriver (in its own process group, with the browsers it starts) and one session.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &std::path::Path, driver: &std::path::Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver: child,
            addr: format!("127.0.0.1:{port}"),
            session: String::new(),
            _profile: profile,
        };
        wait_until("chromedriver listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&b.addr).is_ok()
        });
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-breakpad",
            "--disable-crash-reporter",
            "--window-size=1400,1000",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", b._profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args}
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let h = [("Content-Type", "application/json")];
        let r = request(&self.addr, method, path, &h, &body);
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("chromedriver answered {}: {e}: {}", r.status, r.body));
        assert!(r.status == 200, "WebDriver {method} {path}: {}", r.body);
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None).as_str().unwrap_or_default().to_string()
    }

    /// The first element matching `css`, waiting for it a little.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = json!({"using": "css selector", "value": css}).to_string();
            let r = request(
                &self.addr,
                "POST",
                &self.s("/element"),
                &[("Content-Type", "application/json")],
                &body,
            );
            if r.status == 200 {
                let v: Value = serde_json::from_str(&r.body).unwrap();
                return v["value"][ELEMENT].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no element {css} on {}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `method` on the element `css` matches, finding it again if a live update replaced it
    /// between the find and the call (a "stale element reference").
    fn on_element(&self, css: &str, method: &str, what: &str, body: Option<Value>) -> Value {
        for _ in 0..20 {
            let e = self.find(css);
            let b = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            let h = [("Content-Type", "application/json")];
            let r = request(&self.addr, method, &self.s(&format!("/element/{e}/{what}")), &h, &b);
            if r.status == 200 {
                return serde_json::from_str::<Value>(&r.body).unwrap()["value"].clone();
            }
            assert!(r.body.contains("stale element"), "WebDriver {what} on {css}: {}", r.body);
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{css} kept being replaced");
    }

    fn text(&self, css: &str) -> String {
        self.on_element(css, "GET", "text", None).as_str().unwrap_or_default().to_string()
    }

    fn click(&self, css: &str) {
        self.on_element(css, "POST", "click", Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "POST", "value", Some(json!({ "text": text })));
    }

    fn js(&self, script: &str) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({"script": script, "args": []})))
    }

    fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let v = self.call("GET", &self.s("/screenshot"), None);
        let png = base64(v.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    fn wait_text(&self, css: &str, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.text(css);
            if t.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} shows {t:?}, not {want:?}, on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                request(&self.addr, "DELETE", &format!("/session/{}", self.session), &[], "")
            }));
        }
        // chromedriver and whatever it started share its process group.
        let pgid = self.driver.id();
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
        let _ = self.driver.wait();
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn dashboard_in_a_real_browser() {
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = on_path(&["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let msg = "headless Chromium not found (apt-get install chromium chromium-driver)";
        if std::env::var("DATABUILD_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("{msg}, and DATABUILD_REQUIRE_BROWSER=1");
        }
        eprintln!("skipping the browser tests: {msg}");
        return;
    };
    let s = Server::start(&[("raw", "raw/.*"), ("agg", "agg/.*")]);
    let b = Browser::start(&chromium, &driver);

    // 1. The home page lists builds.
    let first = s.build(&["raw/1"], false);
    s.wait_status(&first, "completed");
    b.goto(&s.url("/"));
    b.wait_text("#requests", &first, Duration::from_secs(5));
    b.screenshot("home");

    // 2. A build page changes while its build runs, without a reload.
    s.slow("raw/live", 2);
    s.dep("agg/live", "raw/live");
    let live = s.build(&["agg/live"], false);
    b.goto(&s.url(&format!("/builds/{live}")));
    b.js("window.__noReload = 42;");
    let before = b.text("[data-live-id=build-head] .badge");
    assert_ne!(before, "completed", "the build was still running when the page opened");
    b.wait_text("[data-live-id=build-head] .badge", "completed", Duration::from_secs(20));
    assert_eq!(b.js("return window.__noReload;"), json!(42), "the page was not reloaded");
    let graph = b.text("[data-live-id=requested]");
    assert!(graph.contains("agg/live"), "{graph}");
    b.screenshot("build");

    // 3. The Build form starts a build, which then appears on the home page.
    b.goto(&s.url("/"));
    b.type_into("#refs", "raw/form");
    b.click("form.build-form button.primary");
    wait_until("the form led to the build page", Duration::from_secs(10), || {
        b.url().contains("/builds/")
    });
    let formed = b.url().rsplit('/').next().unwrap().to_string();
    b.wait_text("[data-live-id=build-head] .badge", "completed", Duration::from_secs(20));
    b.goto(&s.url("/"));
    b.wait_text("#requests", &formed, Duration::from_secs(5));
    b.screenshot("form");

    // 4. Cancel cancels.
    s.slow("raw/cancel", 60);
    let doomed = s.build(&["raw/cancel"], false);
    b.goto(&s.url(&format!("/builds/{doomed}")));
    b.wait_text("[data-live-id=build-head]", "1 running", Duration::from_secs(20));
    b.click("#cancel");
    b.wait_text("[data-live-id=build-head] .badge", "cancelled", Duration::from_secs(30));
    b.screenshot("cancel");

    // 5. The partition page's lineage picture navigates.
    b.goto(&s.url("/partition?ref=agg%2Flive"));
    b.click("[data-live-id=lineage] svg a[href=\"/partition?ref=raw%2Flive\"]");
    wait_until("the lineage link was followed", Duration::from_secs(10), || {
        b.url().ends_with("/partition?ref=raw%2Flive")
    });
    b.wait_text("h1", "raw/live", Duration::from_secs(5));
    let down = b.text("[data-live-id=lineage]");
    assert!(down.contains("agg/live"), "raw/live's downstream names agg/live: {down}");
    b.screenshot("partition");

    // 6. ?at=SEQ shows an older state than now: the live build before it completed.
    b.goto(&s.url(&format!("/builds/{live}")));
    let received = b.text("[data-live-id=build-head] p a");
    let seq: u64 = received.trim().parse().expect("the RECEIVED seq link");
    b.goto(&s.url(&format!("/builds/{live}?at={}", seq + 2)));
    let then = b.text("[data-live-id=build-head] .badge");
    assert_ne!(then, "completed", "as of seq {}", seq + 2);
    assert!(b.text(".history").contains(&format!("as of seq {}", seq + 2)));
    // Stepping forward through history reaches the completed state.
    b.click(".history a.live-link");
    b.wait_text("[data-live-id=build-head] .badge", "completed", Duration::from_secs(5));
    b.goto(&s.url(&format!("/builds/{live}?at={}", seq + 2)));
    b.screenshot("history");
}
