//! `shm_server::wire`: the login socket's fixed-size records (`ClientRecord`, the client's
//! login or logout, and `Answer`, the server's verdict), decoded from arbitrary bytes.
//!
//! The input is cut into 432-byte records (`RECORD_LEN`): a shorter input, or the last short
//! piece of a longer one, is zero-padded (a truncated record is what a reader would see with the
//! rest of its buffer still zeroed), so inputs of any length reach the decoders, and a longer one
//! is a stream of records. Every record also goes through both decoders with its last bytes cut
//! off at a fuzzer-chosen length (the zeroed tail of an incomplete read).
//!
//! Checked, for every record:
//! - no panic, in either decoder or in the error's `Display`;
//! - at most one decoder accepts it (the magics differ);
//! - whatever decodes re-encodes to bytes that decode to the same value (the round trip), and
//!   encoding that value again gives the same bytes;
//! - decoding is strict: every byte of the record is a field or checked reserved zeroes, so a
//!   `ClientRecord` that decodes re-encodes to exactly the bytes it came from, and so does an
//!   `Answer` unless its reason is not UTF-8 (the decoder replaces such bytes);
//! - the values are within the protocol's limits: names of 1 to `MAX_NAME_LEN` bytes, a reason
//!   of at most `MAX_REASON_LEN` bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_channel::MAX_NAME_LEN;
use shm_server::wire::{Answer, ClientRecord, MAX_REASON_LEN, RECORD_LEN};

/// Where an answer's reason and its length are (the table in `wire.rs`).
const REASON_AT: usize = 232;
const REASON_LEN_AT: usize = 26;

fn check_record(record: &[u8; RECORD_LEN]) {
    let request = ClientRecord::decode(record);
    let answer = Answer::decode(record);
    assert!(
        request.is_err() || answer.is_err(),
        "one record decoded as both a request and an answer"
    );

    match request {
        Ok(value) => {
            if let ClientRecord::Login(hello) = &value {
                assert!((1..=MAX_NAME_LEN).contains(&hello.name.as_str().len()));
                if let Some(last) = &hello.last_server {
                    assert!((1..=MAX_NAME_LEN).contains(&last.as_str().len()));
                }
            }
            let encoded = value.encode();
            assert_eq!(
                &encoded, record,
                "a decoded request does not re-encode to its bytes"
            );
            assert_eq!(ClientRecord::decode(&encoded).as_ref(), Ok(&value));
        }
        Err(error) => drop(error.to_string()),
    }

    match answer {
        Ok(value) => {
            assert!((1..=MAX_NAME_LEN).contains(&value.server().as_str().len()));
            let reason = match &value {
                Answer::Rejected { reason, .. } | Answer::RetryLater { reason, .. } => {
                    Some(reason.as_str())
                }
                _ => None,
            };
            if let Some(reason) = reason {
                assert!(
                    reason.len() <= MAX_REASON_LEN,
                    "a decoded reason of {} bytes",
                    reason.len()
                );
            }
            let encoded = value.encode();
            let decoded = Answer::decode(&encoded);
            assert_eq!(
                decoded.as_ref(),
                Ok(&value),
                "a decoded answer does not survive a round trip"
            );
            assert_eq!(decoded.unwrap().encode(), encoded);
            // The reason field as sent: valid UTF-8 means the bytes round-trip exactly.
            let len = usize::from(u16::from_le_bytes([
                record[REASON_LEN_AT],
                record[REASON_LEN_AT + 1],
            ]));
            let utf8 = core::str::from_utf8(&record[REASON_AT..REASON_AT + len]).is_ok();
            if reason.is_none() || utf8 {
                assert_eq!(
                    &encoded, record,
                    "a decoded answer does not re-encode to its bytes"
                );
            }
        }
        Err(error) => drop(error.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    // A fuzzer-chosen cut for the truncated variants: the first byte, scaled to the record.
    let cut = data
        .first()
        .map_or(0, |&byte| usize::from(byte) * RECORD_LEN / 256);
    let mut chunks = data.chunks(RECORD_LEN).peekable();
    if chunks.peek().is_none() {
        check_record(&[0; RECORD_LEN]);
    }
    for chunk in chunks {
        let mut record = [0u8; RECORD_LEN];
        record[..chunk.len()].copy_from_slice(chunk);
        check_record(&record);
        // The same record read only up to `cut` bytes (the rest of the buffer zero).
        let mut truncated = [0u8; RECORD_LEN];
        let keep = cut.min(chunk.len());
        truncated[..keep].copy_from_slice(&chunk[..keep]);
        check_record(&truncated);
    }
});
