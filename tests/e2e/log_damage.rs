//! A damaged log: exit 3 naming segment, offset and seq; `verify` says the same; a torn tail is
//! cut with a warning; `repair --truncate` keeps the valid prefix.

use crate::util::*;

fn built() -> Env {
    let e = Env::generic(&[("raw", r"raw/\d+")]);
    e.run(&["build", "raw/1"]).ok();
    e.run(&["build", "raw/2"]).ok();
    e
}

fn segment(e: &Env) -> std::path::PathBuf {
    e.log_dir().join("0000000000000000.seg")
}

#[test]
fn damage_inside_acknowledged_data_refuses_with_its_location() {
    let e = built();
    let mut b = std::fs::read(segment(&e)).unwrap();
    b[64 + 40] ^= 0x55;
    std::fs::write(segment(&e), &b).unwrap();
    for args in [&["build", "raw/3"][..], &["status"], &["replay"]] {
        let out = e.run(args);
        out.code(3);
        let line = out.error_line();
        assert!(
            line.contains("segment 0") && line.contains("byte 64") && line.contains("seq 1"),
            "{args:?}: {line}"
        );
        assert!(line.contains("databuild verify"), "{line}");
    }
    let v = e.run(&["verify"]);
    v.code(3);
    assert!(v.stdout.contains("segment 0 is damaged at byte 64 (seq 1)"), "{}", v.stdout);
    assert_eq!(std::fs::read(segment(&e)).unwrap(), b, "nothing was changed");
    // repair --truncate is explicit: it keeps the valid prefix (here: nothing) and moves the rest.
    let r = e.run(&["repair", "--truncate"]);
    r.ok();
    assert!(r.stdout.contains("events dropped"), "{}", r.stdout);
    e.run(&["verify"]).ok();
    e.run(&["build", "raw/3"]).ok();
}

#[test]
fn a_torn_tail_is_cut_with_a_warning() {
    let e = built();
    let before = events(&e).len();
    let mut f = std::fs::OpenOptions::new().append(true).open(segment(&e)).unwrap();
    std::io::Write::write_all(&mut f, &[0xab; 100]).unwrap();
    drop(f);
    // Readers stop before it and say nothing is wrong with acknowledged data.
    assert_eq!(events(&e).len(), before);
    let v = e.run(&["verify"]);
    v.ok();
    assert!(v.stdout.contains("torn tail"), "{}", v.stdout);
    let out = e.run(&["build", "raw/3"]);
    out.ok();
    assert!(out.stderr.contains("cut torn tail"), "{}", out.stderr);
    e.run(&["verify"]).ok();
}

#[test]
fn repair_requires_truncate() {
    let e = built();
    let out = e.run(&["repair"]);
    out.code(2);
}
