//! `snapshot_decode`: arbitrary bytes as a snapshot file (and with a fixed-up checksum, to get past
//! it). `decode` never panics and never allocates from an unverified count; what decodes
//! re-encodes to the same bytes; every entry that passes the checks at load decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = [1u8; 16];
    let _ = databuild::state::snapshot::decode(data, id);
    if data.len() > 48 {
        // Same bytes as a well-formed header with a valid checksum.
        let mut f = Vec::with_capacity(data.len() + 48);
        f.extend_from_slice(&databuild::state::snapshot::MAGIC);
        f.extend_from_slice(&databuild::state::snapshot::FOLD_VERSION.to_le_bytes());
        f.extend_from_slice(&id);
        f.extend_from_slice(&data[..8]);
        f.extend_from_slice(&[0u8; 20]); // the anchor (checked by the store, not by decode)
        f.extend_from_slice(&((data.len() - 8) as u64).to_le_bytes());
        f.extend_from_slice(&data[8..]);
        let crc = crc32fast::hash(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        if let Ok(s) = databuild::state::snapshot::decode(&f, id) {
            // Entries decode lazily after the checks at load: every entry the checks let through
            // must decode (an entry that failed would be missing from iteration, not from len).
            assert_eq!(s.requests.iter().count(), s.requests.len());
            assert_eq!(s.runs.iter().count(), s.runs.len());
            assert_eq!(s.catalog.iter().count(), s.catalog.len());
            assert_eq!(s.readers.iter().count(), s.readers.len());
            let again = databuild::state::snapshot::encode(&s, id, Default::default());
            let s2 = databuild::state::snapshot::decode(&again, id).expect("its own encoding decodes");
            assert_eq!(s2, s);
        }
    }
});
