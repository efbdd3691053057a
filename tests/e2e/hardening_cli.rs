//! Hardening: errors that say what, where, why and what to do; `verify` that refuses to call a
//! log complete without evidence; `explain` that reads only the tail of a job's output; `gc`.

use crate::util::*;

fn built() -> Env {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.run(&["build", "raw/1"]).ok();
    e
}

// Root ignores permission bits, so the unusable paths are made of the wrong kind of file instead
// (a directory where a file belongs, a file where a directory belongs): the same error paths.

#[test]
fn an_unusable_tail_file_is_named_not_reported_as_file_exists() {
    let e = built();
    let tail = e.log_dir().join("TAIL");
    std::fs::remove_file(&tail).unwrap();
    std::fs::create_dir(&tail).unwrap();
    let out = e.run(&["build", "raw/2"]);
    out.code(3);
    let line = out.error_line();
    assert!(!line.contains("File exists"), "{line}");
    assert!(line.contains("TAIL"), "names the file: {line}");
    assert!(line.contains("check the path"), "says what to do: {line}");
}

#[test]
fn a_log_flag_naming_a_file_or_a_dangling_link_is_bad_input() {
    let e = built();
    e.write("afile", "x\n");
    std::os::unix::fs::symlink(e.path().join("nowhere"), e.path().join("dangling")).unwrap();
    for (log, why) in [("afile", "not a directory"), ("dangling", "does not exist")] {
        for args in [&["status"][..], &["build", "raw/3"], &["replay"], &["verify"]] {
            let mut a = vec!["--log", log];
            a.extend_from_slice(args);
            let out = e.run(&a);
            out.code(2);
            let line = out.error_line();
            assert!(!line.contains("File exists"), "{a:?}: {line}");
            assert!(line.contains(log) && line.contains(why), "{a:?}: {line}");
            assert!(line.contains("--log"), "says what to do: {a:?}: {line}");
        }
    }
    assert!(!e.exists("nowhere"), "nothing was created through the link");
}

#[test]
fn an_unusable_job_logs_directory_is_named_before_the_build_starts() {
    let e = built();
    let logs = e.path().join(".databuild/logs");
    std::fs::rename(&logs, e.path().join("logs.old")).unwrap();
    std::fs::write(&logs, "not a directory").unwrap();
    for args in [&["build", "raw/2"][..], &["recover"]] {
        let out = e.run(args);
        out.code(2);
        let line = out.error_line();
        assert!(line.contains(".databuild/logs"), "{args:?}: names the path: {line}");
        assert!(line.contains("job output"), "{args:?}: says what it is: {line}");
        assert!(line.contains("not a directory") && !line.contains("File exists"), "{line}");
    }
    assert!(!e.ledger().contains(&"raw/2".to_string()), "no job ran");
}

/// A log of two builds; returns (env, its last seq).
fn two_builds() -> (Env, u64) {
    let e = built();
    e.run(&["build", "raw/2"]).ok();
    let last = events(&e).len() as u64;
    (e, last)
}

fn verify_refuses(e: &Env, what: &str, needle: &str) -> String {
    let v = e.run(&["verify"]);
    v.code(3);
    // The result line (the log's path, a random temp dir, may contain "OK" itself).
    let result = v.stdout.lines().find(|l| l.starts_with("result")).unwrap_or_default();
    assert!(!result.contains("OK"), "{what}: never OK:\n{}", v.stdout);
    let line = v.error_line();
    assert!(line.contains(needle), "{what}: {line}");
    let j = e.run(&["verify", "--format", "json"]);
    j.code(3);
    assert_eq!(j.json_lines()[0]["sound"], false, "{what}: {}", j.stdout);
    line
}

#[test]
fn verify_without_checkpoint_does_not_claim_a_complete_log() {
    let (e, _) = two_builds();
    std::fs::remove_file(e.log_dir().join("CHECKPOINT")).unwrap();
    std::fs::remove_file(e.log_dir().join("TAIL")).unwrap();
    let line = verify_refuses(&e, "no CHECKPOINT", "cannot prove the log is complete");
    assert!(line.contains("CHECKPOINT"), "{line}");
}

#[test]
fn verify_takes_tail_as_evidence_of_a_deleted_newest_segment() {
    let (e, last) = two_builds();
    std::fs::remove_file(e.log_dir().join("CHECKPOINT")).unwrap();
    std::fs::remove_file(e.log_dir().join("0000000000000000.seg")).unwrap();
    let line = verify_refuses(&e, "segment and CHECKPOINT deleted", "TAIL");
    assert!(line.contains(&format!("seq {}", last + 1)), "names how far it reached: {line}");
}

#[test]
fn verify_takes_a_snapshot_past_the_end_as_evidence_of_a_missing_end() {
    let (e, last) = two_builds();
    let seg = std::fs::read(e.log_dir().join("0000000000000000.seg")).unwrap();
    // A snapshot's header: magic, fold version, then the log id (the segment header's, at 16).
    let mut snap = b"DBSNAP\x00\x1a".to_vec();
    snap.extend_from_slice(&3u32.to_le_bytes());
    snap.extend_from_slice(&seg[16..32]);
    snap.extend_from_slice(&(last + 16).to_le_bytes());
    e.write(&format!(".databuild/log/snapshots/{:020}.snap", last + 16), "");
    std::fs::write(e.log_dir().join(format!("snapshots/{:020}.snap", last + 16)), &snap).unwrap();
    std::fs::remove_file(e.log_dir().join("CHECKPOINT")).unwrap();
    std::fs::remove_file(e.log_dir().join("TAIL")).unwrap();
    let line = verify_refuses(&e, "snapshot past the end", "snapshot");
    assert!(line.contains(&format!("seq {}", last + 16)), "{line}");
    // A repair that cuts the log removes the snapshots past the cut with it.
    let (e, last) = two_builds();
    let mut b = std::fs::read(e.log_dir().join("0000000000000000.seg")).unwrap();
    e.write(&format!(".databuild/log/snapshots/{:020}.snap", last), "");
    let n = b.len();
    b[n - 64] ^= 0x55;
    std::fs::write(e.log_dir().join("0000000000000000.seg"), &b).unwrap();
    e.run(&["repair", "--truncate"]).ok();
    assert!(!e.exists(&format!(".databuild/log/snapshots/{:020}.snap", last)));
    e.run(&["verify"]).ok();
}

/// A failed raw/1 and the id of its run.
fn failed_run() -> (Env, String) {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.fail("raw/1");
    e.run(&["build", "raw/1"]).code(1);
    let x = e.run(&["explain", "raw/1", "--format", "json"]).ok().json_lines();
    let run = x[0]["jobRunId"].as_str().unwrap().to_string();
    (e, run)
}

#[test]
fn explain_reads_only_the_tail_of_a_huge_output() {
    let (e, run) = failed_run();
    // 1 GiB of output (sparse, so the test is cheap), its last lines at the end.
    let stderr = e.path().join(format!(".databuild/logs/{run}/stderr"));
    let f = std::fs::OpenOptions::new().write(true).truncate(true).open(&stderr).unwrap();
    f.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"\nline one\nline two\nthe last line\n", 1 << 30).unwrap();
    drop(f);
    // Under a 512 MiB address-space limit, reading the whole file would fail.
    let out = e.run_limited("ulimit -v 524288", &["explain", "raw/1"]);
    out.ok();
    assert!(out.stdout.contains("the last line"), "{}", out.stdout);
    assert!(out.stdout.contains("line two"), "{}", out.stdout);
}

#[test]
fn explain_caps_each_shown_line() {
    let (e, run) = failed_run();
    let stderr = e.path().join(format!(".databuild/logs/{run}/stderr"));
    let long = "x".repeat(5 << 20);
    std::fs::write(&stderr, format!("first\n{long}\nlast words\n")).unwrap();
    for args in [&["explain", "raw/1"][..], &["explain", "raw/1", "--format", "json"]] {
        let out = e.run(args);
        out.ok();
        assert!(out.stdout.len() < 4096, "{args:?}: {} bytes printed", out.stdout.len());
        assert!(out.stdout.contains("last words"), "{}", out.stdout);
        assert!(out.stdout.contains("bytes cut)"), "{}", out.stdout);
    }
}

fn dirs_in(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn gc_removes_output_of_ended_runs_only_and_never_the_log() {
    let e = built();
    let logs = e.path().join(".databuild/logs");
    let ended = dirs_in(&logs);
    assert_eq!(ended.len(), 2, "a run's output and its request's config output: {ended:?}");
    let log_before = dirs_in(&e.log_dir());
    let events_before = events(&e);
    // Recent output is kept.
    let out = e.run(&["gc", "--logs-older-than", "1"]);
    out.ok();
    assert_eq!(dirs_in(&logs), ended);
    // A build in flight: its request and run directories must survive.
    let child = e.spawn(&["build", "raw/2"], &[("SLEEP", "3")]);
    wait_until("raw/2 to run", || e.ledger().contains(&"raw/2".to_string()));
    let live: Vec<String> = dirs_in(&logs).into_iter().filter(|d| !ended.contains(d)).collect();
    assert_eq!(live.len(), 2, "{live:?}");
    let dry = e.run(&["gc", "--logs-older-than", "0", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert_eq!(dirs_in(&logs).len(), 4, "a dry run removes nothing");
    let out = e.run(&["gc", "--logs-older-than", "0"]);
    out.ok();
    for d in &ended {
        assert!(out.stdout.contains(d.as_str()), "names what it removed: {}", out.stdout);
    }
    assert!(out.stdout.contains("freed"), "{}", out.stdout);
    assert_eq!(dirs_in(&logs), live, "only the ended run's and request's output went");
    finish(child, DEADLINE).ok();
    assert_eq!(dirs_in(&e.log_dir()), log_before, "the event log is untouched");
    assert_eq!(events(&e)[..events_before.len()], events_before[..]);
    e.run(&["verify"]).ok();
    e.run(&["gc"]).code(2);
}

#[test]
fn gc_torn_removes_torn_tail_and_repair_backups() {
    let (e, _) = two_builds();
    let seg = e.log_dir().join("0000000000000000.seg");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0xab; 100]).unwrap();
    drop(f);
    e.run(&["build", "raw/3"]).ok();
    e.write(".databuild/log/0000000000000000.seg.repair-7.bak", "cut bytes");
    let backups = |e: &Env| -> Vec<String> {
        dirs_in(&e.log_dir())
            .into_iter()
            .filter(|n| n.contains(".torn-") || n.ends_with(".bak"))
            .collect()
    };
    assert_eq!(backups(&e).len(), 2, "{:?}", dirs_in(&e.log_dir()));
    let dry = e.run(&["gc", "--torn", "--dry-run"]);
    dry.ok();
    assert_eq!(backups(&e).len(), 2);
    let out = e.run(&["gc", "--torn", "--format", "json"]);
    out.ok();
    let lines = out.json_lines();
    assert_eq!(lines.last().unwrap()["items"], 2, "{}", out.stdout);
    assert!(lines.last().unwrap()["bytesFreed"].as_u64().unwrap() >= 109, "{}", out.stdout);
    assert!(backups(&e).is_empty());
    assert!(seg.exists() && e.log_dir().join("CHECKPOINT").exists());
    e.run(&["verify"]).ok();
}
