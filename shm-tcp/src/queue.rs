//! The persisted send queue of one name pair: a one-ring segment in `shm-channel`'s validated
//! file format holding the unacknowledged messages, plus this side's stream words.
//!
//! # The file
//!
//! `<folder>/<local>_<remote>`: a `shm_channel` segment (magic, ABI version, layout
//! fingerprints, sizes, creation state) with one ring, a one-lane [`MessageRing<C>`] whose
//! records are the data frames as they go on the wire ([`crate::frame`]), and
//! [`ABSENT_RING`] as its second ring. The header's session area holds:
//!
//! | where | what |
//! |-------|------|
//! | session generation | [`FILE_KIND`], telling this file from other one-ring segments |
//! | end names A, B | the local and the remote name |
//! | user word 0 | `acked_through`: every sequence number below it was popped by the peer |
//! | user word 1 | `popped`: this side's pop count of the peer's stream |
//! | user word 2 | the session name's length (0: none yet) |
//! | user words 3–27 | the session name's bytes |
//!
//! # Why a `kill -9` anywhere leaves it consistent
//!
//! - A message is queued by the ring's own commit (payload, then the Release store of its
//!   header): it is wholly there or absent.
//! - On an acknowledgement `a`, `acked_through = a` is stored *before* the acknowledged records
//!   are popped; reopening drops every record whose sequence number is below it. So the first
//!   record left is always `acked_through` (checked on open), and the next sequence number is
//!   the last record's plus one, or `acked_through` when the queue is empty.
//! - The receiver's pop is the store of `popped + 1`: one aligned 8-byte store, never ahead of
//!   what the application popped.
//! - The session name is written bytes first, length last; a torn write reads as "none yet".
//!
//! A second `<folder>/<local>_<remote>.lock` file carries an exclusive `flock` for as long as a
//! connection has the pair open: the kernel drops it when the process dies, however it dies, so
//! a restarted process takes the pair back at once and a live one is never displaced.

use core::mem::ManuallyDrop;
use core::num::NonZeroU32;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use shm_channel::{
    End, RingPlacement, Segment, SegmentError, SegmentHeader, SegmentName, SegmentOptions,
    ABSENT_RING, HEADER_SIZE, MAX_NAME_LEN,
};
use spsc_core::{
    ClaimError, MessageConsumer, MessageProducer, MessageReceiver, MessageRing, MessageSender,
    MessageSlot, PublishedRun, ReadAhead, RecvError, SendError,
};

use crate::error::QueueError;
use crate::frame::{self, Kind, FRAME_HEADER};

/// The session generation word of a send-queue file: `SHMTCPQ1`.
pub const FILE_KIND: u64 = u64::from_le_bytes(*b"SHMTCPQ1");

const WORD_ACKED: usize = 0;
const WORD_POPPED: usize = 1;
const WORD_SESSION_LEN: usize = 2;
const WORD_SESSION: usize = 3;
const SESSION_WORDS: usize = MAX_NAME_LEN.div_ceil(8);

/// How far the persisted state survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A crash of the process: the file is a shared mapping, so the page cache keeps every
    /// store, and the kernel writes it back in its own time. No system call on the hot path.
    #[default]
    ProcessCrash,
    /// A crash of the machine too: every push and every pop is followed by an `msync` of the
    /// pages it wrote, so the data is on the disk before `push` / `pop` return. Costs a system
    /// call and a disk write per message (the crate's benchmark measures it); pointless on a
    /// `tmpfs` such as `/dev/shm`.
    PowerLoss,
}

/// The exclusive hold on a name pair: an `flock` on `<name>.lock`, released by the kernel when
/// the holder dies.
#[derive(Debug)]
pub(crate) struct PairLock {
    _file: OwnedFd,
}

impl PairLock {
    pub(crate) fn acquire(dir: &Path, name: &SegmentName) -> Result<Self, QueueError> {
        let path = dir.join(format!("{}.lock", name.as_str()));
        let file = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|errno| QueueError::Io {
            op: "opening the lock file",
            path: path.clone(),
            errno,
        })?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(Errno::WOULDBLOCK) => Err(QueueError::InUse { path }),
            Err(errno) => Err(QueueError::Io {
                op: "locking",
                path,
                errno,
            }),
        }
    }
}

/// The unacknowledged messages of one direction and the pop count of the other, persisted.
pub(crate) struct SendQueue<const C: usize> {
    producer: ManuallyDrop<MessageProducer<'static, C>>,
    consumer: ManuallyDrop<MessageConsumer<'static, C>>,
    /// Points into `segment`'s mapping, which outlives every use (dropped last, by hand).
    header: &'static SegmentHeader,
    segment: ManuallyDrop<Segment>,
    pid: u32,
    path: PathBuf,
    first_unacked: u64,
    next_seq: u64,
    /// Mirrors user word 1, which only we write.
    popped: u64,
    durability: Durability,
}

// SAFETY: the queue owns its mapping and ring handles; moving it to another thread moves all of
// them together (the handles are `!Sync` but may be sent with the ring they borrow).
unsafe impl<const C: usize> Send for SendQueue<C> {}

impl<const C: usize> SendQueue<C> {
    /// Bytes of the file: the header and the ring.
    pub(crate) const FILE_SIZE: usize = HEADER_SIZE + core::mem::size_of::<MessageRing<C>>();

    /// Opens the pair's file, creating it (with `session` recorded, if given) when missing.
    /// The caller holds the pair's [`PairLock`].
    pub(crate) fn open(
        dir: &Path,
        local: &SegmentName,
        remote: &SegmentName,
        session: Option<&SegmentName>,
        durability: Durability,
    ) -> Result<Self, QueueError> {
        let name = pair_name(local, remote)?;
        let path = dir.join(name.as_str());
        let options = SegmentOptions::default().dir(dir);
        let layouts = [MessageRing::<C>::LAYOUT, ABSENT_RING];
        let ring_size = core::mem::size_of::<MessageRing<C>>();
        let (segment, placements) = Segment::create_or_open(
            name.as_str(),
            Self::FILE_SIZE as u64,
            &options,
            &layouts,
            |segment| {
                let header = segment.header().map_err(|error| SegmentError::Header {
                    name: name.to_string(),
                    folder: dir.to_owned(),
                    error,
                })?;
                // SAFETY: the freshly created mapping is `FILE_SIZE` bytes, so the ring's
                // bytes from `HEADER_SIZE` (a multiple of 128 from a page-aligned base) are in
                // bounds and aligned; nobody else reads them before the segment is ready.
                unsafe {
                    let at = NonNull::new_unchecked(segment.as_ptr().as_ptr().add(HEADER_SIZE));
                    MessageRing::<C>::init_in_place(at, ring_size)
                        .expect("an aligned region of the ring's size");
                }
                header.set_end_name(End::A, local);
                header.set_end_name(End::B, remote);
                header.set_session_generation(FILE_KIND);
                if let Some(session) = session {
                    write_session(header, session);
                }
                Ok([
                    RingPlacement {
                        offset: HEADER_SIZE,
                        size: ring_size,
                    },
                    RingPlacement { offset: 0, size: 0 },
                ])
            },
        )?;
        let header: &'static SegmentHeader = {
            let header = segment.header().map_err(|error| SegmentError::Header {
                name: name.to_string(),
                folder: dir.to_owned(),
                error,
            })?;
            // SAFETY: the header lives in the mapping, which `SendQueue` keeps until its drop
            // and which never moves (`Segment`'s guarantee); the reference never leaves it.
            unsafe { &*core::ptr::from_ref(header) }
        };
        let mismatch = |what: &'static str, found: String, expected: String| QueueError::Foreign {
            path: path.clone(),
            what,
            found,
            expected,
        };
        if header.session_generation() != FILE_KIND {
            return Err(mismatch(
                "file kind",
                format!("{:#018x}", header.session_generation()),
                format!("{FILE_KIND:#018x} (a shm-tcp send queue)"),
            ));
        }
        for (end, expected) in [(End::A, local), (End::B, remote)] {
            let found = header.end_name(end);
            if found.as_ref() != Some(expected) {
                return Err(mismatch(
                    if end == End::A {
                        "local name"
                    } else {
                        "remote name"
                    },
                    found.map_or_else(|| "none".to_owned(), |n| n.to_string()),
                    expected.to_string(),
                ));
            }
        }
        // SAFETY: the header validated the ring's place (in bounds, aligned, of its layout's
        // size) in a mapping that outlives the queue; every process accesses it through the
        // ring's handles only.
        let ring: &'static MessageRing<C> = unsafe {
            let at = NonNull::new_unchecked(segment.as_ptr().as_ptr().add(placements[0].offset));
            MessageRing::<C>::attach(at, placements[0].size)
        }
        .map_err(|error| QueueError::Ring {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let pid = rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        let owner = NonZeroU32::new(pid).unwrap_or(NonZeroU32::MIN);
        let claim_error = |error: ClaimError| QueueError::Ring {
            path: path.clone(),
            reason: error.to_string(),
        };
        // The pair lock proves that no live process holds the ring: a claim left in it is a dead
        // process's, and ours to take over.
        let producer = match ring.claim_producer(owner) {
            Err(ClaimError::Taken { owner: dead }) => {
                let dead = NonZeroU32::new(dead).unwrap_or(NonZeroU32::MIN);
                // SAFETY: the holder is dead (see above) and never touches the ring again.
                unsafe { ring.take_over_producer(dead, owner) }
            }
            other => other,
        }
        .map_err(claim_error)?;
        let consumer = match ring.claim_consumer(owner) {
            Err(ClaimError::Taken { owner: dead }) => {
                let dead = NonZeroU32::new(dead).unwrap_or(NonZeroU32::MIN);
                // SAFETY: as for the producer.
                unsafe { ring.take_over_consumer(dead, owner) }
            }
            other => other,
        }
        .map_err(claim_error)?;
        let mut queue = Self {
            producer: ManuallyDrop::new(producer),
            consumer: ManuallyDrop::new(consumer),
            header,
            segment: ManuallyDrop::new(segment),
            pid,
            path,
            first_unacked: 0,
            next_seq: 0,
            popped: 0,
            durability,
        };
        queue.recover()?;
        Ok(queue)
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        self.header
            .user_word(index)
            .expect("the session area has 62 user words")
    }

    /// Drops what was acknowledged before a crash, checks every record left, and finds the
    /// sequence numbers.
    fn recover(&mut self) -> Result<(), QueueError> {
        let acked = self.word(WORD_ACKED).load(Ordering::Acquire);
        self.popped = self.word(WORD_POPPED).load(Ordering::Acquire);
        loop {
            match self.front_seq()? {
                Some(seq) if seq < acked => self.pop_record()?,
                _ => break,
            }
        }
        // The first record left is `acked` itself, unless pops outran the store of `acked` on
        // the disk (power loss: pages reach it in any order): the peer had acknowledged those.
        let first = self.front_seq()?.map_or(acked, |seq| seq.max(acked));
        self.first_unacked = first;
        self.next_seq = first;
        let mut cursor = self.consumer.read_ahead();
        loop {
            let path = &self.path;
            let run = self
                .consumer
                .published_run(cursor, usize::MAX)
                .map_err(|e| QueueError::Corrupt {
                    path: path.clone(),
                    reason: recv_reason(e),
                })?;
            if run.messages() == 0 {
                break;
            }
            let mut at = 0;
            while at < run.bytes().len() {
                let record = &run.bytes()[at..];
                let len = u32::from_le_bytes(record[4..8].try_into().unwrap());
                let (kind, seq) = (
                    record[16],
                    u64::from_le_bytes(record[8..16].try_into().unwrap()),
                );
                if len < FRAME_HEADER || kind != Kind::Data as u8 {
                    return Err(QueueError::Corrupt {
                        path: path.clone(),
                        reason: "a queued record is not a data frame",
                    });
                }
                if seq != self.next_seq {
                    return Err(QueueError::SequenceGap {
                        path: path.clone(),
                        expected: self.next_seq,
                        found: seq,
                    });
                }
                self.next_seq += 1;
                at += frame::size_from_header(record);
            }
            cursor = run.cursor_after(usize::MAX).0;
        }
        Ok(())
    }

    fn corrupt(&self, reason: &'static str) -> QueueError {
        QueueError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// The sequence number of the oldest queued record.
    fn front_seq(&mut self) -> Result<Option<u64>, QueueError> {
        match self.consumer.front() {
            Ok(message) => {
                let payload = message.payload();
                if payload.len() < FRAME_HEADER as usize || payload[8] != Kind::Data as u8 {
                    return Err(self.corrupt("a queued record is not a data frame"));
                }
                Ok(Some(u64::from_le_bytes(payload[..8].try_into().unwrap())))
            }
            Err(RecvError::Empty) => Ok(None),
            Err(error) => Err(self.corrupt(recv_reason(error))),
        }
    }

    fn pop_record(&mut self) -> Result<(), QueueError> {
        self.consumer
            .pop()
            .map_err(|error| self.corrupt(recv_reason(error)))
    }

    /// Where the streams stand: what the hello reports.
    pub(crate) fn stream_state(&self) -> crate::hello::StreamState {
        crate::hello::StreamState {
            first_unacked: self.first_unacked,
            next_seq: self.next_seq,
            popped: self.popped,
        }
    }

    /// The largest payload a message may have: the ring's, less the frame header.
    pub(crate) const MAX_PAYLOAD: u32 = MessageRing::<C>::MAX_PAYLOAD - FRAME_HEADER;

    /// Reserves a data record for a `len`-byte payload, its frame header written.
    #[inline]
    pub(crate) fn alloc(
        &mut self,
        len: u32,
        tag: u16,
    ) -> Result<MessageSlot<'_, 'static, C>, SendError> {
        if len > Self::MAX_PAYLOAD {
            return Err(SendError::TooLarge {
                len: u64::from(len),
                max: Self::MAX_PAYLOAD,
            });
        }
        let seq = self.next_seq;
        let mut slot = self.producer.alloc(len + FRAME_HEADER, tag)?;
        frame::write_frame_header(spsc_core::SendSlot::payload_mut(&mut slot), Kind::Data, seq);
        Ok(slot)
    }

    /// Counts a pushed record (the slot's `push` published it).
    #[inline]
    pub(crate) fn pushed(&mut self) {
        self.next_seq += 1;
        if self.durability == Durability::PowerLoss {
            // The whole ring: the record's place is not known here, and msync of clean pages is
            // cheap next to the disk write of the dirty ones.
            self.sync_range(HEADER_SIZE, core::mem::size_of::<MessageRing<C>>());
        }
    }

    /// Applies the peer's pop count `acked` of our stream: stores it, then drops the records it
    /// covers.
    ///
    /// # Errors
    /// [`QueueError::BadAck`] if `acked` lies outside `[first_unacked, next_seq]`: the peer
    /// acknowledged what we never sent, or went back on an acknowledgement.
    pub(crate) fn ack(&mut self, acked: u64) -> Result<(), QueueError> {
        if acked == self.first_unacked {
            return Ok(());
        }
        if acked < self.first_unacked || acked > self.next_seq {
            return Err(QueueError::BadAck {
                path: self.path.clone(),
                acked,
                first_unacked: self.first_unacked,
                next_seq: self.next_seq,
            });
        }
        self.word(WORD_ACKED).store(acked, Ordering::Release);
        // The records' sequence numbers are consecutive (checked on open, and only this queue
        // writes them): check the first and the one after the last, and drop them all at once.
        match self.front_seq()? {
            Some(seq) if seq == self.first_unacked => {}
            Some(seq) => {
                return Err(QueueError::SequenceGap {
                    path: self.path.clone(),
                    expected: self.first_unacked,
                    found: seq,
                })
            }
            None => return Err(self.corrupt("acknowledged records are missing")),
        }
        let count = acked - self.first_unacked;
        let front = self.consumer.read_ahead();
        let (through, passed) = self
            .consumer
            .skip_published(front, count)
            .map_err(|error| self.corrupt(recv_reason(error)))?;
        if passed != count {
            return Err(self.corrupt("acknowledged records are missing"));
        }
        let path = &self.path;
        let next =
            self.consumer
                .published_run(through, 0)
                .map_err(|error| QueueError::Corrupt {
                    path: path.clone(),
                    reason: recv_reason(error),
                })?;
        if next.messages() > 0 {
            let seq = u64::from_le_bytes(next.bytes()[8..16].try_into().unwrap());
            if seq != acked {
                return Err(QueueError::SequenceGap {
                    path: path.clone(),
                    expected: acked,
                    found: seq,
                });
            }
        }
        self.consumer
            .pop_through(through)
            .map_err(|error| self.corrupt(recv_reason(error)))?;
        self.first_unacked = acked;
        Ok(())
    }

    /// A read-ahead cursor at the oldest unacknowledged record: where a resend starts.
    pub(crate) fn resend_cursor(&self) -> ReadAhead {
        self.consumer.read_ahead()
    }

    /// The run of queued records from `cursor`, at most `max` bytes (at least one record).
    #[inline]
    pub(crate) fn run(
        &mut self,
        cursor: ReadAhead,
        max: usize,
    ) -> Result<PublishedRun<'_>, QueueError> {
        match self.consumer.published_run(cursor, max) {
            Ok(run) => Ok(run),
            Err(error) => Err(QueueError::Corrupt {
                path: self.path.clone(),
                reason: recv_reason(error),
            }),
        }
    }

    /// This side's pop count of the peer's stream.
    #[inline]
    pub(crate) fn popped(&self) -> u64 {
        self.popped
    }

    /// Commits one more pop of the peer's stream: the store is the commit.
    #[inline]
    pub(crate) fn commit_pop(&mut self) {
        self.popped += 1;
        self.word(WORD_POPPED).store(self.popped, Ordering::Release);
        if self.durability == Durability::PowerLoss {
            self.sync_range(0, HEADER_SIZE);
        }
    }

    fn sync_range(&self, offset: usize, len: usize) {
        // SAFETY: the range lies in the mapping (offset and len within FILE_SIZE, offset
        // page-aligned: 0 or HEADER_SIZE, 4096); msync only writes pages back.
        let _ = unsafe {
            rustix::mm::msync(
                self.segment.as_ptr().as_ptr().add(offset).cast(),
                len,
                rustix::mm::MsyncFlags::SYNC,
            )
        };
    }

    /// The session this file belongs to (`None` until the first handshake).
    pub(crate) fn session(&self) -> Option<SegmentName> {
        read_session(self.header)
    }

    /// Records the session (when the file had none).
    pub(crate) fn set_session(&self, session: &SegmentName) {
        write_session(self.header, session);
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `<name>.<stamp>.stale` in its folder, for a fresh start that keeps
    /// the old state for inspection; returns the new path. The mapping stays valid until drop.
    pub(crate) fn move_aside(&self, stamp: u64) -> Result<PathBuf, QueueError> {
        let mut target = self.path.clone().into_os_string();
        target.push(format!(".{stamp}.stale"));
        let target = PathBuf::from(target);
        std::fs::rename(&self.path, &target).map_err(|error| QueueError::Io {
            op: "moving the old state aside",
            path: self.path.clone(),
            errno: Errno::from_io_error(&error).unwrap_or(Errno::IO),
        })?;
        Ok(target)
    }
}

impl<const C: usize> Drop for SendQueue<C> {
    fn drop(&mut self) {
        let here = rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs()
            == self.pid;
        if here {
            // SAFETY: dropped once, here; the handles borrow the mapping, dropped after them.
            unsafe {
                ManuallyDrop::drop(&mut self.producer);
                ManuallyDrop::drop(&mut self.consumer);
            }
        }
        // A forked child's copy leaves its parent's claims alone (the handles are leaked).
        // SAFETY: dropped once, here; nothing refers to the mapping any more.
        unsafe { ManuallyDrop::drop(&mut self.segment) };
    }
}

/// The file name of a pair: `<local>_<remote>`.
pub(crate) fn pair_name(
    local: &SegmentName,
    remote: &SegmentName,
) -> Result<SegmentName, QueueError> {
    SegmentName::for_pair(local.as_str(), remote.as_str()).map_err(|error| QueueError::Name {
        name: format!("{local}_{remote}"),
        reason: error.to_string(),
    })
}

fn recv_reason(error: RecvError) -> &'static str {
    match error {
        RecvError::Corrupt { reason } => reason,
        _ => "unexpected ring error",
    }
}

fn write_session(header: &SegmentHeader, session: &SegmentName) {
    let word = |i| {
        header
            .user_word(i)
            .expect("the session area has 62 user words")
    };
    word(WORD_SESSION_LEN).store(0, Ordering::Release);
    let bytes = session.as_str().as_bytes();
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        word(WORD_SESSION + i).store(u64::from_le_bytes(buf), Ordering::Relaxed);
    }
    word(WORD_SESSION_LEN).store(bytes.len() as u64, Ordering::Release);
}

fn read_session(header: &SegmentHeader) -> Option<SegmentName> {
    let word = |i| {
        header
            .user_word(i)
            .expect("the session area has 62 user words")
    };
    let len = word(WORD_SESSION_LEN).load(Ordering::Acquire) as usize;
    if len == 0 || len > MAX_NAME_LEN {
        return None;
    }
    let mut bytes = [0u8; SESSION_WORDS * 8];
    for i in 0..SESSION_WORDS {
        let value = word(WORD_SESSION + i).load(Ordering::Relaxed);
        bytes[i * 8..i * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    SegmentName::new(core::str::from_utf8(&bytes[..len]).ok()?).ok()
}
