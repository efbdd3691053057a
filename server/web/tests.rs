//! Unit tests of the dashboard's helpers (the pages themselves are tested over HTTP in
//! `tests/dashboard`).

use super::views::glob;
use super::{Params, enc};

#[test]
fn glob_matches_like_replay() {
    assert!(glob("report/*", "report/2025-01-01"));
    assert!(glob("*/red", "votes_1w/2025-01-28/red"));
    assert!(glob("a?c", "abc"));
    assert!(!glob("a?c", "abbc"));
    assert!(!glob("report/*", "raw/1"));
    assert!(glob("*", ""));
}

#[test]
fn enc_leaves_only_unreserved_characters() {
    assert_eq!(enc("a/b c<&>\"'"), "a%2Fb%20c%3C%26%3E%22%27");
    assert_eq!(enc("ü"), "%C3%BC");
}

#[test]
fn params_pages_and_bad_pages() {
    let p = Params(vec![("page".into(), "3".into())]);
    assert_eq!(p.page().unwrap(), 3);
    let bad = Params(vec![("page".into(), "-1".into())]);
    assert_eq!(bad.page().unwrap_err().status, axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(Params::default().page().unwrap(), 0);
}
