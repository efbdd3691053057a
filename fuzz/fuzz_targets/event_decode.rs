//! `event_decode`: the input is an encoded `BuildEvent` (what a log record holds), and also a
//! JSON document.
//!
//! * `BuildEvent::decode` never panics. When it decodes, re-encoding gives `encoded_len()` bytes
//!   that decode to an equal event and re-encode to the same bytes.
//! * The event serializes to canonical proto3 JSON with serde_json (pbjson impls), and that JSON
//!   parses back to an equal event. Exception: an enum field holding a number the schema does not
//!   name makes pbjson fail with "Invalid variant N", and JSON nested past serde_json's recursion
//!   limit (128) does not parse back; those two errors are tolerated (see README.md).
//! * The input as JSON: `serde_json::from_slice::<JobConfigureResponse>` and `::<BuildEvent>`
//!   never panic (errors are fine); what parses survives a protobuf round trip and a JSON round
//!   trip unchanged.

#![no_main]

use databuild::proto::{BuildEvent, JobConfigureResponse};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn proto_round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len(), "encoded_len differs from the encoding");
    let again = M::decode(bytes.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(&again, m, "protobuf round trip changed the message");
    assert_eq!(again.encode_to_vec(), bytes, "re-encoding is not stable");
}

/// JSON round trip; a macro rather than a generic function so the harness needs no direct `serde`
/// dependency (the bounds would name `serde`'s traits).
macro_rules! json_round_trip {
    ($m:expr, $ty:ty) => {'json: {
        let m: &$ty = $m;
        let json = match serde_json::to_vec(m) {
            Ok(json) => json,
            // Known: pbjson refuses to serialize an enum field holding a number the schema does
            // not name ("Invalid variant N"), where proto3 JSON would write the number. prost
            // decodes such values, so any event with one has no JSON form. Tolerated (and
            // reported in README.md); any other serialization error is a finding.
            Err(e) if e.to_string().starts_with("Invalid variant ") => break 'json,
            Err(e) => panic!("a message does not serialize to JSON: {e}"),
        };
        let back: $ty = match serde_json::from_slice(&json) {
            Ok(back) => back,
            // Known: prost decodes messages nested up to 100 deep, serde_json parses JSON nested
            // up to 128 deep, and each nested `PartitionManifest` is two JSON levels (object and
            // `inputs` array), so an event with ~64 or more nested manifests writes JSON that
            // serde_json then refuses. Tolerated (and reported in README.md).
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => break 'json,
            Err(e) => {
                panic!("its own JSON does not parse: {e}: {}", String::from_utf8_lossy(&json))
            }
        };
        assert_eq!(&back, m, "JSON round trip changed the message");
    }};
}

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = BuildEvent::decode(data) {
        proto_round_trip(&ev);
        json_round_trip!(&ev, BuildEvent);
    }
    if let Ok(resp) = serde_json::from_slice::<JobConfigureResponse>(data) {
        proto_round_trip(&resp);
        json_round_trip!(&resp, JobConfigureResponse);
    }
    if let Ok(ev) = serde_json::from_slice::<BuildEvent>(data) {
        proto_round_trip(&ev);
        json_round_trip!(&ev, BuildEvent);
    }
});
