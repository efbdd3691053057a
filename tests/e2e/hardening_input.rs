//! Names and text that could mislead: job labels that are not safe file names, refs with
//! invisible or bidi characters, and terminal escapes in what jobs print.

use crate::util::*;

#[test]
fn a_label_that_is_not_a_file_name_is_a_graph_file_error() {
    for label in ["../../../../escaped", "a/b", ".."] {
        let e = Env::generic(&[]);
        e.write(
            "databuild.toml",
            &format!(
                "[[jobs]]\nlabel = \"{label}\"\nentrypoint = \"jobs/generic.sh\"\npartition_patterns = ['x/\\d+']\n"
            ),
        );
        let out = e.run(&["build", "x/1"]);
        out.code(2);
        let line = out.error_line();
        assert!(
            line.contains("databuild.toml") && line.contains(&format!("job '{label}'")),
            "names the file and the job: {line}"
        );
        assert!(line.contains("key 'label'"), "names the key: {line}");
        assert!(!e.log_dir().exists(), "nothing was written");
        assert!(!e.path().join("escaped-1.stdout").exists(), "nothing outside .databuild/");
    }
}

#[test]
fn a_ref_with_an_invisible_or_bidi_character_is_refused() {
    let e = Env::generic(&[("x", "x/.*")]);
    for r in ["x/a\u{200B}b", "x/a\u{202E}b", "x/\u{FEFF}a", "x/a\u{2066}b"] {
        let out = e.run(&["build", r]);
        out.code(2);
        let line = out.error_line();
        assert!(line.contains("invisible or bidi"), "{line}");
        assert!(
            !line.chars().any(|c| matches!(c, '\u{200B}' | '\u{202E}' | '\u{FEFF}' | '\u{2066}')),
            "the error shows the character escaped: {line:?}"
        );
    }
    assert!(e.ledger().is_empty(), "nothing ran");
}

#[test]
fn terminal_escapes_from_jobs_are_not_printed_raw() {
    // A config that fails with an escape sequence in its stderr, and one whose args carry one.
    let e = Env::generic(&[("x", "x/.*")]);
    e.script(
        "jobs/generic.sh",
        "#!/bin/sh\nif [ \"$1\" = config ]; then\n  if [ -f config_fails ]; then printf 'bad \\033]0;owned\\007 \\033[2J\\n' >&2; exit 7; fi\n  printf '{\"configs\":[{\"outputs\":[{\"str\":\"%s\"}],\"args\":[\"a\\\\u001b[31mred\"]}]}\\n' \"$2\"\n  exit 0\nfi\nprintf 'out \\033[2J\\n'; printf 'err \\033]0;t\\007\\n' >&2; exit 1\n",
    );
    e.write("config_fails", "");
    let out = e.run(&["build", "x/1"]);
    out.code(2);
    assert!(!out.stderr.contains('\x1b') && !out.stderr.contains('\x07'), "{:?}", out.stderr);
    assert!(out.stderr.contains("\\u{1b}]0;owned"), "shown escaped: {:?}", out.stderr);

    std::fs::remove_file(e.path().join("config_fails")).unwrap();
    let out = e.run(&["analyze", "x/1"]);
    out.ok();
    assert!(!out.stdout.contains('\x1b'), "{:?}", out.stdout);
    assert!(out.stdout.contains("args a\\u{1b}[31mred"), "{:?}", out.stdout);

    let out = e.run(&["build", "x/1"]);
    out.code(1);
    assert!(!out.stderr.contains('\x1b') && !out.stderr.contains('\x07'), "{:?}", out.stderr);
    for args in [&["explain", "x/1"][..], &["replay"], &["builds"], &["status"]] {
        let o = e.run(args);
        o.ok();
        assert!(
            !o.stdout.contains('\x1b') && !o.stdout.contains('\x07'),
            "{args:?}: {:?}",
            o.stdout
        );
    }
    let evs = events(&e);
    let run = events_of(&evs, "jobEvent", Some("JOB_FAILED"))[0]["event"]["jobEvent"]["jobRunId"]
        .as_str()
        .unwrap()
        .to_string();
    let o = e.run(&["logs", &run]);
    o.ok();
    assert!(!o.stdout.contains('\x1b') && !o.stdout.contains('\x07'), "{:?}", o.stdout);
    assert!(o.stdout.contains("out \\u{1b}[2J"), "{:?}", o.stdout);
}
