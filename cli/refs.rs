//! What users type for refs and ids: the library's [`databuild::refs`] (shared with the
//! server), with its errors as the CLI's, and the short ids of text tables.

use databuild::state::State;

pub use databuild::refs::{is_glob, is_whole_id, match_globs, tail};

use crate::exit::CliError;

/// [`databuild::refs::expand`], as bad input.
pub fn expand_args(refs: &[String]) -> Result<Vec<String>, CliError> {
    databuild::refs::expand(refs).map_err(CliError::bad_input)
}

/// The graph, loaded only if some ref is a glob (to tell a glob from a ref with `*` or `?`).
pub fn graph_for_globs(
    ctx: &crate::context::Ctx,
    refs: &[String],
) -> Option<databuild::graph::Graph> {
    if refs.iter().any(|r| is_glob(r)) { ctx.graph().ok() } else { None }
}

/// The build request `typed` names: its id, a unique prefix or tail of it, or `last` (the newest).
pub fn request_id(state: &State, typed: &str) -> Result<String, CliError> {
    databuild::refs::request_id(state, typed).map_err(|e| CliError::bad_input(e.to_string()))
}

/// The job run `typed` names: its id or a unique prefix or tail of it.
pub fn run_id(state: &State, typed: &str) -> Result<String, CliError> {
    databuild::refs::run_id(state, typed).map_err(|e| CliError::bad_input(e.to_string()))
}

/// Short forms of ids for text tables: the last [`databuild::refs::SHORT_ID`] characters of each id (UUIDv7 ids
/// begin with a timestamp, so ids made close together share long prefixes but not their random
/// tails), or the whole id where another id of the same kind has the same tail. Progress lines
/// show the same tails, and every command that takes an id accepts one.
#[derive(Debug)]
pub struct Shortener {
    tails: std::collections::HashMap<String, usize>,
}

impl Shortener {
    pub fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Shortener {
        let mut tails = std::collections::HashMap::new();
        for id in ids {
            *tails.entry(tail(id).to_string()).or_insert(0) += 1;
        }
        Shortener { tails }
    }

    /// The build request ids of `state`.
    pub fn requests(state: &State) -> Shortener {
        Shortener::new(state.requests.keys().map(|k| &**k))
    }

    /// The job run ids of `state`.
    pub fn runs(state: &State) -> Shortener {
        Shortener::new(state.runs.keys().map(|k| &**k))
    }

    /// The id's tail if no other id has it, else the whole id.
    pub fn short(&self, id: &str) -> String {
        let t = tail(id);
        if self.tails.get(t).copied().unwrap_or(0) <= 1 { t.to_string() } else { id.to_string() }
    }

    /// A table cell: the short id, or `-` for none.
    pub fn cell(&self, id: &str) -> (String, usize) {
        let s = if id.is_empty() { "-".to_string() } else { self.short(id) };
        let n = s.len();
        (s, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_unique_tails() {
        let ids = [
            "0198a1b2-0000-7000-8000-0000000000a1",
            "0198a1b2-0000-7000-8000-0000000000a2",
            "0198ffff-1111-7000-8000-0000000000a1",
        ];
        let s = Shortener::new(ids.iter().copied());
        assert_eq!(s.short(ids[1]), "000000a2");
        assert_eq!(s.short(ids[0]), ids[0], "a tail two ids share is not shown short");
        assert_eq!(s.cell(""), ("-".to_string(), 1));
    }
}
