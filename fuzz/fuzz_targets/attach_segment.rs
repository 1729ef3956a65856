//! `shm_channel::Channel::open` on a segment file holding arbitrary bytes (as left by a buggy,
//! hostile or crashed process, or a file that is not a segment at all), then both halves of the
//! end used. Every refusal must be a typed `ChannelError`; an accepted segment must behave:
//! no panic, no read outside the mapping (every payload received is checked to lie inside it and
//! read in full), no endless loop. A refused file is then removed through `reclaim_stale` and
//! `Channel::unlink`: exactly when it is a segment (its magic, a creator's marker, or empty);
//! anything else must be refused as `NotASegment` and left byte for byte.
//!
//! Input: one mode byte, then bytes whose meaning the mode chooses:
//! - `mode & 3 == 0`: the file is the bytes, as they are (any length);
//! - `mode & 3 == 1`: the file is a valid, freshly created segment, then the bytes are patches;
//! - `mode & 3 == 2`: a valid header (first 4096 bytes), then the bytes as the rings (the file
//!   is cut or zero-padded to the segment's size), then no patches;
//! - `mode & 3 == 3`: a valid segment whose rings already hold a few messages each way, then
//!   patches.
//!
//! A patch is 4 bytes `[op, offset_lo, offset_hi, value]`: set, xor or add `value` at `offset`
//! (modulo the file's length), or resize the file to `offset` bytes. The valid modes get the
//! fuzzer past the magic, version and layout checks at once, so it spends its time on the
//! checks behind them. `mode & 4` opens end B instead of end A.
//!
//! Each run writes the file into a fresh folder under `std::env::temp_dir()` and removes both
//! afterwards.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shm_channel::{
    Channel, ChannelError, ChannelOptions, Direction, End, SegmentError, WaitOptions, WaitStrategy,
    HEADER_SIZE,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

const C: usize = 256;
type Chan = Channel<C>;
const SEGMENT: &str = "fuzz-segment";
const MAX_PATCHES: usize = 64;
const MAX_SENDS: usize = 16;

/// A folder of our own for one run, removed (with the segment in it) when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Self {
        static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "shm-channel-fuzz-attach-{}-{run}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("create the fuzz folder");
        Self(path)
    }

    fn options(&self) -> ChannelOptions {
        // No waiting for a creator: a segment still "initialising" is refused at once.
        ChannelOptions::new()
            .dir(&self.0)
            .init_timeout(Duration::ZERO)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bytes of valid segments, made once by the crate itself: a fresh one, and one whose rings
/// hold messages each way (all ends detached).
fn valid_segments() -> &'static (Vec<u8>, Vec<u8>) {
    static SEGMENTS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SEGMENTS.get_or_init(|| {
        let folder = Folder::new();
        let options = folder.options();
        let path = folder.0.join(SEGMENT);
        // Dropped before reading, so the file records no holder.
        drop(Chan::create(SEGMENT, End::A, &options).expect("create a fresh segment"));
        let fresh = std::fs::read(&path).expect("read the fresh segment");
        assert_eq!(fresh.len(), Chan::SEGMENT_SIZE);
        {
            let mut a = Chan::open(SEGMENT, End::A, &options).expect("open end A");
            let mut b = Chan::open(SEGMENT, End::B, &options).expect("open end B");
            for (i, len) in [0usize, 1, 7, 8, 40, 3].into_iter().enumerate() {
                let payload: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                a.sender().send(i as u16, &payload).expect("send A→B");
                b.sender().send(i as u16 + 100, &payload).expect("send B→A");
            }
            // One popped each way, so the indices are not at their start.
            a.receiver().pop().expect("pop at A");
            b.receiver().pop().expect("pop at B");
        }
        let busy = std::fs::read(&path).expect("read the used segment");
        (fresh, busy)
    })
}

fn apply_patches(file: &mut Vec<u8>, patches: &[u8]) {
    for patch in patches.chunks_exact(4).take(MAX_PATCHES) {
        let (op, offset, value) = (
            patch[0],
            usize::from(u16::from_le_bytes([patch[1], patch[2]])),
            patch[3],
        );
        if op % 4 == 3 {
            file.resize(offset, 0);
            continue;
        }
        if file.is_empty() {
            continue;
        }
        let at = offset % file.len();
        match op % 4 {
            0 => file[at] = value,
            1 => file[at] ^= value,
            _ => file[at] = file[at].wrapping_add(value),
        }
    }
}

/// Whether removal may take a file with these bytes for a segment: the magic, a creator's marker
/// (zeros, then state `initialising` and a pid at byte 24), or nothing at all.
fn looks_like_a_segment(file: &[u8]) -> bool {
    let word = |at: usize| {
        file.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    file.is_empty()
        || word(0) == Some(shm_channel::SEGMENT_MAGIC)
        || (word(0) == Some(0)
            && word(24).is_some_and(|marker| marker as u32 == 1 && (marker >> 32) != 0))
}

/// Removing the refused file, by reclaiming it (nobody has it open) or unlinking it by name,
/// removes it exactly when it is a segment; anything else is refused with a typed error and left
/// byte for byte as it was.
fn check_removal(folder: &Folder, file: &[u8]) {
    let path = folder.0.join(SEGMENT);
    let segment = looks_like_a_segment(file);
    let seg_options = shm_channel::SegmentOptions::default().dir(&folder.0);
    match shm_channel::Segment::reclaim_stale(SEGMENT, &seg_options) {
        Ok(shm_channel::Reclaim::Removed) => {
            assert!(segment, "reclaim removed a file that is not a segment");
            return;
        }
        Ok(other) => panic!("a file nobody holds was not reclaimed: {other:?}"),
        Err(SegmentError::NotASegment { .. }) => assert!(!segment, "a segment was refused"),
        Err(error) => panic!("unexpected reclaim error: {error:?}"),
    }
    match Chan::unlink(SEGMENT, &folder.options()) {
        Err(ChannelError::Segment(SegmentError::NotASegment { .. })) => {}
        other => panic!("unlink of a file that is not a segment: {other:?}"),
    }
    assert_eq!(std::fs::read(&path).expect("the file is still there"), file);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (fresh, busy) = valid_segments();
    let file = match mode & 3 {
        0 => rest.to_vec(),
        2 => {
            let mut file = fresh[..HEADER_SIZE].to_vec();
            file.extend_from_slice(&rest[..rest.len().min(Chan::SEGMENT_SIZE - HEADER_SIZE)]);
            file.resize(Chan::SEGMENT_SIZE, 0);
            file
        }
        m => {
            let mut file = if m == 1 { fresh.clone() } else { busy.clone() };
            apply_patches(&mut file, rest);
            file
        }
    };
    let unpatched_valid = mode & 1 == 1 && rest.len() < 4;
    let end = if mode & 4 == 0 { End::A } else { End::B };

    let folder = Folder::new();
    std::fs::write(folder.0.join(SEGMENT), &file).expect("write the segment file");
    let options = folder.options();

    let endpoint = match Chan::open(SEGMENT, end, &options) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            assert!(
                !unpatched_valid,
                "a valid segment was refused: {error:?} ({error})"
            );
            // Typed, and printable for a user.
            let _ = error.to_string();
            match error {
                ChannelError::Segment(SegmentError::Header { .. })
                | ChannelError::Segment(SegmentError::NotASegment { .. })
                | ChannelError::Segment(SegmentError::InitTimeout { .. })
                | ChannelError::Ring { .. }
                | ChannelError::EndTaken { .. }
                | ChannelError::EndOpenInThisProcess { .. } => {}
                other => panic!("unexpected error for a bad segment: {other:?}"),
            }
            check_removal(&folder, &file);
            return;
        }
    };
    assert_eq!(
        file.len(),
        Chan::SEGMENT_SIZE,
        "a wrong-sized file was accepted"
    );

    // Whatever the header says, reading it is harmless.
    let header = endpoint.header();
    for direction in [Direction::AToB, Direction::BToA] {
        let _ = header.stats(direction).depth();
        let _ = header.wait_stats(direction);
    }
    for end in [End::A, End::B] {
        let _ = header.end_name(end);
        let _ = header.owner_pid(end);
    }
    let _ = endpoint.peer_alive();
    let _ = endpoint.peer_heartbeat_age(u64::MAX);
    let mapping = {
        let start = endpoint.segment().as_ptr().as_ptr() as usize;
        start..start + endpoint.segment().len()
    };

    let (mut tx, mut rx) = endpoint.split();
    let _ = rx.wait_readable(
        &WaitOptions::new(WaitStrategy::Block { spin_first: 1 }).timeout(Duration::ZERO),
    );
    // Drain what the bytes hold: every record is at least 8 bytes, plus one padding per lap.
    let mut ended = None;
    let mut received = 0;
    for _ in 0..C / 8 + 2 {
        match rx.front() {
            Ok(message) => {
                let payload = message.payload();
                let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
                assert!(
                    mapping.start <= range.start && range.end <= mapping.end,
                    "payload {range:x?} outside the mapping {mapping:x?}"
                );
                assert!(payload.len() as u32 <= Chan::MAX_PAYLOAD);
                std::hint::black_box(payload.iter().fold(0u8, |a, &b| a.wrapping_add(b)));
                assert_eq!(rx.pop(), Ok(()), "pop after a good front");
                received += 1;
            }
            Err(error @ (RecvError::Empty | RecvError::Corrupt { .. })) => {
                ended = Some(error);
                break;
            }
            Err(e) => panic!("unexpected receive error {e:?}"),
        }
    }
    assert!(ended.is_some(), "the backlog never ended");
    if unpatched_valid {
        // The used segment holds 6 - 1 messages each way; the fresh one none.
        let expected = if mode & 3 == 3 { 5 } else { 0 };
        assert_eq!((received, ended), (expected, Some(RecvError::Empty)));
    }

    for (i, &len) in rest.iter().take(MAX_SENDS).enumerate() {
        let len = u32::from(len);
        match tx.alloc(len, i as u16) {
            Ok(mut slot) => {
                assert!(len <= Chan::MAX_PAYLOAD);
                slot.payload_mut().fill(i as u8);
                slot.push();
            }
            Err(SendError::TooLarge { .. }) => assert!(len > Chan::MAX_PAYLOAD),
            Err(SendError::Full | SendError::Corrupt { .. }) => {}
            Err(e) => panic!("unexpected send error {e:?}"),
        }
    }
    let _ = tx.header().stats(end.outgoing());
    drop(tx);
    drop(rx);
});
