//! `job_config`: arbitrary bytes as a `config` call's stdout. Parsing and validation against a
//! request never panic.

#![no_main]

use databuild::config::{ConfigCall, parse_response, validate};
use libfuzzer_sys::fuzz_target;

fn graph() -> &'static databuild::graph::Graph {
    static G: std::sync::OnceLock<databuild::graph::Graph> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("databuild-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let job = dir.join("job.sh");
        std::fs::write(&job, "#!/bin/sh\n").expect("write job");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let toml = "[[jobs]]\nlabel = \"a\"\nentrypoint = \"job.sh\"\npartition_patterns = ['a/.*']\n[[jobs]]\nlabel = \"b\"\nentrypoint = \"job.sh\"\npartition_patterns = ['b/.*']\n";
        databuild::graph::Graph::parse(&dir.join("databuild.toml"), toml).expect("graph")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = parse_response(data) {
        let call = ConfigCall { job: 0, refs: vec!["a/1".into(), "a/2".into()] };
        let _ = validate(graph(), &call, &resp);
    }
});
