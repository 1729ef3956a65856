//! A reader of one journal: its own position, seeks by sequence number and by time, live reads,
//! waiting, and a position persisted across restarts.

use core::sync::atomic::Ordering;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{JournalError, ReadError};
use super::layout::{Expected, PageView, RawFrame, Slot, PAGE_HEADER_SIZE, STATE_ACTIVE};
use super::options::DEFAULT_JOURNAL_DIR;
use super::page::{self, PageMap};
use super::position::PositionFile;
use super::wait::Sleeper;
use super::walk::{index_offsets, walk, Checks, StopAt};
use crate::name::SegmentName;
use crate::wait::{monotonic_nanos, WaitStrategy};

/// Where a reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest frame kept.
    Oldest,
    /// The frame with this sequence number (an error if retention removed it; the writer's next
    /// number reads live from the end).
    Seq(u64),
    /// The first frame whose timestamp is at least this (found by a binary search over pages,
    /// then over the page's index, then a walk of at most 1/512 of a page).
    Time(u64),
    /// Live: only frames published from now on.
    End,
}

/// How a reader is opened.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    dir: PathBuf,
    position: Option<PathBuf>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ReaderOptions {
    /// Journals in `/dev/shm`, no persisted position.
    pub fn new() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_JOURNAL_DIR),
            position: None,
        }
    }

    /// The folder holding the journal's folder (as given to the writer's
    /// [`JournalOptions::dir`](super::JournalOptions::dir)).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Persist the reader's position in this file (the reader's own, anywhere it may write; never
    /// in the journal): a reader opened with a position file that exists resumes at the frame
    /// after the last one it popped, whatever [`ReadFrom`] says; otherwise it starts at
    /// [`ReadFrom`] and creates the file. Each [`pop`](JournalReader::pop) then stores the next
    /// sequence number in the mapped file (one store; no system call), so a reader killed at any
    /// point resumes exactly after its last pop. If retention removed that frame while the
    /// reader was away, it resumes at the oldest frame kept, and its first read is
    /// [`ReadError::Lagged`] with what it missed.
    pub fn position_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.position = Some(path.into());
        self
    }
}

/// One frame read from a journal, borrowed in place from the page (read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalFrame<'a> {
    seq: u64,
    time: u64,
    tag: u16,
    payload: &'a [u8],
}

impl<'a> JournalFrame<'a> {
    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The writer's timestamp.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Its type tag.
    pub fn tag(&self) -> u16 {
        self.tag
    }

    /// Its payload (8-byte aligned).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    pub(crate) fn from_raw(frame: &RawFrame<'a>) -> Self {
        Self {
            seq: frame.seq,
            time: frame.time,
            tag: frame.tag,
            payload: frame.payload,
        }
    }
}

/// A reader of one journal (see the [module docs](super)). Opens pages read-only and maps them
/// read-only: it never creates, extends or writes a journal file.
pub struct JournalReader {
    folder: PathBuf,
    name: SegmentName,
    journal_id: u64,
    page_size: u64,
    page: PageMap,
    checksums: bool,
    offset: usize,
    next_seq: u64,
    last_time: u64,
    /// The length of the frame `front` returned, for `pop`.
    front_len: Option<u32>,
    sleeper: Sleeper,
    /// A lag to report at the next read (a named reader whose position was removed while it
    /// was away): (missed, resume at).
    pending_lag: Option<(u64, u64)>,
    /// This reader's record in the wake file, once it blocked.
    wake_slot: Option<usize>,
    /// The path buffer of the page last left, reused for the next (a page crossing allocates
    /// nothing).
    spare_path: PathBuf,
    /// The journal's wake file, mapped at the first blocking wait (`Some(None)`: it could not
    /// be, so blocking waits sleep in short polls).
    wake: Option<Option<page::WakeMap>>,
    position: Option<PositionFile>,
}

impl JournalReader {
    /// Opens a reader of journal `name` in `options`' folder, starting at `from` (or at its
    /// persisted position).
    ///
    /// # Errors
    /// [`JournalError::NoPages`] before the writer ever ran; `Removed` / `BeyondEnd` for a
    /// sequence number outside the journal; `Page` / `Frame` / `Discontinuous` for damage;
    /// `Position` for a position file that is not one or belongs to another journal; `Io`.
    ///
    /// Costs: a listing of the folder, one mapping per page probed (a binary search), a walk of
    /// at most 1/512 of a page.
    pub fn open(name: &str, options: &ReaderOptions, from: ReadFrom) -> Result<Self, JournalError> {
        let name = SegmentName::new(name)?;
        let folder = options.dir.join(name.as_str());
        let mut position = None;
        let mut from = from;
        let mut fresh_position = None;
        if let Some(path) = &options.position {
            match PositionFile::open_existing(path)? {
                Some(file) => {
                    from = ReadFrom::Seq(file.next_seq());
                    position = Some(file);
                }
                None => fresh_position = Some(path.clone()),
            }
        }
        // The position's journal is checked inside the seek, before the position is sought: a
        // position of another journal (one removed and made again under the same name) is a
        // `Position` error, not whatever seeking its number in this journal gives
        // (`BeyondEnd`, `Removed`, or worse, a wrong frame).
        let mut attempts = 0;
        let mut reader = loop {
            attempts += 1;
            match Self::seek(&folder, name.clone(), from, position.as_ref()) {
                // Retention removed the oldest page between the listing and its opening.
                Err(JournalError::Removed { .. }) if from == ReadFrom::Oldest && attempts < 4 => {}
                // A named reader's next frame was removed while it was away: it resumes at the
                // oldest frame kept, and its first read says what it missed, as a reader that
                // stayed would have been told.
                Err(JournalError::Removed { seq, .. }) if position.is_some() && attempts < 4 => {
                    let mut reader = match Self::seek(
                        &folder,
                        name.clone(),
                        ReadFrom::Oldest,
                        position.as_ref(),
                    ) {
                        Err(JournalError::Removed { .. }) => continue,
                        other => other?,
                    };
                    let resume_at = reader.next_seq;
                    reader.pending_lag = Some((resume_at.saturating_sub(seq), resume_at));
                    break reader;
                }
                other => break other?,
            }
        };
        if let (Some(file), Some((_, resume_at))) = (&position, reader.pending_lag) {
            file.store(resume_at);
        }
        if let Some(path) = fresh_position {
            position = Some(PositionFile::create(
                &path,
                reader.journal_id,
                reader.next_seq,
            )?);
        }
        reader.position = position;
        Ok(reader)
    }

    fn seek(
        folder: &Path,
        name: SegmentName,
        from: ReadFrom,
        position: Option<&PositionFile>,
    ) -> Result<Self, JournalError> {
        let pages = contiguous_pages(folder)?;
        let (Some(&oldest), Some(&newest)) = (pages.first(), pages.last()) else {
            return Err(JournalError::NoPages {
                folder: folder.to_path_buf(),
            });
        };
        let probe = Expected {
            name: name.as_str(),
            journal_id: None,
            page_size: None,
            page_number: newest,
        };
        let last = PageMap::open(folder, newest, &probe, false)?;
        let info = *last.info();
        if let Some(position) = position {
            position.check_journal(info.journal_id)?;
        }
        let mut at = Locator {
            folder,
            name: name.as_str(),
            journal_id: info.journal_id,
            page_size: info.page_size,
            checksums: info.checksums(),
        };
        // The newest started page: a page made in advance is not started yet.
        let (newest_active, last) =
            if last.view().header().state.load(Ordering::Acquire) == STATE_ACTIVE {
                (newest, last)
            } else if newest > oldest {
                (newest - 1, at.open(newest - 1)?)
            } else {
                return Err(JournalError::NoPages {
                    folder: folder.to_path_buf(),
                });
            };
        let end = at.walk_to_end(&last)?;
        let (page, offset, seq, time) = match from {
            ReadFrom::End => (last, end.offset, end.seq, end.last_time),
            ReadFrom::Oldest => {
                let page = at.open_or_removed(oldest, None)?;
                let seq = page.view().header().first_seq.load(Ordering::Acquire);
                (page, PAGE_HEADER_SIZE, seq, 0)
            }
            ReadFrom::Seq(seq) => {
                if seq > end.seq {
                    return Err(JournalError::BeyondEnd {
                        folder: folder.to_path_buf(),
                        seq,
                        next: end.seq,
                    });
                }
                if seq == end.seq {
                    (last, end.offset, end.seq, end.last_time)
                } else {
                    at.find(oldest, newest_active, last, Key::Seq(seq))?
                }
            }
            ReadFrom::Time(time) => at.find(oldest, newest_active, last, Key::Time(time))?,
        };
        let _ = &mut at;
        Ok(Self {
            folder: folder.to_path_buf(),
            name,
            journal_id: info.journal_id,
            page_size: info.page_size,
            checksums: info.checksums(),
            page,
            offset,
            next_seq: seq,
            last_time: time,
            front_len: None,
            sleeper: Sleeper::new(),
            pending_lag: None,
            wake_slot: None,
            spare_path: PathBuf::new(),
            wake: None,
            position: None,
        })
    }

    /// The oldest unread frame, borrowed in place; [`pop`](Self::pop) releases it.
    ///
    /// # Errors
    /// [`ReadError::Empty`] when nothing new is published; [`ReadError::Lagged`] when retention
    /// removed frames this reader had not read (it resumes at the oldest kept, which the next
    /// call returns); [`ReadError::Journal`] for a damaged frame or page (the reader stays put).
    ///
    /// Costs: an Acquire load and a few checks (a checksum over the frame if the page has them);
    /// at a page's end, opening and mapping the next page.
    #[inline]
    pub fn front(&mut self) -> Result<JournalFrame<'_>, ReadError> {
        if let Some((missed, resume_at)) = self.pending_lag.take() {
            return Err(ReadError::Lagged {
                folder: self.folder.clone(),
                missed,
                resume_at,
            });
        }
        loop {
            match self.page.view().slot(self.offset) {
                Ok(Slot::Frame(_)) => break,
                Ok(Slot::Empty) => return Err(ReadError::Empty),
                Ok(Slot::End) => self.next_page()?,
                Err(fault) => return Err(self.refuse(fault)),
            }
        }
        let view = self.page.view();
        let Ok(Slot::Frame(frame)) = view.slot(self.offset) else {
            unreachable!("a published frame stays published");
        };
        if let Err(fault) = self.check(&frame) {
            return Err(ReadError::Journal(JournalError::Frame {
                path: self.page.path().to_path_buf(),
                offset: self.offset,
                fault,
            }));
        }
        self.front_len = Some(frame.len);
        Ok(JournalFrame::from_raw(&frame))
    }

    #[inline]
    fn check(&self, frame: &RawFrame<'_>) -> Result<(), super::layout::FrameFault> {
        use super::layout::FrameFault;
        if frame.seq != self.next_seq {
            return Err(FrameFault::BadSeq {
                found: frame.seq,
                expected: self.next_seq,
            });
        }
        if frame.time < self.last_time {
            return Err(FrameFault::TimeBackwards {
                found: frame.time,
                previous: self.last_time,
            });
        }
        if self.checksums {
            frame.check_crc()?;
        }
        Ok(())
    }

    fn refuse(&self, fault: super::layout::FrameFault) -> ReadError {
        ReadError::Journal(JournalError::Frame {
            path: self.page.path().to_path_buf(),
            offset: self.offset,
            fault,
        })
    }

    /// Releases the frame [`front`](Self::front) returned (reading it first if it was not):
    /// the reader moves on, and a persisted position records it.
    ///
    /// # Errors
    /// As [`front`](Self::front).
    #[inline]
    pub fn pop(&mut self) -> Result<(), ReadError> {
        let len = match self.front_len.take() {
            Some(len) => len,
            None => {
                self.front()?;
                self.front_len.take().unwrap_or(0)
            }
        };
        // Re-read for the timestamp: cheap, the line is in cache.
        if let Ok(Slot::Frame(frame)) = self.page.view().slot(self.offset) {
            self.last_time = frame.time;
        }
        self.offset += len as usize;
        self.next_seq += 1;
        if let Some(position) = &self.position {
            position.store(self.next_seq);
        }
        Ok(())
    }

    /// Reads the next frame with `read` and pops it.
    ///
    /// # Errors
    /// As [`front`](Self::front).
    pub fn recv_with<R>(
        &mut self,
        read: impl FnOnce(JournalFrame<'_>) -> R,
    ) -> Result<R, ReadError> {
        let result = read(self.front()?);
        self.pop()?;
        Ok(result)
    }

    /// Waits until a frame is there to read (then [`front`](Self::front) returns it), by
    /// busy-polling, spinning then yielding, or sleeping on the page's futex
    /// ([`WaitStrategy`]), at most `timeout` (`None`: for ever). Returns `Ok(true)` when a frame
    /// (or a lag report) is there, `Ok(false)` at the timeout.
    ///
    /// A sleeping reader costs the writer a fence per publication (no system call) and one wake
    /// call per sleep; readers that never sleep cost it nothing.
    ///
    /// # Errors
    /// As [`front`](Self::front), but never `Empty`.
    pub fn wait(
        &mut self,
        strategy: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<bool, ReadError> {
        let start = monotonic_nanos();
        let deadline =
            timeout.map(|t| start.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
        let spins = match strategy {
            WaitStrategy::BusyPoll => u32::MAX,
            WaitStrategy::SpinThenYield { spins } => spins,
            WaitStrategy::Block { spin_first } => spin_first,
        };
        let mut polls = 0u32;
        loop {
            match self.front() {
                Ok(_) | Err(ReadError::Lagged { .. }) => return Ok(true),
                Err(ReadError::Empty) => {}
                Err(error) => return Err(error),
            }
            if polls < spins || strategy == WaitStrategy::BusyPoll {
                polls = polls.wrapping_add(1);
                spsc_core::spin_hint();
                if !polls.is_multiple_of(256) {
                    continue;
                }
            }
            let now = monotonic_nanos();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(false);
            }
            if polls < spins || strategy == WaitStrategy::BusyPoll {
                continue;
            }
            match strategy {
                WaitStrategy::Block { .. } => {
                    let bound =
                        deadline.map_or(100_000_000, |d| d.saturating_sub(now).min(100_000_000));
                    let folder = &self.folder;
                    let wake = self.wake.get_or_insert_with(|| page::WakeMap::open(folder));
                    let view = self.page.view();
                    let offset = self.offset;
                    let mut ready = || !matches!(view.slot(offset), Ok(Slot::Empty));
                    match wake {
                        Some(wake) => {
                            if !self.sleeper.is_armed() {
                                // Arm, then record it (the order ReaderSlot explains).
                                self.sleeper.arm(wake.cell());
                                if self.wake_slot.is_none() {
                                    self.wake_slot = wake.claim_slot();
                                }
                                if let Some(index) = self.wake_slot {
                                    wake.mark(index, true);
                                }
                            }
                            self.sleeper.sleep(wake.cell(), &mut ready, bound)
                        }
                        // No wake file we may write: short sleeps instead.
                        None => std::thread::sleep(Duration::from_nanos(bound.min(200_000))),
                    }
                }
                _ => std::thread::yield_now(),
            }
        }
    }

    /// Stops this reader's blocking arm (the writer goes back to its fence-free path) until it
    /// blocks again.
    pub fn disarm(&mut self) {
        if let Some(Some(wake)) = &self.wake {
            // Unrecord, then disarm (the order ReaderSlot explains).
            if let Some(index) = self.wake_slot {
                wake.mark(index, false);
            }
            self.sleeper.disarm(wake.cell());
        }
    }

    /// Moves to the next page at an end-of-page word.
    #[cold]
    fn next_page(&mut self) -> Result<(), ReadError> {
        let number = self.page.number() + 1;
        // The path in the buffer the page left before gave back: no allocation.
        let mut path = core::mem::take(&mut self.spare_path);
        page::set_page_path(&mut path, &self.folder, number);
        let expected = Expected {
            name: self.name.as_str(),
            journal_id: Some(self.journal_id),
            page_size: Some(self.page_size),
            page_number: number,
        };
        let page = match PageMap::open_at(path, number, &expected, false) {
            Ok(page) => page,
            Err(JournalError::Io { errno, .. }) if errno == rustix::io::Errno::NOENT => {
                return Err(self.lagged());
            }
            Err(error) => return Err(ReadError::Journal(error)),
        };
        let header = page.view().header();
        let first = header.first_seq.load(Ordering::Acquire);
        if header.state.load(Ordering::Acquire) != STATE_ACTIVE || first != self.next_seq {
            return Err(ReadError::Journal(JournalError::Discontinuous {
                folder: self.folder.clone(),
                what: format!(
                    "page {} ends after frame {}, but page {number} starts at {first}",
                    self.page.number(),
                    self.next_seq.wrapping_sub(1)
                ),
            }));
        }
        let left = core::mem::replace(&mut self.page, page);
        self.spare_path = left.into_path();
        self.offset = PAGE_HEADER_SIZE;
        Ok(())
    }

    /// The next page is gone: resume at the oldest kept page.
    fn lagged(&mut self) -> ReadError {
        let at = self.locator();
        let missing = self.page.number() + 1;
        let resumed = page::list_pages(&self.folder).and_then(|pages| {
            let oldest = *pages.first().ok_or(JournalError::NoPages {
                folder: self.folder.clone(),
            })?;
            // Retention removes the oldest pages first, so once page `missing` is gone every
            // page before it is gone too: a listing that still holds one is a hole in the
            // journal, not a lag (resuming there would go back to an older frame).
            if oldest <= missing {
                return Err(JournalError::Discontinuous {
                    folder: self.folder.clone(),
                    what: format!(
                        "page {} ends after frame {}, but page {missing} is missing while page {oldest} is kept",
                        self.page.number(),
                        self.next_seq.wrapping_sub(1)
                    ),
                });
            }
            at.open(oldest)
        });
        match resumed {
            Ok(page) => {
                let first = page.view().header().first_seq.load(Ordering::Acquire);
                let missed = first.saturating_sub(self.next_seq);
                self.page = page;
                self.offset = PAGE_HEADER_SIZE;
                self.next_seq = first;
                self.front_len = None;
                if let Some(position) = &self.position {
                    position.store(first);
                }
                ReadError::Lagged {
                    folder: self.folder.clone(),
                    missed,
                    resume_at: first,
                }
            }
            Err(error) => ReadError::Journal(error),
        }
    }

    fn locator(&self) -> Locator<'_> {
        Locator {
            folder: &self.folder,
            name: self.name.as_str(),
            journal_id: self.journal_id,
            page_size: self.page_size,
            checksums: self.checksums,
        }
    }

    /// The sequence number of the next frame this reader reads.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The page this reader is on.
    pub fn current_page(&self) -> u64 {
        self.page.number()
    }

    /// The journal's folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The journal's identity.
    pub fn journal_id(&self) -> u64 {
        self.journal_id
    }

    /// The timestamp of the next frame, if one is published (for merging by time).
    pub(crate) fn peek_time(&mut self) -> Result<u64, ReadError> {
        self.front().map(|frame| frame.time())
    }
}

impl Drop for JournalReader {
    fn drop(&mut self) {
        self.disarm();
        if let (Some(Some(wake)), Some(index)) = (&self.wake, self.wake_slot) {
            wake.release(index);
        }
    }
}

impl core::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JournalReader")
            .field("folder", &self.folder)
            .field("page", &self.page.number())
            .field("offset", &self.offset)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl spsc_core::MessageReceiver for JournalReader {
    fn front(&mut self) -> Result<spsc_core::Message<'_>, spsc_core::RecvError> {
        match JournalReader::front(self) {
            Ok(frame) => Ok(spsc_core::Message::new(frame.tag(), frame.payload())),
            Err(error) => Err(recv_error(&error)),
        }
    }

    fn pop(&mut self) -> Result<(), spsc_core::RecvError> {
        JournalReader::pop(self).map_err(|error| recv_error(&error))
    }
}

/// The message API's error for a read error (its `Corrupt` reasons are static: the inherent
/// methods give the whole story).
fn recv_error(error: &ReadError) -> spsc_core::RecvError {
    match error {
        ReadError::Empty => spsc_core::RecvError::Empty,
        ReadError::Lagged { .. } => spsc_core::RecvError::Corrupt {
            reason: "journal frames were removed by retention before this reader read them",
        },
        _ => spsc_core::RecvError::Corrupt {
            reason: "a journal page or frame was refused",
        },
    }
}

#[derive(Clone, Copy)]
enum Key {
    Seq(u64),
    Time(u64),
}

impl Key {
    /// Whether `frame` is at or after the key (the frame a seek stops at).
    fn reached(&self, frame: &RawFrame<'_>) -> bool {
        match *self {
            Self::Seq(seq) => frame.seq >= seq,
            Self::Time(time) => frame.time >= time,
        }
    }
}

/// Opens pages of one journal, checked against its identity.
struct Locator<'a> {
    folder: &'a Path,
    name: &'a str,
    journal_id: u64,
    page_size: u64,
    checksums: bool,
}

impl Locator<'_> {
    fn open(&self, number: u64) -> Result<PageMap, JournalError> {
        let expected = Expected {
            name: self.name,
            journal_id: Some(self.journal_id),
            page_size: Some(self.page_size),
            page_number: number,
        };
        PageMap::open(self.folder, number, &expected, false)
    }

    /// Opens `number`; a page removed meanwhile is reported as removed (at `seq`, if known).
    fn open_or_removed(&self, number: u64, seq: Option<u64>) -> Result<PageMap, JournalError> {
        match self.open(number) {
            Err(JournalError::Io { errno, .. }) if errno == rustix::io::Errno::NOENT => {
                let oldest = page::list_pages(self.folder)?
                    .first()
                    .and_then(|&n| self.open(n).ok())
                    .map_or(0, |p| p.view().header().first_seq.load(Ordering::Acquire));
                Err(JournalError::Removed {
                    folder: self.folder.to_path_buf(),
                    seq: seq.unwrap_or(0),
                    oldest,
                })
            }
            other => other,
        }
    }

    fn checks(&self) -> Checks {
        Checks {
            checksums: self.checksums,
            tolerate_torn_tail: false,
        }
    }

    /// The end of `page`'s chain (from its last index entry).
    fn walk_to_end(&self, page: &PageMap) -> Result<super::walk::Stop, JournalError> {
        let view = page.view();
        let (offset, seq) = self.index_start(&view, page, |_| true)?;
        walk(&view, page.path(), offset, seq, 0, self.checks(), |_| false)
    }

    /// The last index entry whose frame is before `before` (or the page's start), with its seq.
    fn index_start(
        &self,
        view: &PageView<'_>,
        page: &PageMap,
        before: impl Fn(&RawFrame<'_>) -> bool,
    ) -> Result<(usize, u64), JournalError> {
        let first_seq = view.header().first_seq.load(Ordering::Acquire);
        let offsets = index_offsets(view, page.info().index_stride, view.len());
        // Binary search: the index's frames are in order, so `before` is true on a prefix.
        let frame_at = |offset: usize| match view.slot(offset) {
            Ok(Slot::Frame(frame)) if frame.seq >= first_seq => Some(frame),
            _ => None,
        };
        let (mut lo, mut hi) = (0usize, offsets.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match frame_at(offsets[mid]) {
                Some(frame) if before(&frame) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        if lo == 0 {
            return Ok((PAGE_HEADER_SIZE, first_seq));
        }
        let offset = offsets[lo - 1];
        let seq = frame_at(offset).map_or(first_seq, |frame| frame.seq);
        Ok((offset, seq))
    }

    /// The first frame at or after `key`, from a binary search over pages `oldest..=newest`
    /// (`last` is `newest`, mapped), then over the page's index.
    fn find(
        &self,
        oldest: u64,
        newest: u64,
        last: PageMap,
        key: Key,
    ) -> Result<(PageMap, usize, u64, u64), JournalError> {
        // The page to search: the last one whose first frame is before the key.
        let first_frame_before = |page: &PageMap| -> bool {
            match page.view().slot(PAGE_HEADER_SIZE) {
                Ok(Slot::Frame(frame)) => !key.reached(&frame),
                _ => false,
            }
        };
        let oldest_page = self.open_or_removed(oldest, None)?;
        if !first_frame_before(&oldest_page) {
            if let Key::Seq(seq) = key {
                let first = oldest_page
                    .view()
                    .header()
                    .first_seq
                    .load(Ordering::Acquire);
                if seq < first {
                    return Err(JournalError::Removed {
                        folder: self.folder.to_path_buf(),
                        seq,
                        oldest: first,
                    });
                }
            }
            let seq = key_seq(&oldest_page);
            return Ok((oldest_page, PAGE_HEADER_SIZE, seq, 0));
        }
        let (mut lo, mut hi) = (oldest, newest); // invariant: page lo's first frame is before
        let mut chosen = oldest_page;
        let mut last = Some(last);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            let page = if mid == newest {
                match last.take() {
                    Some(page) => page,
                    None => self.open(mid)?,
                }
            } else {
                self.open_or_removed(mid, None)?
            };
            if first_frame_before(&page) {
                lo = mid;
                chosen = page;
            } else {
                hi = mid - 1;
            }
        }
        let view = chosen.view();
        let (offset, seq) = self.index_start(&view, &chosen, |frame| !key.reached(frame))?;
        let stop = walk(
            &view,
            chosen.path(),
            offset,
            seq,
            0,
            self.checks(),
            |frame| key.reached(frame),
        )?;
        match stop.at {
            StopAt::Chosen | StopAt::Empty => Ok((chosen, stop.offset, stop.seq, stop.last_time)),
            StopAt::End | StopAt::Torn => {
                // Everything in this page is before the key: the next page's first frame.
                let next = self.open(chosen.number() + 1)?;
                let seq = key_seq(&next);
                Ok((next, PAGE_HEADER_SIZE, seq, stop.last_time))
            }
        }
    }
}

/// The journal's page numbers, refused if one is missing between the oldest and the newest.
/// A listing made while retention removes old pages may miss one of them and still hold an
/// older one: a hole is listed again once before it is believed.
fn contiguous_pages(folder: &Path) -> Result<Vec<u64>, JournalError> {
    let mut pages = page::list_pages(folder)?;
    for again in [true, false] {
        let Some(hole) = pages.windows(2).find(|pair| pair[1] != pair[0] + 1) else {
            break;
        };
        if !again {
            return Err(JournalError::Discontinuous {
                folder: folder.to_path_buf(),
                what: format!(
                    "page {} is followed by page {}: pages in between are missing",
                    hole[0], hole[1]
                ),
            });
        }
        pages = page::list_pages(folder)?;
    }
    Ok(pages)
}

fn key_seq(page: &PageMap) -> u64 {
    page.view().header().first_seq.load(Ordering::Acquire)
}
