//! Reading a one-lane [`MessageRing`](crate::MessageRing)'s published records ahead of its front,
//! as raw bytes, without popping them: what a transport that forwards the queue itself (the TCP
//! transport sends its persisted send queue to the socket straight from the ring) needs.
//!
//! The records of a one-lane ring between the consumer's position and the producer's are
//! contiguous in the buffer except where the producer wrapped to the start (a padding record
//! fills the rest of the buffer there). [`MessageConsumer::published_run`] returns the longest
//! run of whole message records from a [`ReadAhead`] cursor, each header checked, stopping at the
//! buffer's end, at the first record not yet published, or at a byte limit.

use core::fmt;

use crate::api::RecvError;
use crate::message_ring::{MessageConsumer, MessageRing, HEADER};
use crate::sync::Ordering;

/// A record boundary among a one-lane ring's published records, at or after the consumer's
/// position: where [`MessageConsumer::published_run`] starts reading.
///
/// A cursor is made only by [`MessageConsumer::read_ahead`] (at the front) and by
/// [`PublishedRun::cursor_after`] (past records the run checked), so it always sits on a record
/// boundary of the ring that made it; pops that overtake it move it to the front.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    position: u32,
    /// The address of the ring it belongs to: a cursor of another ring is refused, since its
    /// position need not be a record boundary here.
    ring: usize,
}

impl ReadAhead {
    /// The cursor's wrapping byte position, on the scale of
    /// [`MessageConsumer::position`].
    pub const fn position(&self) -> u32 {
        self.position
    }
}

impl fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadAhead")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Consecutive whole message records, as the ring holds them: each an 8-byte header (commit
/// word, then payload length, both little-endian `u32`) and the payload padded to 8 bytes.
#[derive(Clone, Copy, Debug)]
pub struct PublishedRun<'r> {
    start: ReadAhead,
    bytes: &'r [u8],
    messages: u32,
}

impl<'r> PublishedRun<'r> {
    /// The records' bytes, headers included; empty when no record is published at the cursor.
    pub const fn bytes(&self) -> &'r [u8] {
        self.bytes
    }

    /// Where the run starts (past any padding the cursor stood on).
    pub const fn start(&self) -> ReadAhead {
        self.start
    }

    /// How many message records the run holds.
    pub const fn messages(&self) -> u32 {
        self.messages
    }

    /// The cursor just past the whole run: where a caller that wrote all of its bytes
    /// continues. Cost: none (no walk).
    pub const fn end(&self) -> ReadAhead {
        ReadAhead {
            position: self.start.position.wrapping_add(self.bytes.len() as u32),
            ring: self.start.ring,
        }
    }

    /// The cursor just past the records that end within the run's first `bytes` bytes, and how
    /// many bytes of the next record those `bytes` include: what a caller that wrote `bytes` of
    /// the run somewhere (a socket may take part of a record) continues from. `bytes` beyond the
    /// run count as the whole run. Cost: one step per record passed.
    pub fn cursor_after(&self, bytes: usize) -> (ReadAhead, usize) {
        let bytes = bytes.min(self.bytes.len());
        let mut offset = 0usize;
        while let Some(size) = record_size_at(self.bytes, offset) {
            if offset + size > bytes {
                break;
            }
            offset += size;
        }
        let cursor = ReadAhead {
            position: self.start.position.wrapping_add(offset as u32),
            ring: self.start.ring,
        };
        (cursor, bytes - offset)
    }
}

/// The size of the record at `offset` of a run (its header was checked when the run was made).
fn record_size_at(bytes: &[u8], offset: usize) -> Option<usize> {
    let len = bytes.get(offset + 4..offset + 8)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    Some(HEADER as usize + len.next_multiple_of(HEADER as usize))
}

impl<'a, const C: usize> MessageConsumer<'a, C, 1> {
    /// A cursor at the oldest unpopped record, for [`published_run`](Self::published_run).
    pub fn read_ahead(&self) -> ReadAhead {
        ReadAhead {
            position: self.position(),
            ring: self.ring_address(),
        }
    }

    /// The longest run of whole, published message records from `from`, at most `max_bytes`
    /// long (but at least one record when one is published there, whatever its size), without
    /// popping anything. A padding record at `from` is skipped: the run then starts at the
    /// buffer's start. The run stops before the buffer's end, the first unpublished record, or
    /// the record that would pass `max_bytes`.
    ///
    /// A cursor the consumer has since popped past reads from the front instead. Cost: one
    /// Acquire load and a header check per record.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`] for an impossible record (another process wrote the ring) or a
    /// cursor that belongs to another ring.
    ///
    /// # Example
    ///
    /// Forwarding the queue's records as they are, where the writer may take part of a record:
    ///
    /// ```
    /// use spsc_core::{MessageReceiver, MessageRing, MessageSender};
    ///
    /// let mut ring = MessageRing::<1024>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// tx.send(7, b"hello").unwrap();
    /// tx.send(8, b"world!!!").unwrap();
    ///
    /// // Both records, as the ring holds them: the commit word `1 | tag << 16` and the payload
    /// // length (little-endian `u32`s), then the payload padded to 8 bytes.
    /// let cursor = rx.read_ahead();
    /// let run = rx.published_run(cursor, usize::MAX).unwrap();
    /// assert_eq!(run.messages(), 2);
    /// let bytes = run.bytes();
    /// assert_eq!(bytes.len(), (8 + 8) + (8 + 8));
    /// assert_eq!(bytes[0..4], (1u32 | 7 << 16).to_le_bytes());
    /// assert_eq!(bytes[4..8], 5u32.to_le_bytes());
    /// assert_eq!(&bytes[8..13], b"hello");
    ///
    /// // The writer took 20 bytes: the first record and 4 bytes of the second's header.
    /// let (next, partial) = run.cursor_after(20);
    /// assert_eq!(partial, 4);
    /// let rest = rx.published_run(next, usize::MAX).unwrap();
    /// assert_eq!(rest.messages(), 1);
    /// assert_eq!(&rest.bytes()[8..], b"world!!!");
    /// // Continue the write from `rest.bytes()[partial..]`.
    ///
    /// // A byte limit keeps the run short, but it always holds one whole record.
    /// assert_eq!(rx.published_run(cursor, 1).unwrap().messages(), 1);
    ///
    /// // Nothing was popped: the receiver still reads both, in order.
    /// assert_eq!(rx.recv_with(|m| m.tag()), Ok(7));
    /// assert_eq!(rx.recv_with(|m| m.tag()), Ok(8));
    /// ```
    pub fn published_run(
        &mut self,
        from: ReadAhead,
        max_bytes: usize,
    ) -> Result<PublishedRun<'_>, RecvError> {
        let walk = self.walk(from, max_bytes, u64::MAX)?;
        let len = walk.end.wrapping_sub(walk.start) as usize;
        let offset = MessageRing::<C, 1>::offset_in_lane(walk.start) as usize;
        // SAFETY: the run is `len` bytes of whole records from `offset`, each checked by
        // `decode_record` to lie inside the buffer, and none crossing its end (the walk stops
        // where the next record would start at offset 0), so `offset + len <= C`. Each record's
        // commit word was read with Acquire and found published, so the producer's writes of
        // those bytes happened before, and it cannot reuse them until the consumer's position
        // passes them, which takes `pop` (`&mut self`), ending this borrow first.
        let bytes = unsafe { core::slice::from_raw_parts(self.ring.base().add(offset), len) };
        Ok(PublishedRun {
            start: self.cursor_at(walk.start),
            bytes,
            messages: walk.messages as u32,
        })
    }

    /// The cursor past the next `messages` published message records from `from` (padding
    /// skipped, across the buffer's end), and how many it passed: fewer than `messages` when
    /// fewer are published. Nothing is popped. Cost: one Acquire load and a header check per
    /// record passed.
    ///
    /// # Errors
    /// As [`published_run`](Self::published_run).
    pub fn skip_published(
        &mut self,
        from: ReadAhead,
        messages: u64,
    ) -> Result<(ReadAhead, u64), RecvError> {
        let mut cursor = from;
        let mut passed = 0u64;
        while passed < messages {
            let walk = self.walk(cursor, usize::MAX, messages - passed)?;
            if walk.messages == 0 {
                break;
            }
            passed += walk.messages;
            cursor = self.cursor_at(walk.end);
        }
        Ok((cursor, passed))
    }

    /// Pops every message before `to` at once, with one Release store of the consumer's index:
    /// what [`pop`](crate::MessageReceiver::pop) repeated up to the cursor does, at the cost of
    /// one pop. A cursor the consumer has already popped past pops nothing.
    ///
    /// # Errors
    /// [`RecvError::Corrupt`] for a cursor of another ring.
    pub fn pop_through(&mut self, to: ReadAhead) -> Result<(), RecvError> {
        self.check_cursor(to)?;
        let ahead = to.position.wrapping_sub(self.position());
        if ahead == 0 || ahead > C as u32 {
            return Ok(());
        }
        // A cursor is a record boundary no further than the published records (only walks over
        // them make one), so every byte before it was published and may be released.
        debug_assert!(ahead <= C as u32 - HEADER);
        self.heads[0] = to.position;
        self.front = None;
        self.ring.heads[0].store(to.position, Ordering::Release);
        Ok(())
    }

    fn cursor_at(&self, position: u32) -> ReadAhead {
        ReadAhead {
            position,
            ring: self.ring_address(),
        }
    }

    fn check_cursor(&self, cursor: ReadAhead) -> Result<(), RecvError> {
        if cursor.ring != self.ring_address() {
            return Err(RecvError::Corrupt {
                reason: "read-ahead cursor belongs to another ring",
            });
        }
        Ok(())
    }

    /// Walks the contiguous run of published message records from `from`: padding at `from`
    /// skipped, stopping at the buffer's end, the first unpublished record, before the record
    /// that would pass `max_bytes` (but never before the first), or after `max_messages`.
    fn walk(
        &mut self,
        from: ReadAhead,
        max_bytes: usize,
        max_messages: u64,
    ) -> Result<Walk, RecvError> {
        self.check_cursor(from)?;
        let ring = self.ring;
        let head = self.position();
        let lane_bytes = C as u32;
        // Popped past (or never ahead): start at the front, a record boundary.
        let mut position = if from.position.wrapping_sub(head) > lane_bytes {
            head
        } else {
            from.position
        };
        let mut start = None;
        let mut end = position;
        let mut messages = 0u64;
        while messages < max_messages {
            // Never walk more than a buffer's worth past the front: records beyond would be
            // impossible, and the bound keeps a corrupt ring from looping.
            if end.wrapping_sub(head) > lane_bytes - HEADER {
                return Err(RecvError::Corrupt {
                    reason: "published records overrun the buffer",
                });
            }
            let offset = MessageRing::<C, 1>::offset_in_lane(end);
            if start.is_some() && offset == 0 {
                break; // the next record is at the buffer's start: not contiguous
            }
            let commit = ring
                .commit_word(MessageRing::<C, 1>::at(0, offset))
                .load(Ordering::Acquire);
            if commit == 0 {
                break;
            }
            match ring.decode_record(0, offset, commit) {
                Err(reason) => return Err(RecvError::Corrupt { reason }),
                Ok((true, size)) => {
                    if start.is_some() {
                        break; // padding after messages: the run ends at the buffer's end
                    }
                    ring.track_read(MessageRing::<C, 1>::at(0, offset), HEADER);
                    end = end.wrapping_add(size);
                    position = end;
                }
                Ok((false, size)) => {
                    let run_start = *start.get_or_insert(position);
                    let run_len = end.wrapping_sub(run_start) as usize;
                    if messages > 0 && run_len + size as usize > max_bytes {
                        break;
                    }
                    ring.track_read(MessageRing::<C, 1>::at(0, offset), size);
                    end = end.wrapping_add(size);
                    messages += 1;
                }
            }
        }
        Ok(Walk {
            start: start.unwrap_or(position),
            end,
            messages,
        })
    }
}

/// Where a walk over published records started and ended, and the messages it passed.
struct Walk {
    start: u32,
    end: u32,
    messages: u64,
}
