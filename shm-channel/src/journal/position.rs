//! A reader's persisted position: a small file of the reader's own (never in the journal),
//! mapped, holding the next sequence number to read.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::path::{Path, PathBuf};

use rustix::fs::{self, Mode, OFlags};
use rustix::mm::{self, MapFlags, ProtFlags};

use super::error::JournalError;
use super::page::io;

const POSITION_MAGIC: [u8; 8] = *b"SPSCJPOS";
const POSITION_VERSION: u64 = 1;
const POSITION_SIZE: usize = 64;

/// Layout: magic @0, version @8, journal id @16, next seq @24 (the one word that changes), and
/// a check word @32 (`!journal_id`, so a file of zeros or of another format is refused).
#[repr(C)]
struct PositionRecord {
    magic: u64,
    version: u64,
    journal_id: u64,
    next_seq: AtomicU64,
    check: u64,
    _reserved: [u64; 3],
}

static_assertions::const_assert_eq!(core::mem::size_of::<PositionRecord>(), POSITION_SIZE);

/// An open position file.
pub(crate) struct PositionFile {
    base: NonNull<PositionRecord>,
    path: PathBuf,
}

// SAFETY: the mapping is owned by this value; the only changing word is an atomic.
unsafe impl Send for PositionFile {}
// SAFETY: as above.
unsafe impl Sync for PositionFile {}

impl PositionFile {
    /// Opens the file at `path` if it exists (`None` if not), checking its format.
    pub(crate) fn open_existing(path: &Path) -> Result<Option<Self>, JournalError> {
        let file = match fs::open(
            path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(file) => file,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(errno) => return Err(io("opening the position file", path, errno)),
        };
        let stat = fs::fstat(&file).map_err(|errno| io("inspecting", path, errno))?;
        if stat.st_size != POSITION_SIZE as i64 {
            return Err(JournalError::Position {
                path: path.to_path_buf(),
                reason: format!(
                    "it is {} bytes long, not {POSITION_SIZE}: not a reader position file",
                    stat.st_size
                ),
            });
        }
        let position = Self::map(&file, path)?;
        let record = position.record();
        if record.magic.to_ne_bytes() != POSITION_MAGIC
            || record.version != POSITION_VERSION
            || record.check != !record.journal_id
        {
            return Err(JournalError::Position {
                path: path.to_path_buf(),
                reason:
                    "its header is not a reader position's (magic, version or check word differ)"
                        .into(),
            });
        }
        Ok(Some(position))
    }

    /// Creates the file at `path` for journal `journal_id`, at `next_seq`: written under a
    /// temporary name, then renamed, so a crash never leaves a half-written position.
    pub(crate) fn create(
        path: &Path,
        journal_id: u64,
        next_seq: u64,
    ) -> Result<Self, JournalError> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let _ = std::fs::remove_file(&temp);
        let file = fs::open(
            &temp,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|errno| io("creating the position file", &temp, errno))?;
        let mut bytes = [0u8; POSITION_SIZE];
        bytes[0..8].copy_from_slice(&POSITION_MAGIC);
        bytes[8..16].copy_from_slice(&POSITION_VERSION.to_ne_bytes());
        bytes[16..24].copy_from_slice(&journal_id.to_ne_bytes());
        bytes[24..32].copy_from_slice(&next_seq.to_ne_bytes());
        bytes[32..40].copy_from_slice(&(!journal_id).to_ne_bytes());
        rustix::io::pwrite(&file, &bytes, 0).map_err(|errno| io("writing", &temp, errno))?;
        fs::rename(&temp, path).map_err(|errno| io("naming", path, errno))?;
        let mut position = Self::map(&file, path)?;
        position.path = path.to_path_buf();
        Ok(position)
    }

    fn map(file: &std::os::fd::OwnedFd, path: &Path) -> Result<Self, JournalError> {
        // SAFETY: a fresh shared mapping of the 64-byte file, at the kernel's choice of address.
        let ptr = unsafe {
            mm::mmap(
                core::ptr::null_mut(),
                POSITION_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file,
                0,
            )
        }
        .map_err(|errno| io("mapping", path, errno))?;
        let base = NonNull::new(ptr.cast::<PositionRecord>())
            .ok_or_else(|| io("mapping", path, rustix::io::Errno::NOMEM))?;
        Ok(Self {
            base,
            path: path.to_path_buf(),
        })
    }

    fn record(&self) -> &PositionRecord {
        // SAFETY: a live, page-aligned mapping of a whole record; every field is an integer.
        unsafe { self.base.as_ref() }
    }

    /// Refuses a position of another journal.
    pub(crate) fn check_journal(&self, journal_id: u64) -> Result<(), JournalError> {
        let recorded = self.record().journal_id;
        if recorded == journal_id {
            return Ok(());
        }
        Err(JournalError::Position {
            path: self.path.clone(),
            reason: format!(
                "it records a position in journal {recorded:#018x}, but this journal is {journal_id:#018x} (remade since?): remove the file to start afresh"
            ),
        })
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.record().next_seq.load(Ordering::Relaxed)
    }

    /// Records `next_seq` (one store into the mapping).
    #[inline]
    pub(crate) fn store(&self, next_seq: u64) {
        self.record().next_seq.store(next_seq, Ordering::Relaxed);
    }
}

impl Drop for PositionFile {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), POSITION_SIZE) };
    }
}
