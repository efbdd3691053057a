//! `event_decode`: the input is an encoded `BuildEvent` (what a log record holds), and also a
//! JSON document.
//!
//! * `BuildEvent::decode` never panics. When it decodes, re-encoding gives `encoded_len()` bytes
//!   that decode to an equal event and re-encode to the same bytes.
//! * The event serializes to canonical proto3 JSON with serde_json (pbjson impls), and that JSON
//!   parses back to an equal event.
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
    ($m:expr, $ty:ty) => {{
        let m: &$ty = $m;
        let json = serde_json::to_vec(m).expect("a message serializes to JSON");
        let back: $ty = serde_json::from_slice(&json).unwrap_or_else(|e| {
            panic!("its own JSON does not parse: {e}: {}", String::from_utf8_lossy(&json))
        });
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
