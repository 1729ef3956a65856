//! A persistent journal: one writer appends timestamped frames to memory-mapped page files; any
//! number of readers, in any processes, read them at their own pace, live or replayed later.
//!
//! - **One writer, no daemon.** [`JournalWriter::open`] takes an exclusive `flock` on the
//!   journal's `writer.lock`: a second writer gets [`JournalError::WriterActive`] (with the
//!   holder's pid) while the first lives, and the kernel releases the lock however the writer
//!   dies, so a restarted writer takes over at once. It finds the last complete frame and goes on
//!   at the next sequence number.
//! - **Frames in place.** [`JournalWriter::alloc`] reserves a frame in the page (sequence number,
//!   payload length, tag, the caller's nanosecond timestamp, payload 8-byte aligned);
//!   [`JournalSlot::publish`] makes it visible with one Release store of its length word, which
//!   readers Acquire. A writer killed mid-frame never stored that word: no reader ever sees a
//!   torn frame, and the restarted writer writes over it.
//! - **Pages.** Fixed-size files `<dir>/<name>/<number>.page` (20 digits), `/dev/shm` by default
//!   or any folder. A frame that does not fit makes the writer mark the page's end and go on in
//!   the next page, which is made beforehand, off the hot path: by
//!   [`JournalWriter::maintain`] / [`JournalWriter::prepare_next_page`], or eagerly past a
//!   fill threshold ([`PrepareNext`]). A switch that finds no page ready makes one (counted in
//!   [`WriterStats::unprepared_switches`]). A page is made under a temporary name and renamed
//!   once its header is whole, so a reader never sees half a header.
//! - **Readers.** [`JournalReader::open`] from the oldest frame, a sequence number, a time (binary
//!   searches over pages and over each page's 512-entry index, then a short walk), or live from
//!   the end ([`ReadFrom`]). Readers open and map pages read-only. A named reader keeps its
//!   position in a file of its own ([`ReaderOptions::position_file`]) and resumes after a restart
//!   exactly after its last [`pop`](JournalReader::pop).
//! - **Merge.** [`MergedReader`] reads several journals in timestamp order.
//! - **Waiting.** [`JournalReader::wait`] busy-polls, yields, or sleeps on a futex in the
//!   journal's wake file ([`WAKE_FILE`]: readers never write a page, so the words they announce
//!   themselves in live there); the writer makes the wake call only when a reader sleeps
//!   ([`wait`] module). A reader that may not write the wake file (another user, mode 0o644
//!   pages) sleeps in short polls instead.
//! - **Retention.** Old pages are removed by [`Retention`] (a page count or a time span) in
//!   [`JournalWriter::maintain`]. A reader whose next frame was removed gets
//!   [`ReadError::Lagged`] (how many it missed, where it resumes) and goes on from the oldest.
//! - **Validation.** Every page header is checked before use (magic, version, the journal's name
//!   and random id, page number, sizes, index geometry), and every frame as it is read (length,
//!   sequence, time order, checksum if on): a wrong, truncated or foreign file is a typed error.
//! - **Durability.** Process crash by default (the page cache keeps a killed writer's frames);
//!   [`Durability::PowerLoss`] adds an `msync` per frame, and [`JournalOptions::checksums`] a
//!   CRC32C per frame, so a reader of pages that went through a power cut tells a torn frame.
//!
//! ```
//! use shm_channel::journal::{JournalOptions, JournalReader, JournalWriter, ReadFrom, ReaderOptions};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let options = JournalOptions::new().dir(dir.path()).page_size(1 << 20);
//! let mut writer = JournalWriter::open("quotes", &options)?;
//!
//! // Write in place, then publish; `now` is the caller's clock.
//! let now = 1_000;
//! let mut slot = writer.alloc(8, 7, now)?;
//! slot.payload_mut().copy_from_slice(&42u64.to_le_bytes());
//! assert_eq!(slot.publish(), 0); // its sequence number
//! writer.append(7, now + 5, &43u64.to_le_bytes())?;
//!
//! // Any number of readers, each at its own position (normally in other processes).
//! let mut reader = JournalReader::open("quotes", &ReaderOptions::new().dir(dir.path()), ReadFrom::Oldest)?;
//! let frame = reader.front()?;
//! assert_eq!((frame.seq(), frame.time(), frame.tag()), (0, 1_000, 7));
//! assert_eq!(frame.payload(), 42u64.to_le_bytes());
//! reader.pop()?;
//!
//! // Seek by time.
//! let mut later = JournalReader::open("quotes", &ReaderOptions::new().dir(dir.path()), ReadFrom::Time(1_001))?;
//! assert_eq!(later.front()?.seq(), 1);
//!
//! writer.maintain(now)?; // off the hot path: next page, retention
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A journal's folder should be written by one user; other users may read it if
//! [`JournalOptions::mode`] lets them. A page truncated behind a reader's back by some other
//! program makes the reader's next access fault (`SIGBUS`), as with any shared mapping; the
//! writer never truncates a page.

#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
mod merge;
#[cfg(not(loom))]
mod options;
#[cfg(not(loom))]
mod page;
#[cfg(not(loom))]
mod position;
#[cfg(not(loom))]
mod reader;
pub mod wait;
#[cfg(not(loom))]
mod walk;
#[cfg(not(loom))]
mod writer;

#[cfg(not(loom))]
pub use error::{AppendError, JournalError, ReadError};
#[cfg(not(loom))]
pub use layout::{FrameFault, PageFault};
#[cfg(not(loom))]
pub use merge::MergedReader;
#[cfg(not(loom))]
pub use options::{Durability, JournalOptions, PrepareNext, Retention, DEFAULT_JOURNAL_DIR};
#[cfg(not(loom))]
pub use reader::{JournalFrame, JournalReader, ReadFrom, ReaderOptions};
#[cfg(not(loom))]
pub use writer::{JournalSlot, JournalWriter, WriterStats, WRITER_LOCK_FILE};

/// The name of the wake file in a journal's folder: the words blocking readers announce
/// themselves in and sleep on (the writer makes it, writable by whoever may read the pages).
pub const WAKE_FILE: &str = "readers.wake";
