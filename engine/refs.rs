//! What users type for refs and ids, turned into what the log knows: brace ranges in refs
//! (`{2025-01-01..2025-01-31}`, `{001..100}`, `{a,b}`), globs over the partitions the log has
//! seen, unique prefixes (or tails) of build request and job run ids (`last`: the newest
//! request), and `SEQ|TIME` points in the history. Shared by the CLI and the server, so both
//! accept the same input and say the same thing about bad input.

use std::collections::HashSet;

use time::format_description::well_known::Rfc3339;

use crate::query::Until;
use crate::state::State;
use crate::views::ViewError;

/// At most this many refs come out of one command line's ranges.
pub const MAX_REFS: usize = 1_000_000;

/// Ids shown in text tables are at least this long (and longer where needed to be unique).
pub const SHORT_ID: usize = 8;

/// One `{...}` group: the alternatives it stands for.
fn group(body: &str, whole: &str) -> Result<Option<Vec<String>>, String> {
    if let Some((a, b)) = body.split_once("..") {
        return range(a, b, whole).map(Some);
    }
    if body.contains(',') {
        return Ok(Some(body.split(',').map(String::from).collect()));
    }
    // `{x}`: not a range (as in the shell, kept as written).
    Ok(None)
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn range(a: &str, b: &str, whole: &str) -> Result<Vec<String>, String> {
    if is_date(a) && is_date(b) {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let parse = |s: &str| {
            time::Date::parse(s, fmt)
                .map_err(|e| format!("bad date {s:?} in the range {{{a}..{b}}} of '{whole}': {e}"))
        };
        let (from, to) = (parse(a)?, parse(b)?);
        if from > to {
            return Err(format!(
                "the range {{{a}..{b}}} in '{whole}' is reversed; write {{{b}..{a}}}"
            ));
        }
        let n = (to - from).whole_days() as u64 + 1;
        if n > MAX_REFS as u64 {
            return Err(too_many(whole, n));
        }
        let mut out = Vec::with_capacity(n as usize);
        let mut d = from;
        loop {
            out.push(d.format(fmt).map_err(|e| e.to_string())?);
            if d == to {
                break;
            }
            d = d.next_day().ok_or("date out of range")?;
        }
        return Ok(out);
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if digits(a) && digits(b) {
        let num = |s: &str| {
            s.parse::<u64>().map_err(|e| {
                format!("bad number {s:?} in the range {{{a}..{b}}} of '{whole}': {e}")
            })
        };
        let (from, to) = (num(a)?, num(b)?);
        if from > to {
            return Err(format!(
                "the range {{{a}..{b}}} in '{whole}' is reversed; write {{{b}..{a}}}"
            ));
        }
        let n = (to - from).saturating_add(1);
        if n > MAX_REFS as u64 {
            return Err(too_many(whole, n));
        }
        // Zero-padded bounds (`{001..100}`) keep their width.
        let padded = (a.len() > 1 && a.starts_with('0')) || (b.len() > 1 && b.starts_with('0'));
        let width = if padded { a.len().max(b.len()) } else { 0 };
        return Ok((from..=to).map(|i| format!("{i:0width$}")).collect());
    }
    Err(format!(
        "bad range {{{a}..{b}}} in '{whole}': give two dates (YYYY-MM-DD) or two non-negative integers, e.g. {{2025-01-01..2025-01-31}} or {{1..100}}"
    ))
}

fn too_many(whole: &str, n: u64) -> String {
    format!("'{whole}' expands to {n} refs, more than the limit of {MAX_REFS}; split the request")
}

/// The refs `r` stands for: every `{...}` range or list expanded (all combinations, left to
/// right). Text without a group is returned as is.
fn expand_one(r: &str, budget: usize) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut rest = r;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else { break };
        let body = &rest[open + 1..open + len];
        let Some(alts) = group(body, r)? else {
            for o in &mut out {
                o.push_str(&rest[..=open + len]);
            }
            rest = &rest[open + len + 1..];
            continue;
        };
        let n = out.len() as u64 * alts.len() as u64;
        if n > budget as u64 {
            return Err(too_many(r, n));
        }
        let prefix = &rest[..open];
        let mut next = Vec::with_capacity(n as usize);
        for o in &out {
            for a in &alts {
                next.push(format!("{o}{prefix}{a}"));
            }
        }
        out = next;
        rest = &rest[open + len + 1..];
    }
    for o in &mut out {
        o.push_str(rest);
    }
    Ok(out)
}

/// Expands brace ranges in refs: `{2025-01-01..2025-01-31}` (dates, inclusive), `{1..100}`
/// (integers; `{001..100}` keeps the width), `{a,b}` (a list). Several groups in one ref give
/// every combination. Duplicates are dropped (first one kept). Errors: a bound that is neither a
/// date nor an integer, reversed bounds, and more than [`MAX_REFS`] refs in all.
pub fn expand(refs: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for r in refs {
        for x in expand_one(r, MAX_REFS - out.len().min(MAX_REFS))? {
            if seen.insert(x.clone()) {
                out.push(x);
            }
        }
        if out.len() > MAX_REFS {
            return Err(format!("the refs expand to more than {MAX_REFS}; split the request"));
        }
    }
    Ok(out)
}

/// Whether a ref as typed is a glob (`*` or `?`).
pub fn is_glob(r: &str) -> bool {
    r.contains('*') || r.contains('?')
}

/// Refs with their globs replaced by the partitions of the log they match (sorted). A glob that
/// matches no partition gives nothing, unless a job of the graph owns it as a ref (refs may
/// contain `*` and `?`): then it is that ref.
pub fn match_globs(
    state: &State,
    refs: &[String],
    graph: Option<&crate::graph::Graph>,
) -> Vec<String> {
    let mut all: Option<Vec<&str>> = None;
    let mut out = Vec::new();
    for r in refs {
        if !is_glob(r) {
            out.push(r.clone());
            continue;
        }
        let all = all.get_or_insert_with(|| {
            let mut v: Vec<&str> = state.partitions().into_iter().map(|p| &**p).collect();
            v.sort_unstable();
            v
        });
        let before = out.len();
        out.extend(all.iter().filter(|p| glob_match(r, p)).map(|p| p.to_string()));
        if out.len() == before && graph.is_some_and(|g| g.owner(r).is_ok()) {
            out.push(r.clone());
        }
    }
    out
}

/// The one id among `ids` that `typed` names: the whole id, a unique prefix of it, or (as text
/// tables and progress lines show ids) a unique tail of it.
fn resolve<'a>(
    ids: impl Iterator<Item = &'a str>,
    typed: &str,
    what: &str,
    hint: &str,
) -> Result<String, ViewError> {
    if typed.is_empty() {
        return Err(ViewError::BadInput(format!("no {what} id given; {hint}")));
    }
    let mut found: Vec<&str> = Vec::new();
    let mut tails: Vec<&str> = Vec::new();
    for id in ids {
        if id == typed {
            return Ok(id.to_string());
        }
        if id.starts_with(typed) {
            found.push(id);
        } else if typed.len() >= SHORT_ID && id.ends_with(typed) {
            // Tails as tables show them (8 characters); a shorter one (a typo, a row number)
            // would name an arbitrary id.
            tails.push(id);
        }
    }
    if found.is_empty() {
        found = tails;
    }
    match found.len() {
        0 => Err(ViewError::NotFound(format!("no {what} {typed} in the log; {hint}"))),
        1 => Ok(found[0].to_string()),
        n => {
            found.sort_unstable();
            let shown = found.iter().take(10).copied().collect::<Vec<_>>().join(", ");
            let more = if n > 10 { format!(" and {} more", n - 10) } else { String::new() };
            Err(ViewError::BadInput(format!(
                "{what} id '{typed}' is ambiguous: it matches {n} ids ({shown}{more}); type more of it"
            )))
        }
    }
}

/// The build request `typed` names: its id, a unique prefix of it, or `last` (the newest).
pub fn request_id(state: &State, typed: &str) -> Result<String, ViewError> {
    let hint = "see `databuild builds` for the ids";
    if typed == "last" && state.requests.get("last").is_none() {
        return state
            .requests
            .values()
            .max_by_key(|r| r.received_seq)
            .map(|r| r.id.to_string())
            .ok_or_else(|| {
                ViewError::NotFound(format!("no build request in the log yet; {hint}"))
            });
    }
    resolve(state.requests.keys().map(|k| &**k), typed, "build request", hint)
}

/// The job run `typed` names: its id or a unique prefix of it.
pub fn run_id(state: &State, typed: &str) -> Result<String, ViewError> {
    resolve(
        state.runs.keys().map(|k| &**k),
        typed,
        "job run",
        "see `databuild builds ID` or `databuild replay` for run ids",
    )
}

/// Whether `typed` is a whole id (a UUID), so it needs no lookup to resolve.
pub fn is_whole_id(typed: &str) -> bool {
    typed.len() == 36 && typed.bytes().filter(|&b| b == b'-').count() == 4
}

/// Whether `text` matches `glob`: `*` any run of characters (including `/`), `?` one character.
/// A glob without either is an exact match.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut gi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            gi += 1;
            mark = ti;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while gi < g.len() && g[gi] == '*' {
        gi += 1;
    }
    gi == g.len()
}

/// `SEQ` or an RFC 3339 `TIME`, for `--at` and `--until` (`flag` names the option in the error).
pub fn parse_until(flag: &str, s: &str) -> Result<Until, ViewError> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Until::Seq(n));
    }
    time::OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| Until::Time(t.unix_timestamp_nanos().clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64))
        .map_err(|e| {
            ViewError::BadInput(format!(
                "{flag} {s:?} is neither a sequence number nor an RFC 3339 time ({e}); e.g. {flag} 120 or {flag} 2025-01-01T12:00:00Z"
            ))
        })
}

/// The last [`SHORT_ID`] characters of an id (as text tables and progress lines show ids).
pub fn tail(id: &str) -> &str {
    let n = id.len().saturating_sub(SHORT_ID);
    if id.is_char_boundary(n) { &id[n..] } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(refs: &[&str]) -> Result<Vec<String>, String> {
        expand(&refs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn dates_expand_inclusively_across_months() {
        let v = ex(&["votes/{2025-01-30..2025-02-02}/red"]).unwrap();
        assert_eq!(
            v,
            [
                "votes/2025-01-30/red",
                "votes/2025-01-31/red",
                "votes/2025-02-01/red",
                "votes/2025-02-02/red"
            ]
        );
        assert_eq!(ex(&["d/{2024-02-28..2024-03-01}"]).unwrap().len(), 3, "leap day");
    }

    #[test]
    fn integers_keep_zero_padding() {
        assert_eq!(ex(&["p/{1..3}"]).unwrap(), ["p/1", "p/2", "p/3"]);
        assert_eq!(ex(&["p/{8..10}"]).unwrap(), ["p/8", "p/9", "p/10"]);
        let v = ex(&["p/{001..100}"]).unwrap();
        assert_eq!((v.len(), v[0].as_str(), v[99].as_str()), (100, "p/001", "p/100"));
        assert_eq!(ex(&["p/{09..11}"]).unwrap(), ["p/09", "p/10", "p/11"]);
        assert_eq!(ex(&["p/{0..2}"]).unwrap(), ["p/0", "p/1", "p/2"], "a lone 0 is not padding");
    }

    #[test]
    fn lists_and_combinations() {
        assert_eq!(
            ex(&["d/{2025-01-01..2025-01-02}/{red,blue}"]).unwrap(),
            ["d/2025-01-01/red", "d/2025-01-01/blue", "d/2025-01-02/red", "d/2025-01-02/blue"]
        );
        assert_eq!(ex(&["a/{x,y}", "a/x", "plain"]).unwrap(), ["a/x", "a/y", "plain"]);
        assert_eq!(ex(&["keep/{x}/and{"]).unwrap(), ["keep/{x}/and{"], "not a group");
    }

    #[test]
    fn bad_ranges_are_clear_errors() {
        let e = ex(&["p/{5..1}"]).unwrap_err();
        assert!(e.contains("reversed") && e.contains("{1..5}"), "{e}");
        let e = ex(&["d/{2025-02-01..2025-01-01}"]).unwrap_err();
        assert!(e.contains("reversed"), "{e}");
        let e = ex(&["p/{1..x}"]).unwrap_err();
        assert!(e.contains("bad range {1..x}") && e.contains("'p/{1..x}'"), "{e}");
        let e = ex(&["d/{2025-01-01..2025-02-30}"]).unwrap_err();
        assert!(e.contains("bad date"), "{e}");
        let e = ex(&["p/{1..2000000}"]).unwrap_err();
        assert!(e.contains("2000000 refs") && e.contains("1000000"), "{e}");
        let e = ex(&["p/{1..1000}/{1..1001}"]).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        assert_eq!(ex(&["p/{1..1000}/{1..1000}"]).unwrap().len(), MAX_REFS);
    }

    #[test]
    fn prefixes_or_tails_resolve() {
        let ids = [
            "0198a1b2-0000-7000-8000-0000000000a1",
            "0198a1b2-0000-7000-8000-0000000000a2",
            "0198ffff-1111-7000-8000-0000000000a1",
        ];
        let ok = resolve(ids.iter().copied(), "0198f", "build request", "h").unwrap();
        assert_eq!(ok, ids[2]);
        let by_tail = resolve(ids.iter().copied(), "000000a2", "job run", "h").unwrap();
        assert_eq!(by_tail, ids[1]);
        let amb = resolve(ids.iter().copied(), "0198a1b2", "build request", "h").unwrap_err();
        assert!(
            amb.to_string().contains("ambiguous")
                && amb.to_string().contains(ids[0])
                && amb.to_string().contains(ids[1])
        );
        let amb = resolve(ids.iter().copied(), "000000a1", "job run", "h").unwrap_err();
        assert!(amb.to_string().contains("ambiguous"), "{amb}");
        assert!(resolve(ids.iter().copied(), "zz", "job run", "h").is_err());
    }

    #[test]
    fn globs_match_like_the_contract_says() {
        assert!(glob_match("daily/*", "daily/2025-01-01/red"));
        assert!(glob_match("*red", "daily/2025-01-01/red"));
        assert!(glob_match("d?ily/*/red", "daily/x/red"));
        assert!(!glob_match("daily/?", "daily/10"));
        assert!(glob_match("exact/ref", "exact/ref"));
        assert!(!glob_match("exact/ref", "exact/ref2"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn seq_or_time() {
        assert_eq!(parse_until("--at", "12").ok(), Some(Until::Seq(12)));
        assert_eq!(
            parse_until("--at", "1970-01-01T00:00:01Z").ok(),
            Some(Until::Time(1_000_000_000))
        );
        assert_eq!(
            parse_until("--at", "1970-01-01T01:00:01+01:00").ok(),
            Some(Until::Time(1_000_000_000))
        );
        let e = parse_until("--at", "yesterday").unwrap_err();
        assert!(
            matches!(e, ViewError::BadInput(_)) && e.to_string().contains("--at \"yesterday\""),
            "{e}"
        );
    }
}
