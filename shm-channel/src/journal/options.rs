//! How a journal is kept: where, page size, file mode, retention, durability, checksums, and
//! when the next page is made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::JournalError;
use super::layout::{MAX_PAGE_SIZE, MIN_PAGE_SIZE};

/// Which old pages the writer removes when [`JournalWriter::maintain`](super::JournalWriter::maintain)
/// runs (only then: never on the hot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    /// Keep every page (a recorder). The default.
    #[default]
    KeepAll,
    /// Keep this many pages, the one being written included (at least 1).
    KeepPages(u64),
    /// Keep pages holding a frame younger than this, by the frames' timestamps against the
    /// `now` given to `maintain` (the page being written is always kept).
    KeepFor(Duration),
}

/// What a published frame survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// A crash of the writer process: pages are shared file mappings, so the kernel keeps every
    /// published byte whatever happens to the process. No system call per frame. The default.
    #[default]
    ProcessCrash,
    /// A power cut too: every publication is followed by `msync(MS_SYNC)` of the frame's pages,
    /// every new page by an `fsync` of it and of the folder. Costs a disk flush per frame
    /// (BENCHMARKS.md). Combine with [`JournalOptions::checksums`] so that readers of pages that
    /// went through a power cut tell a torn frame from a good one.
    PowerLoss,
}

/// When the writer makes the next page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareNext {
    /// Only in [`maintain`](super::JournalWriter::maintain) (call it off the hot path, often
    /// enough that a page never fills between two calls). A switch that finds no page made
    /// makes one on the spot, and counts it in
    /// [`WriterStats::unprepared_switches`](super::WriterStats::unprepared_switches).
    Manual,
    /// Also in the `alloc` that first finds the page filled past this percentage (1–99): that
    /// one `alloc` pays for `open`, `ftruncate` and `mmap`, counted in
    /// [`WriterStats::prepared_in_alloc`](super::WriterStats::prepared_in_alloc). The default,
    /// at 50.
    Eager {
        /// Fill percentage (1–99).
        at_percent: u8,
    },
}

impl Default for PrepareNext {
    fn default() -> Self {
        Self::Eager { at_percent: 50 }
    }
}

/// The folder pages live in when none is given: tmpfs, for speed (pages are gone at reboot).
pub const DEFAULT_JOURNAL_DIR: &str = "/dev/shm";

/// How a journal is opened for writing (and where readers look for it).
#[derive(Clone, Debug)]
pub struct JournalOptions {
    pub(crate) dir: PathBuf,
    pub(crate) page_size: u64,
    pub(crate) mode: u32,
    pub(crate) retention: Retention,
    pub(crate) durability: Durability,
    pub(crate) checksums: bool,
    pub(crate) prepare: PrepareNext,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl JournalOptions {
    /// Defaults: `/dev/shm`, 16 MiB pages, owner-only files (0o600), keep every page, process
    /// crash durability, no checksums, the next page made at half the current one.
    pub fn new() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_JOURNAL_DIR),
            page_size: 16 << 20,
            mode: 0o600,
            retention: Retention::KeepAll,
            durability: Durability::ProcessCrash,
            checksums: false,
            prepare: PrepareNext::default(),
        }
    }

    /// The folder holding the journal's folder (`<dir>/<name>/`): `/dev/shm` for speed, a disk
    /// folder to keep the pages.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Page size in bytes: a multiple of 4096 from 64 KiB to 2 GiB. A frame's payload is at most
    /// the page size less 4,136 bytes. Every page of a journal has the size its first page got.
    pub fn page_size(mut self, bytes: u64) -> Self {
        self.page_size = bytes;
        self
    }

    /// Permission bits of the pages and lock file (the folder gets the matching execute bits):
    /// 0o600 by default; 0o640 or 0o644 lets other users read (they can never write: readers
    /// map read-only and open files read-only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Which old pages to remove.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Process-crash (default) or power-loss durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether new pages carry a CRC32C per frame (about 20 ns per 64-byte frame to compute and
    /// to check). Pages keep the choice they were made with.
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// When the next page is made.
    pub fn prepare_next(mut self, prepare: PrepareNext) -> Self {
        self.prepare = prepare;
        self
    }

    /// The folder given.
    pub fn folder(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn check(&self) -> Result<(), JournalError> {
        let config = |reason: String| Err(JournalError::Config { reason });
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&self.page_size)
            || !self.page_size.is_multiple_of(4096)
        {
            return config(format!(
                "page size {} is not a multiple of 4096 between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        if let Retention::KeepPages(0) = self.retention {
            return config(
                "Retention::KeepPages(0): the page being written is always kept, so at least 1"
                    .into(),
            );
        }
        if let PrepareNext::Eager { at_percent } = self.prepare {
            if !(1..=99).contains(&at_percent) {
                return config(format!(
                    "PrepareNext::Eager at {at_percent}%: the threshold is a percentage from 1 to 99"
                ));
            }
        }
        if self.mode & 0o600 != 0o600 {
            return config(format!(
                "mode {:#o} does not let the owner read and write its pages",
                self.mode
            ));
        }
        Ok(())
    }
}
