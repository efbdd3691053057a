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
