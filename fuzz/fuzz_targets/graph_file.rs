//! `graph_file`: arbitrary bytes as `databuild.toml`. Parsing never panics; every error is one
//! line naming the file.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("/nonexistent/databuild.toml");
    match databuild::graph::Graph::parse(path, text) {
        Ok(g) => {
            for j in &g.jobs {
                let _ = g.owner(&j.label);
            }
        }
        Err(e) => {
            let m = e.to_string();
            assert!(!m.contains('\n'), "one line: {m:?}");
            assert!(m.contains("databuild.toml"), "names the file: {m}");
        }
    }
});
