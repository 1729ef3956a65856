//! The one writer of a journal: exclusion by a file lock, recovery of the last complete frame,
//! frames written in place and published with one Release store, page switches, preparation of
//! the next page, retention.

use core::sync::atomic::{AtomicU32, Ordering};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{self, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::error::{AppendError, JournalError};
use super::layout::{
    frame_crc, frame_len, max_payload, Expected, FrameHeader, PageView, Slot, END_OF_PAGE,
    FLAG_CHECKSUMS, FRAME_HEADER_SIZE, PAGE_HEADER_SIZE, STATE_ACTIVE, STATE_PREPARED,
};
use super::options::{Durability, JournalOptions, PrepareNext, Retention};
use super::page::{self, io, PageMap};
use super::walk::{walk, Checks, StopAt};
use crate::name::SegmentName;

/// The name of the lock file in a journal's folder: held (`flock`, exclusive) by the writer for
/// its whole life, so the kernel releases it however the writer dies; it records the writer's pid.
pub const WRITER_LOCK_FILE: &str = "writer.lock";

/// What the writer counted (this process's view; not in the pages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Frames published by this writer.
    pub frames: u64,
    /// Pages this writer started.
    pub switches: u64,
    /// Switches that found no page made in advance and made one on the hot path.
    pub unprepared_switches: u64,
    /// Pages made by an `alloc` past the [`PrepareNext::Eager`] threshold.
    pub prepared_in_alloc: u64,
    /// Pages made by [`JournalWriter::maintain`] or [`JournalWriter::prepare_next_page`].
    pub prepared_off_path: u64,
    /// Pages removed by retention.
    pub pages_removed: u64,
    /// Readers woken from a futex sleep (wake calls made).
    pub wakes: u64,
    /// Blocking readers that died armed and whose arm [`JournalWriter::maintain`] took back
    /// (the writer had paid a fence per publication for each).
    pub dead_readers_disarmed: u64,
    /// Whether recovery dropped a frame torn by a power cut at the end of the last page (only
    /// with checksums).
    pub torn_tail_dropped: bool,
}

/// The writer of a journal (see the [module docs](super)).
///
/// One per journal across all processes: [`open`](Self::open) takes an exclusive `flock` on the
/// journal's lock file, which the kernel releases when the process dies, however it dies, so a
/// restarted writer takes over at once; a second writer while the first lives gets
/// [`JournalError::WriterActive`]. A child made by `fork` shares the lock (and must not write).
pub struct JournalWriter {
    folder: PathBuf,
    dir: OwnedFd,
    _lock: OwnedFd,
    name: SegmentName,
    journal_id: u64,
    options: JournalOptions,
    page_size: u64,
    flags: u32,
    page: PageMap,
    next: Option<PageMap>,
    wake: page::WakeMap,
    offset: usize,
    seq: u64,
    last_time: u64,
    /// The next index slot to fill.
    index_slot: usize,
    /// The offset where `index_slot`'s stride starts: a frame at or past it fills the index
    /// (one compare per frame; the division only once per stride).
    index_at: usize,
    stride: u32,
    /// The offset past which the next page is made ([`PrepareNext::Eager`]); `usize::MAX` for
    /// manual preparation or once made.
    prepare_at: usize,
    oldest_page: u64,
    max_payload: u32,
    stats: WriterStats,
    /// `now` of the last sweep of the wake file's reader table.
    last_sweep: u64,
    /// The sequence number this writer started at (its frame count is `seq - first_seq`).
    first_seq: u64,
    /// Whether `next` was pre-faulted.
    next_prefaulted: bool,
}

/// How often `maintain` sweeps the wake file for dead readers (by the `now` it is given).
const SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

impl JournalWriter {
    /// Opens journal `name` (validated like a segment name) in `options`' folder for writing,
    /// creating `<dir>/<name>/` and its first page if needed.
    ///
    /// On an existing journal it validates the newest pages (magic, version, identity, numbers,
    /// sizes), walks the last one to its last complete frame (checking every frame), and goes on
    /// at the next sequence number. A frame torn by a kill is never visible (its length word was
    /// never stored); one torn by a power cut is dropped if checksums show it, and
    /// [`WriterStats::torn_tail_dropped`] says so.
    ///
    /// # Errors
    /// [`JournalError::WriterActive`] while another live process writes the journal;
    /// `Name`/`Config` for bad arguments; `Page`/`Frame`/`Discontinuous` for a damaged journal
    /// (nothing is changed then); `Io` when a file cannot be made.
    ///
    /// Costs: a few dozen system calls (the lock, a listing, two mappings), and a walk of the
    /// last page's frames.
    pub fn open(name: &str, options: &JournalOptions) -> Result<Self, JournalError> {
        options.check()?;
        let name = SegmentName::new(name)?;
        let folder = options.dir.join(name.as_str());
        let dir_mode = options.mode | ((options.mode & 0o444) >> 2);
        let made = match fs::mkdir(&folder, Mode::from_raw_mode(dir_mode)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(errno) => return Err(io("creating the journal folder", &folder, errno)),
        };
        let dir = page::open_folder(&folder)?;
        if made {
            // mkdir applies the umask: a umask of 0o077 would leave the folder 0o700 and
            // other users unable to reach pages made 0o644. The mode is applied exactly, as
            // for pages (an existing folder is left as its owner set it).
            fs::fchmod(&dir, Mode::from_raw_mode(dir_mode))
                .map_err(|errno| io("setting the mode of", &folder, errno))?;
        }
        let lock = take_writer_lock(&folder, &dir, options.mode)?;
        page::remove_temp_files(&folder)?;
        let wake = page::WakeMap::create(&folder, &dir, options.mode)?;
        let pages = page::list_pages(&folder)?;
        check_contiguous(&folder, &pages)?;
        let flags = if options.checksums { FLAG_CHECKSUMS } else { 0 };
        let sync = options.durability == Durability::PowerLoss;
        let Some(&newest) = pages.last() else {
            let journal_id = random_id(&folder)?;
            let first = PageMap::create(
                &folder,
                &dir,
                0,
                name.as_str(),
                journal_id,
                options.page_size,
                flags,
                options.mode,
                sync,
                true,
            )?;
            first.view().header().first_seq.store(0, Ordering::Relaxed);
            first
                .view()
                .header()
                .state
                .store(STATE_ACTIVE, Ordering::Release);
            return Ok(Self::new(
                folder, dir, lock, name, journal_id, options, first, None, 0, 0, 0, 0, flags, wake,
            ));
        };
        let probe = Expected {
            name: name.as_str(),
            journal_id: None,
            page_size: None,
            page_number: newest,
        };
        let last = PageMap::open(&folder, newest, &probe, true)?;
        let info = *last.info();
        let expected = |page_number| Expected {
            name: name.as_str(),
            journal_id: Some(info.journal_id),
            page_size: Some(info.page_size),
            page_number,
        };
        let oldest = pages[0];
        let last_state = last.view().header().state.load(Ordering::Acquire);
        let (current, next) = if last_state == STATE_PREPARED {
            // Made in advance, never started: the writer died before switching to it. The page
            // before is the current one.
            let Some(previous) = newest.checked_sub(1).filter(|&p| p >= oldest) else {
                return Err(JournalError::Discontinuous {
                    folder,
                    what: format!("page {newest} was never started and no page precedes it"),
                });
            };
            let current = PageMap::open(&folder, previous, &expected(previous), true)?;
            (current, Some(last))
        } else {
            (last, None)
        };
        let header = current.view().header();
        if header.state.load(Ordering::Acquire) != STATE_ACTIVE {
            return Err(JournalError::Discontinuous {
                folder,
                what: format!(
                    "pages {} and {newest} were both never started",
                    current.number()
                ),
            });
        }
        let first_seq = header.first_seq.load(Ordering::Acquire);
        let checksums = info.checksums();
        let previous = if current.number() > oldest {
            Some(previous_end(
                &folder,
                current.number() - 1,
                &expected(current.number() - 1),
            )?)
        } else {
            None
        };
        let previous_time = previous.as_ref().map_or(0, |(_, end)| end.last_time);
        let end = walk(
            &current.view(),
            current.path(),
            PAGE_HEADER_SIZE,
            first_seq,
            previous_time,
            Checks {
                checksums,
                tolerate_torn_tail: true,
            },
            |_| false,
        )?;
        let mut torn = false;
        match end.at {
            StopAt::End => {
                return Err(JournalError::Discontinuous {
                    folder,
                    what: format!(
                        "page {} ends, but no page after it was started",
                        current.number()
                    ),
                })
            }
            StopAt::Torn => torn = true,
            StopAt::Empty | StopAt::Chosen => {}
        }
        if let Some((page, end)) = &previous {
            if end.at == StopAt::Empty {
                // A switch starts the next page, then ends the old one: a writer killed between
                // the two left the old page without its end word, and readers at its end would
                // wait there for ever. End it now (the current page was started, so nothing more
                // goes into the old one).
                page.view()
                    .len_word(end.offset)
                    .store(END_OF_PAGE, Ordering::Release);
                if sync {
                    page.sync_range(end.offset, 8)?;
                }
            }
        }
        let view = current.view();
        // A torn frame's garbage length word (power cut) goes; the publication of each frame
        // clears the word after it, so nothing else of an unpublished frame is ever read.
        view.len_word(end.offset).store(0, Ordering::Release);
        let mut writer = Self::new(
            folder,
            dir,
            lock,
            name,
            info.journal_id,
            options,
            current,
            next,
            end.offset,
            end.seq,
            end.last_time,
            oldest,
            info.flags,
            wake,
        );
        writer.page_size = info.page_size;
        writer.max_payload = max_payload(info.page_size);
        writer.stats.torn_tail_dropped = torn;
        writer.repair_index();
        if writer.next.is_some() {
            writer.prepare_at = usize::MAX;
        }
        Ok(writer)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        folder: PathBuf,
        dir: OwnedFd,
        lock: OwnedFd,
        name: SegmentName,
        journal_id: u64,
        options: &JournalOptions,
        page: PageMap,
        next: Option<PageMap>,
        offset: usize,
        seq: u64,
        last_time: u64,
        oldest_page: u64,
        flags: u32,
        wake: page::WakeMap,
    ) -> Self {
        let page_size = page.info().page_size;
        let stride = page.info().index_stride;
        let mut writer = Self {
            wake,
            folder,
            dir,
            _lock: lock,
            name,
            journal_id,
            options: options.clone(),
            page_size,
            flags,
            page,
            next,
            offset: offset.max(PAGE_HEADER_SIZE),
            seq,
            last_time,
            index_slot: 0,
            index_at: PAGE_HEADER_SIZE,
            stride,
            prepare_at: usize::MAX,
            oldest_page,
            max_payload: max_payload(page_size),
            stats: WriterStats::default(),
            last_sweep: 0,
            first_seq: seq,
            next_prefaulted: false,
        };
        writer.index_slot = (writer.offset - PAGE_HEADER_SIZE) / stride as usize;
        writer.sync_index_at();
        writer.set_prepare_threshold();
        writer
    }

    fn set_prepare_threshold(&mut self) {
        self.prepare_at = match self.options.prepare {
            PrepareNext::Eager { at_percent } if self.next.is_none() => {
                PAGE_HEADER_SIZE
                    + (self.page.len() - PAGE_HEADER_SIZE) * usize::from(at_percent) / 100
            }
            _ => usize::MAX,
        };
    }

    /// After recovery: index entries at or past the write offset are cleared (a power cut may
    /// have left junk there), and filling resumes at the slot of the write offset.
    fn repair_index(&mut self) {
        let header = self.page.view().header();
        let slot = (self.offset - PAGE_HEADER_SIZE) / self.stride as usize;
        self.index_slot = slot;
        for (i, entry) in header.index.iter().enumerate().skip(slot) {
            let value = entry.load(Ordering::Relaxed) as usize;
            if value == 0 {
                continue;
            }
            if i == slot && value < self.offset {
                self.index_slot = slot + 1;
                continue;
            }
            entry.store(0, Ordering::Release);
        }
        self.sync_index_at();
    }

    fn sync_index_at(&mut self) {
        self.index_at = PAGE_HEADER_SIZE + self.index_slot * self.stride as usize;
    }

    /// Reserves a frame of `len` payload bytes with type tag `tag` and timestamp `time` (your
    /// clock's nanoseconds; never less than the last frame's), contiguous and 8-byte aligned, in
    /// place in the page. Write it through [`JournalSlot::payload_mut`], then
    /// [`publish`](JournalSlot::publish); a slot dropped unpublished publishes nothing.
    ///
    /// # Errors
    /// [`AppendError::TooLarge`] for a payload larger than [`max_payload`](Self::max_payload);
    /// [`AppendError::TimeBackwards`]; [`AppendError::Page`] if the frame needs the next page
    /// and making it failed (nothing is lost: retry).
    ///
    /// Costs: a few compares and stores. When the frame does not fit the page: the switch to the
    /// next page (two stores, a wake call only if a reader sleeps), plus `open`, `ftruncate` and
    /// `mmap` if that page was not made in advance. Past the [`PrepareNext::Eager`] threshold,
    /// once per page: making the next page.
    #[inline]
    pub fn alloc(&mut self, len: u32, tag: u16, time: u64) -> Result<JournalSlot<'_>, AppendError> {
        if len > self.max_payload {
            return Err(AppendError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if time < self.last_time {
            return Err(AppendError::TimeBackwards {
                time,
                last: self.last_time,
            });
        }
        let need = frame_len(len) as usize;
        if self.offset + need + 8 > self.page.len() {
            self.switch_page()?;
        } else if self.offset >= self.prepare_at {
            self.prepare_at = usize::MAX;
            if self.make_next_page(false).is_ok() {
                self.stats.prepared_in_alloc += 1;
                // make_next_page counted it as made off the hot path; it was made here.
                self.stats.prepared_off_path -= 1;
            }
        }
        debug_assert!(self.offset + need + 8 <= self.page.len());
        Ok(JournalSlot {
            writer: self,
            len,
            tag,
            time,
        })
    }

    /// Appends a copy of `payload`: [`alloc`](Self::alloc), copy, publish.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub fn append(&mut self, tag: u16, time: u64, payload: &[u8]) -> Result<u64, AppendError> {
        let len = u32::try_from(payload.len()).map_err(|_| AppendError::TooLarge {
            len: u32::MAX,
            max: self.max_payload,
        })?;
        let mut slot = self.alloc(len, tag, time)?;
        slot.payload_mut().copy_from_slice(payload);
        Ok(slot.publish())
    }

    /// Inlined into the caller's loop (a call here cost the append rate about a tenth); the
    /// checksum, the wake call and `msync` are out of line.
    #[inline(always)]
    fn publish(&mut self, len: u32, tag: u16, time: u64) -> u64 {
        let offset = self.offset;
        let need = frame_len(len) as usize;
        let seq = self.seq;
        let crc = if self.flags & FLAG_CHECKSUMS != 0 {
            self.checksum(offset, len, seq, time, tag)
        } else {
            0
        };
        let frame = self.page.write_ptr(offset).cast::<FrameHeader>();
        // SAFETY: the frame's header lies inside the page, 8-aligned; no reader reads past a
        // length word it has not seen published, and this one is still 0 (cleared by the previous
        // publication or never written), so nobody reads these fields until the store below.
        unsafe {
            // Little-endian, as readers parse them (no-ops on the usual hosts).
            core::ptr::addr_of_mut!((*frame).payload_len).write(len.to_le());
            core::ptr::addr_of_mut!((*frame).seq).write(seq.to_le());
            core::ptr::addr_of_mut!((*frame).time).write(time.to_le());
            // `tag`, the reserved half-word and `crc` in one 8-byte store.
            core::ptr::addr_of_mut!((*frame).tag)
                .cast::<u64>()
                .write((u64::from(tag) | (u64::from(crc) << 32)).to_le());
        }
        debug_assert!(offset.is_multiple_of(8) && offset + need + 8 <= self.page.len());
        // SAFETY: both length words lie inside the page, 8-aligned (alloc's check, asserted in
        // debug builds); an AtomicU32 is valid for any bits, and every access to a length word
        // is atomic.
        let (next_word, this_word) = unsafe {
            (
                &*self.page.write_ptr(offset + need).cast::<AtomicU32>(),
                &*self.page.write_ptr(offset).cast::<AtomicU32>(),
            )
        };
        // The next frame's length word: 0, before this frame becomes visible (a writer before a
        // restart may have left bytes of an unpublished frame there). It always fits: alloc
        // leaves 8 bytes behind every frame.
        next_word.store(0, Ordering::Relaxed);
        this_word.store(need as u32, Ordering::Release);
        if offset >= self.index_at {
            self.fill_index(offset);
        }
        if self.wake.cell().notify() {
            self.stats.wakes += 1;
        }
        if self.options.durability == Durability::PowerLoss {
            self.sync_frame(offset, need);
        }
        self.offset = offset + need;
        self.seq = seq + 1;
        self.last_time = time;
        seq
    }

    #[inline(never)]
    fn checksum(&self, offset: usize, len: u32, seq: u64, time: u64, tag: u16) -> u32 {
        // SAFETY: the payload lies inside the page (alloc's check) and is ours until published.
        let payload = unsafe {
            core::slice::from_raw_parts(
                self.page.write_ptr(offset + FRAME_HEADER_SIZE),
                len as usize,
            )
        };
        frame_crc(len, seq, time, tag, payload)
    }

    #[cold]
    #[inline(never)]
    fn sync_frame(&self, offset: usize, need: usize) {
        // An error cannot be reported without un-publishing; it shows in the next `maintain`
        // call's sync of the page instead.
        let _ = self.page.sync_range(offset, need + 8);
    }

    /// The frame at `offset` is the first in its stride: the index points at it.
    #[cold]
    #[inline(never)]
    fn fill_index(&mut self, offset: usize) {
        let slot = (offset - PAGE_HEADER_SIZE) / self.stride as usize;
        if let Some(entry) = self.page.view().header().index.get(slot) {
            entry.store(offset as u32, Ordering::Release);
        }
        self.index_slot = slot + 1;
        self.sync_index_at();
    }

    #[cold]
    #[inline(never)]
    fn switch_page(&mut self) -> Result<(), AppendError> {
        if self.next.is_none() {
            self.make_next_page(false).map_err(AppendError::Page)?;
            self.stats.unprepared_switches += 1;
            // make_next_page counted it as made off the hot path; it was not.
            self.stats.prepared_off_path -= 1;
        }
        let Some(next) = self.next.take() else {
            unreachable!("the next page was just made");
        };
        let sync = self.options.durability == Durability::PowerLoss;
        let header = next.view().header();
        header.first_seq.store(self.seq, Ordering::Relaxed);
        header.state.store(STATE_ACTIVE, Ordering::Release);
        if sync {
            let _ = next.sync_range(0, PAGE_HEADER_SIZE);
        }
        let view = self.page.view();
        view.len_word(self.offset)
            .store(END_OF_PAGE, Ordering::Release);
        if self.wake.cell().notify() {
            self.stats.wakes += 1;
        }
        if sync {
            let _ = self.page.sync_range(self.offset, 8);
        }
        self.page = next;
        self.offset = PAGE_HEADER_SIZE;
        self.index_slot = 0;
        self.sync_index_at();
        self.stats.switches += 1;
        self.set_prepare_threshold();
        Ok(())
    }

    /// Makes the next page now, if it is not made yet: call it off the hot path so that the
    /// switch never pays for it ([`maintain`](Self::maintain) calls it too).
    ///
    /// # Errors
    /// [`JournalError::Io`] if the file cannot be made.
    pub fn prepare_next_page(&mut self) -> Result<(), JournalError> {
        self.make_next_page(true)
    }

    /// Makes the next page; `prefault` (off the hot path only) also writes one zero into each
    /// of its 4 KiB pages, so the appends that fill it take no page fault.
    fn make_next_page(&mut self, prefault: bool) -> Result<(), JournalError> {
        if self.next.is_some() {
            return Ok(());
        }
        let number = self.page.number() + 1;
        let page = PageMap::create(
            &self.folder,
            &self.dir,
            number,
            self.name.as_str(),
            self.journal_id,
            self.page_size,
            self.flags,
            self.options.mode,
            self.options.durability == Durability::PowerLoss,
            prefault,
        )?;
        self.next = Some(page);
        self.next_prefaulted = prefault;
        self.prepare_at = usize::MAX;
        self.stats.prepared_off_path += 1;
        Ok(())
    }

    /// The housekeeping to call off the hot path (between bursts, or every millisecond): makes
    /// the next page if needed and pre-faults it (one write per 4 KiB page, so the appends that
    /// fill it take no page fault: about 4,000 faults for a 16 MiB page, a few milliseconds,
    /// here rather than spread over the hot path), applies the retention policy against `now` (the clock the
    /// frames' timestamps come from, in nanoseconds), and once a second sweeps the wake file for
    /// blocking readers that died armed (their arm made this writer fence on every publication;
    /// [`WriterStats::dead_readers_disarmed`]). Returns the number of pages removed.
    ///
    /// # Errors
    /// [`JournalError::Io`] if a page cannot be made or removed; a damaged old page met while
    /// applying [`Retention::KeepFor`].
    pub fn maintain(&mut self, now: u64) -> Result<u64, JournalError> {
        match &self.next {
            // Made in an alloc (PrepareNext::Eager) without its faults: take them here.
            Some(next) if !self.next_prefaulted => next.prefault_unstarted(),
            Some(_) => {}
            None => self.make_next_page(true)?,
        }
        self.next_prefaulted = true;
        if now.saturating_sub(self.last_sweep) >= SWEEP_INTERVAL_NS || now < self.last_sweep {
            self.last_sweep = now;
            self.stats.dead_readers_disarmed += u64::from(self.wake.sweep());
        }
        if self.options.durability == Durability::PowerLoss {
            self.page
                .sync_range(PAGE_HEADER_SIZE, self.offset + 8 - PAGE_HEADER_SIZE)?;
        }
        self.apply_retention(now)
    }

    fn apply_retention(&mut self, now: u64) -> Result<u64, JournalError> {
        let current = self.page.number();
        let mut removed = 0;
        while self.oldest_page < current {
            let remove = match self.options.retention {
                Retention::KeepAll => false,
                Retention::KeepPages(keep) => current - self.oldest_page + 1 > keep,
                Retention::KeepFor(span) => {
                    let cutoff = now.saturating_sub(nanos(span));
                    // Every frame of the oldest page is at most as old as the next page's first.
                    match self.first_time_of(self.oldest_page + 1)? {
                        Some(first) => first <= cutoff,
                        None => false,
                    }
                }
            };
            if !remove {
                break;
            }
            let name = page::page_file_name(self.oldest_page);
            match fs::unlinkat(&self.dir, name.as_str(), fs::AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(errno) => {
                    return Err(io("removing", &self.folder.join(name), errno));
                }
            }
            self.oldest_page += 1;
            removed += 1;
            self.stats.pages_removed += 1;
        }
        Ok(removed)
    }

    /// The first frame's timestamp of page `number` (the current page's read from our mapping).
    fn first_time_of(&self, number: u64) -> Result<Option<u64>, JournalError> {
        let read = |view: PageView<'_>| match view.slot(PAGE_HEADER_SIZE) {
            Ok(Slot::Frame(frame)) => Some(frame.time),
            _ => None,
        };
        if number == self.page.number() {
            return Ok(read(self.page.view()));
        }
        let page = PageMap::open(&self.folder, number, &self.expected(number), false)?;
        Ok(read(page.view()))
    }

    fn expected(&self, page_number: u64) -> Expected<'_> {
        Expected {
            name: self.name.as_str(),
            journal_id: Some(self.journal_id),
            page_size: Some(self.page_size),
            page_number,
        }
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// The last frame's timestamp (0 for an empty journal).
    pub fn last_time(&self) -> u64 {
        self.last_time
    }

    /// The largest payload a frame can have.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// The page being written.
    pub fn current_page(&self) -> u64 {
        self.page.number()
    }

    /// The oldest page kept.
    pub fn oldest_page(&self) -> u64 {
        self.oldest_page
    }

    /// Whether the next page is made.
    pub fn next_page_ready(&self) -> bool {
        self.next.is_some()
    }

    /// The journal's folder (`<dir>/<name>`).
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The journal's random identity, in every page.
    pub fn journal_id(&self) -> u64 {
        self.journal_id
    }

    /// The journal's wake words: readers armed to block (each costs this writer a fence per
    /// publication), sleeps announced, wake calls made (by every writer of the journal so far).
    pub fn wake_stats(&self) -> super::wait::WakeStats {
        self.wake.cell().stats()
    }

    /// What this writer counted.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            frames: self.seq - self.first_seq,
            ..self.stats
        }
    }
}

impl core::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("folder", &self.folder)
            .field("page", &self.page.number())
            .field("offset", &self.offset)
            .field("next_seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// A frame reserved by [`JournalWriter::alloc`]: write the payload, then publish.
pub struct JournalSlot<'w> {
    writer: &'w mut JournalWriter,
    len: u32,
    tag: u16,
    time: u64,
}

impl JournalSlot<'_> {
    /// The payload, in place in the page (its old bytes are unspecified: write all of them).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self
            .writer
            .page
            .write_ptr(self.writer.offset + FRAME_HEADER_SIZE);
        // SAFETY: `len` bytes from there lie inside the page (alloc's check); nobody else writes
        // them, and no reader reads them before the frame is published (after this borrow ends).
        unsafe { core::slice::from_raw_parts_mut(at, self.len as usize) }
    }

    /// Publishes the frame (one Release store; a wake call only if a reader sleeps; an `msync`
    /// with [`Durability::PowerLoss`]). Returns its sequence number.
    #[inline]
    pub fn publish(self) -> u64 {
        self.writer.publish(self.len, self.tag, self.time)
    }

    /// The sequence number the frame will have.
    pub fn seq(&self) -> u64 {
        self.writer.seq
    }
}

impl spsc_core::SendSlot for JournalSlot<'_> {
    fn payload_mut(&mut self) -> &mut [u8] {
        JournalSlot::payload_mut(self)
    }

    fn tag(&self) -> u16 {
        self.tag
    }

    fn push(self) {
        let _ = self.publish();
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn take_writer_lock(folder: &Path, dir: &OwnedFd, mode: u32) -> Result<OwnedFd, JournalError> {
    let path = folder.join(WRITER_LOCK_FILE);
    let file = fs::openat(
        dir,
        WRITER_LOCK_FILE,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )
    .map_err(|errno| io("opening the writer lock", &path, errno))?;
    match fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            let mut record = [0u8; 32];
            let read = rustix::io::pread(&file, &mut record, 0).unwrap_or(0);
            let pid = core::str::from_utf8(&record[..read])
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            return Err(JournalError::WriterActive {
                folder: folder.to_path_buf(),
                pid,
            });
        }
        Err(errno) => return Err(io("locking", &path, errno)),
    }
    let record = format!(
        "{} {}\n",
        crate::pid::current_pid(),
        crate::pid::current_start_time()
    );
    let _ = fs::ftruncate(&file, 0);
    rustix::io::pwrite(&file, record.as_bytes(), 0)
        .map_err(|errno| io("recording the writer in", &path, errno))?;
    Ok(file)
}

fn check_contiguous(folder: &Path, pages: &[u64]) -> Result<(), JournalError> {
    for pair in pages.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(JournalError::Discontinuous {
                folder: folder.to_path_buf(),
                what: format!(
                    "page {} is followed by page {}: pages in between are missing",
                    pair[0], pair[1]
                ),
            });
        }
    }
    Ok(())
}

/// Where the chain of page `number` (the one before the current page) ends, with its last
/// frame's timestamp (0 if it has none); the page mapped writable, to end it if it must be.
fn previous_end(
    folder: &Path,
    number: u64,
    expected: &Expected<'_>,
) -> Result<(PageMap, super::walk::Stop), JournalError> {
    let page = PageMap::open(folder, number, expected, true)?;
    let header = page.view().header();
    let end = walk(
        &page.view(),
        page.path(),
        PAGE_HEADER_SIZE,
        header.first_seq.load(Ordering::Acquire),
        0,
        Checks {
            checksums: page.info().checksums(),
            tolerate_torn_tail: false,
        },
        |_| false,
    )?;
    Ok((page, end))
}

fn random_id(folder: &Path) -> Result<u64, JournalError> {
    let mut bytes = [0u8; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map_err(|errno| io("drawing a journal id for", folder, errno))?;
    Ok(u64::from_ne_bytes(bytes).max(1))
}
