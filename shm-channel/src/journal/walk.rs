//! Walking a page's chain of frames: where it ends (the writer's recovery, a live reader's
//! start), or where the first frame at or after a sequence number or a time is (seeks).

use std::path::Path;

use super::error::JournalError;
use super::layout::{FrameFault, PageView, RawFrame, Slot, PAGE_HEADER_SIZE};

/// Where a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stop {
    /// The offset of the frame the predicate chose, or of the slot after the last frame.
    pub offset: usize,
    /// Its sequence number (the next one, if the walk reached the end).
    pub seq: u64,
    /// The timestamp of the last frame before `offset` (or the one given, if none).
    pub last_time: u64,
    /// Why it stopped.
    pub at: StopAt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopAt {
    /// The predicate chose the frame at `offset`.
    Chosen,
    /// Nothing is published at `offset` yet.
    Empty,
    /// The end-of-page word is at `offset`.
    End,
    /// A frame torn by a power cut is at `offset` (bad checksum, nothing valid behind it): only
    /// reported to a walk that tolerates it.
    Torn,
}

/// How a walk checks what it passes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checks {
    pub checksums: bool,
    /// Report a torn tail as [`StopAt::Torn`] rather than an error (the writer's recovery).
    pub tolerate_torn_tail: bool,
}

/// Walks from `offset`, where frame `seq` is expected, until `choose` picks a frame or the chain
/// ends. Every frame passed is checked: length, sequence, time order, checksum if the page has
/// them. A refused frame is an error naming `path` and its offset.
pub(crate) fn walk(
    view: &PageView<'_>,
    path: &Path,
    mut offset: usize,
    mut seq: u64,
    mut last_time: u64,
    checks: Checks,
    mut choose: impl FnMut(&RawFrame<'_>) -> bool,
) -> Result<Stop, JournalError> {
    let refuse = |offset, fault| JournalError::Frame {
        path: path.to_path_buf(),
        offset,
        fault,
    };
    loop {
        let stop = |at| Stop {
            offset,
            seq,
            last_time,
            at,
        };
        let frame = match view.slot(offset) {
            Ok(Slot::Empty) => return Ok(stop(StopAt::Empty)),
            Ok(Slot::End) => return Ok(stop(StopAt::End)),
            Ok(Slot::Frame(frame)) => frame,
            Err(fault) => {
                if checks.tolerate_torn_tail
                    && checks.checksums
                    && !indexed_frame_after(view, offset, seq)
                {
                    // After a power cut the length word may have reached the disk without the
                    // rest: garbage there with nothing valid behind it is a torn tail too.
                    // (Which frame follows cannot be told from a garbage length, but the page's
                    // index can say that good frames were published after it: damage, then.)
                    return Ok(stop(StopAt::Torn));
                }
                return Err(refuse(offset, fault));
            }
        };
        if checks.checksums {
            if let Err(fault) = frame.check_crc() {
                if checks.tolerate_torn_tail
                    && !valid_frame_follows(view, offset, &frame)
                    && !indexed_frame_after(view, offset, seq)
                {
                    return Ok(stop(StopAt::Torn));
                }
                return Err(refuse(offset, fault));
            }
        }
        if frame.seq != seq {
            return Err(refuse(
                offset,
                FrameFault::BadSeq {
                    found: frame.seq,
                    expected: seq,
                },
            ));
        }
        if frame.time < last_time {
            return Err(refuse(
                offset,
                FrameFault::TimeBackwards {
                    found: frame.time,
                    previous: last_time,
                },
            ));
        }
        if choose(&frame) {
            return Ok(stop(StopAt::Chosen));
        }
        offset += frame.len as usize;
        seq += 1;
        last_time = frame.time;
    }
}

/// Whether a frame with a good checksum follows the (bad) frame at `offset`: then the bad one is
/// damage in the middle of the chain, not a torn tail.
fn valid_frame_follows(view: &PageView<'_>, offset: usize, frame: &RawFrame<'_>) -> bool {
    let next = offset + frame.len as usize;
    if next + 8 > view.len() {
        return false;
    }
    matches!(view.slot(next), Ok(Slot::Frame(f)) if f.seq == frame.seq.wrapping_add(1) && f.check_crc().is_ok())
}

/// Whether the page's index points past `offset` at a frame with a good checksum and a
/// sequence number after `seq`: the writer published frames after the one at `offset`, so a bad
/// frame there is damage in the middle of the chain, not a torn tail. (Index entries are stored
/// after their frame is published, and recovery clears those past the end, so one pointing at a
/// good later frame is never a leftover.)
fn indexed_frame_after(view: &PageView<'_>, offset: usize, seq: u64) -> bool {
    let stride = view.header().index_stride;
    (0..super::layout::INDEX_SLOTS)
        .filter_map(|i| view.index_entry(i, stride))
        .filter(|&at| at > offset)
        .any(|at| matches!(view.slot(at), Ok(Slot::Frame(f)) if f.seq > seq && f.check_crc().is_ok()))
}

/// The frame offsets the page's index gives, ascending and checked (set, aligned, in their
/// stride, increasing), at most one per index slot. A stack array: no allocation.
pub(crate) fn index_offsets(
    view: &PageView<'_>,
    stride: u32,
    below: usize,
) -> heapless::Vec<usize, { super::layout::INDEX_SLOTS }> {
    let mut offsets = heapless::Vec::new();
    let mut previous = PAGE_HEADER_SIZE;
    for i in 0..super::layout::INDEX_SLOTS {
        if let Some(offset) = view.index_entry(i, stride) {
            if offset >= previous && offset < below {
                let _ = offsets.push(offset);
                previous = offset + 8;
            }
        }
    }
    offsets
}
