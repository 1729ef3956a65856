//! Page files: their names, making one (under a temporary name, renamed into place once its
//! header is whole), mapping one read-only or read-write, and listing a journal's pages.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};

use super::error::JournalError;
use super::layout::{
    index_stride, Expected, PageFault, PageHeader, PageInfo, PageView, INDEX_SLOTS,
    PAGE_HEADER_SIZE, PAGE_MAGIC, PAGE_VERSION, STATE_PREPARED,
};

/// The file name of page `number`: 20 decimal digits, so names sort as numbers do.
pub(crate) fn page_file_name(number: u64) -> String {
    format!("{number:020}.page")
}

/// The page number a file name gives, if it is a page's name.
pub(crate) fn parse_page_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".page")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Sets `path` to page `number`'s path in `folder`, in its own buffer: no allocation once the
/// buffer has held such a path (page file names all have the same length).
pub(crate) fn set_page_path(path: &mut PathBuf, folder: &Path, number: u64) {
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    let mut name = [0u8; 25];
    let mut at = &mut name[..];
    // 20 digits and ".page" always fit the 25 bytes.
    let _ = write!(at, "{number:020}.page");
    let len = 25 - at.len();
    path.as_mut_os_string().clear();
    path.push(folder);
    path.push(std::ffi::OsStr::from_bytes(&name[..len]));
}

fn temp_file_name(number: u64) -> String {
    format!(".{number:020}.page.tmp")
}

pub(crate) fn io(op: &'static str, path: &Path, errno: Errno) -> JournalError {
    JournalError::Io {
        op,
        path: path.to_path_buf(),
        errno,
    }
}

/// Opens a journal folder (for `openat` and listing).
pub(crate) fn open_folder(folder: &Path) -> Result<OwnedFd, JournalError> {
    fs::open(
        folder,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| io("opening the journal folder", folder, errno))
}

/// The page numbers in `folder`, ascending. Other files are ignored.
pub(crate) fn list_pages(folder: &Path) -> Result<Vec<u64>, JournalError> {
    let entries = std::fs::read_dir(folder).map_err(|e| io("listing", folder, errno_of(&e)))?;
    let mut pages = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io("listing", folder, errno_of(&e)))?;
        if let Some(number) = entry.file_name().to_str().and_then(parse_page_file_name) {
            pages.push(number);
        }
    }
    pages.sort_unstable();
    Ok(pages)
}

/// Removes temporary files a writer that died while making a page left.
pub(crate) fn remove_temp_files(folder: &Path) -> Result<(), JournalError> {
    let entries = std::fs::read_dir(folder).map_err(|e| io("listing", folder, errno_of(&e)))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|name| name.starts_with('.') && name.ends_with(".page.tmp"))
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| io("removing", &path, errno_of(&e)))?;
        }
    }
    Ok(())
}

pub(crate) fn errno_of(error: &std::io::Error) -> Errno {
    Errno::from_io_error(error).unwrap_or(Errno::IO)
}

/// A mapped page file.
pub(crate) struct PageMap {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
    number: u64,
    path: PathBuf,
    info: PageInfo,
}

// SAFETY: the mapping is process-wide memory; `PageMap` hands out only a `PageView` (atomics and
// published frames) and, to the one writer, raw pointers used under the journal's discipline.
unsafe impl Send for PageMap {}
// SAFETY: as above; shared references give only read access through atomics and published bytes.
unsafe impl Sync for PageMap {}

impl PageMap {
    /// Opens and validates page `number` of the journal in `folder`.
    pub(crate) fn open(
        folder: &Path,
        number: u64,
        expected: &Expected<'_>,
        writable: bool,
    ) -> Result<Self, JournalError> {
        Self::open_at(
            folder.join(page_file_name(number)),
            number,
            expected,
            writable,
        )
    }

    /// As [`open`](Self::open), the page's path given (a reader crossing pages passes the path
    /// buffer of the page it leaves, set by [`set_page_path`], so the crossing allocates
    /// nothing).
    pub(crate) fn open_at(
        path: PathBuf,
        number: u64,
        expected: &Expected<'_>,
        writable: bool,
    ) -> Result<Self, JournalError> {
        let flags = if writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let file = fs::open(
            &path,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|errno| io("opening", &path, errno))?;
        let stat = fs::fstat(&file).map_err(|errno| io("inspecting", &path, errno))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(JournalError::Page {
                path,
                fault: PageFault::BadField {
                    field: "file type (not a regular file)",
                    value: u64::from(stat.st_mode),
                },
            });
        }
        let len = u64::try_from(stat.st_size).unwrap_or(0);
        if len < PAGE_HEADER_SIZE as u64 {
            return Err(JournalError::Page {
                path,
                fault: PageFault::Truncated {
                    len,
                    required: super::layout::MIN_PAGE_SIZE,
                },
            });
        }
        let (base, len) = map(&file, len, writable, &path)?;
        let mut page = Self {
            base,
            len,
            writable,
            number,
            path,
            info: PageInfo {
                page_size: 0,
                page_number: number,
                journal_id: 0,
                flags: 0,
                index_stride: 0,
            },
        };
        page.info =
            PageInfo::validate(&page.view(), expected).map_err(|fault| JournalError::Page {
                path: page.path.clone(),
                fault,
            })?;
        Ok(page)
    }

    /// Makes page `number` in `folder`: a file under a temporary name, sized, its header written
    /// (magic last), then renamed into place. Never replaces an existing page.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        folder: &Path,
        dir: &OwnedFd,
        number: u64,
        name: &str,
        journal_id: u64,
        page_size: u64,
        flags: u32,
        mode: u32,
        sync: bool,
        prefault: bool,
    ) -> Result<Self, JournalError> {
        let temp = temp_file_name(number);
        let temp_path = folder.join(&temp);
        let final_name = page_file_name(number);
        let path = folder.join(&final_name);
        let _ = fs::unlinkat(dir, &temp, AtFlags::empty());
        let file = fs::openat(
            dir,
            &temp,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
        )
        .map_err(|errno| io("creating", &temp_path, errno))?;
        // The mode is applied exactly, whatever the umask.
        fs::fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|errno| io("setting the mode of", &temp_path, errno))?;
        fs::ftruncate(&file, page_size).map_err(|errno| io("sizing", &temp_path, errno))?;
        let (base, len) = map(&file, page_size, true, &temp_path)?;
        if prefault {
            prefault_range(base, PAGE_HEADER_SIZE, len);
        }
        // SAFETY: a fresh mapping of `page_size` (≥ a header) bytes, page-aligned, that no other
        // process can have opened yet (the name is temporary and exclusive).
        let header = unsafe { &mut *base.as_ptr().cast::<PageHeader>() };
        header.version = PAGE_VERSION;
        header.header_size = PAGE_HEADER_SIZE as u32;
        header.page_size = page_size;
        header.page_number = number;
        header.journal_id = journal_id;
        header.flags = flags;
        header.index_slots = INDEX_SLOTS as u32;
        header.index_stride = index_stride(page_size);
        header.creator_pid = crate::pid::current_pid().get();
        header.state.store(STATE_PREPARED, Ordering::Relaxed);
        header.name_len = name.len() as u32;
        header.name[..name.len()].copy_from_slice(name.as_bytes());
        header
            .magic
            .store(u64::from_ne_bytes(PAGE_MAGIC), Ordering::Release);
        let page = Self {
            base,
            len,
            writable: true,
            number,
            path: path.clone(),
            info: PageInfo {
                page_size,
                page_number: number,
                journal_id,
                flags,
                index_stride: index_stride(page_size),
            },
        };
        if sync {
            page.sync_range(0, PAGE_HEADER_SIZE)?;
            fs::fsync(&file).map_err(|errno| io("syncing", &temp_path, errno))?;
        }
        match fs::renameat_with(dir, &temp, dir, &final_name, fs::RenameFlags::NOREPLACE) {
            Ok(()) => {}
            // Some file systems lack RENAME_NOREPLACE: a hard link never replaces either.
            Err(Errno::INVAL | Errno::NOSYS) => {
                fs::linkat(dir, &temp, dir, &final_name, AtFlags::empty())
                    .map_err(|errno| io("naming", &path, errno))?;
                let _ = fs::unlinkat(dir, &temp, AtFlags::empty());
            }
            Err(errno) => {
                let _ = fs::unlinkat(dir, &temp, AtFlags::empty());
                return Err(io("naming", &path, errno));
            }
        }
        if sync {
            fs::fsync(dir).map_err(|errno| io("syncing", folder, errno))?;
        }
        Ok(page)
    }

    /// Pre-faults a page the writer made but has not started: one write fault per 4 KiB page
    /// now rather than in the appends that will fill it.
    pub(crate) fn prefault_unstarted(&self) {
        debug_assert!(self.writable);
        if self.view().header().state.load(Ordering::Acquire) == STATE_PREPARED {
            prefault_range(self.base, PAGE_HEADER_SIZE, self.len);
        }
    }

    /// The page viewed.
    pub(crate) fn view(&self) -> PageView<'_> {
        // SAFETY: the mapping is `len` bytes, page-aligned, and lives as long as `self`.
        unsafe { PageView::from_raw(self.base, self.len) }
    }

    /// What its header says (validated).
    pub(crate) fn info(&self) -> &PageInfo {
        &self.info
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Unmaps the page and gives its path's buffer back (for [`set_page_path`]).
    pub(crate) fn into_path(mut self) -> PathBuf {
        core::mem::take(&mut self.path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A pointer to `offset` for the writer.
    pub(crate) fn write_ptr(&self, offset: usize) -> *mut u8 {
        debug_assert!(self.writable && offset <= self.len);
        // SAFETY: inside the mapping (debug-asserted; the writer's bookkeeping keeps it so).
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// `msync(MS_SYNC)` of the 4 KiB pages covering `offset..offset + len`.
    pub(crate) fn sync_range(&self, offset: usize, len: usize) -> Result<(), JournalError> {
        let start = offset & !4095;
        let end = (offset + len).min(self.len);
        // SAFETY: the range lies inside our mapping; msync does not change memory.
        unsafe {
            mm::msync(
                self.base.as_ptr().add(start).cast(),
                end - start,
                mm::MsyncFlags::SYNC,
            )
        }
        .map_err(|errno| io("msync of", &self.path, errno))
    }
}

impl Drop for PageMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; every view borrowed `self` and is gone.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A write fault per 4 KiB page of `start..end` of a mapping: on tmpfs and on a disk file alike
/// (a read would map the zero page, or a read-only entry the first write faults on again).
/// Writes a zero byte at each page's start: only for bytes no frame was written to (they hold
/// zero already, and no reader looks at them before a length word there is published).
fn prefault_range(base: NonNull<u8>, start: usize, end: usize) {
    for offset in (start..end).step_by(4096) {
        // SAFETY: inside the mapping (`end` is its length); a zero byte over a zero byte in a
        // page no frame has reached, written only by the one writer.
        unsafe { base.as_ptr().add(offset).write_volatile(0) };
    }
}

fn map(
    file: &OwnedFd,
    len: u64,
    writable: bool,
    path: &Path,
) -> Result<(NonNull<u8>, usize), JournalError> {
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len > 0 && len <= isize::MAX as usize)
        .ok_or_else(|| io("mapping", path, Errno::FBIG))?;
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh mapping at an address of the kernel's choosing, aliasing no Rust memory.
    let ptr = unsafe { mm::mmap(core::ptr::null_mut(), len, prot, MapFlags::SHARED, file, 0) }
        .map_err(|errno| io("mapping", path, errno))?;
    let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io("mapping", path, Errno::NOMEM))?;
    Ok((base, len))
}

/// The journal's wake file: the words blocking readers announce themselves in and sleep on
/// (a [`WakeCell`](super::wait::WakeCell)). Not a journal file (it holds no frame), so readers
/// may write it: the writer makes it writable by whoever may read the pages.
pub(crate) struct WakeMap {
    base: NonNull<super::wait::WakeCell>,
}

// SAFETY: the mapping is owned; the cell is only accessed through atomics.
unsafe impl Send for WakeMap {}
// SAFETY: as above.
unsafe impl Sync for WakeMap {}

/// Bytes of the wake file (one page): the cell at its start, then [`READER_SLOTS`] reader
/// records of 64 bytes.
const WAKE_FILE_SIZE: u64 = 4096;
/// Readers a wake file records (a blocking reader beyond them still works; only its arm is not
/// taken back by the writer's sweep if it dies armed).
pub(crate) const READER_SLOTS: usize = 63;

/// One blocking reader's record in the wake file: who it is, and whether it is armed. A reader
/// arms the cell, then sets `armed`; clears `armed`, then disarms: so a reader that dies between
/// the two leaves the count too high (a fence per publication), never too low (a lost wake-up).
/// The writer's sweep ([`WakeMap::sweep`]) takes back the arm of a dead reader whose `armed` is
/// still set.
#[repr(C)]
struct ReaderSlot {
    pid: core::sync::atomic::AtomicU32,
    armed: core::sync::atomic::AtomicU32,
    start: core::sync::atomic::AtomicU64,
    _pad: [u64; 6],
}

static_assertions::const_assert_eq!(core::mem::size_of::<ReaderSlot>(), 64);
static_assertions::const_assert!(64 + READER_SLOTS * 64 <= WAKE_FILE_SIZE as usize);

impl WakeMap {
    /// The writer's side: opens or makes the wake file, `mode` widened so that whoever may read
    /// the pages may write it. A file of the wrong size is set right (it holds nothing but
    /// counters and a futex word, which start at zero).
    pub(crate) fn create(folder: &Path, dir: &OwnedFd, mode: u32) -> Result<Self, JournalError> {
        let path = folder.join(super::WAKE_FILE);
        let mode = mode | ((mode & 0o044) >> 1);
        let file = fs::openat(
            dir,
            super::WAKE_FILE,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
        )
        .map_err(|errno| io("opening the wake file", &path, errno))?;
        let stat = fs::fstat(&file).map_err(|errno| io("inspecting", &path, errno))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io(
                "opening the wake file (not a regular file)",
                &path,
                Errno::INVAL,
            ));
        }
        let _ = fs::fchmod(&file, Mode::from_raw_mode(mode));
        if u64::try_from(stat.st_size).ok() != Some(WAKE_FILE_SIZE) {
            fs::ftruncate(&file, 0).map_err(|errno| io("sizing", &path, errno))?;
            fs::ftruncate(&file, WAKE_FILE_SIZE).map_err(|errno| io("sizing", &path, errno))?;
        }
        Self::map(&file, &path)
    }

    /// A reader's side: opens the wake file for reading and writing, if it exists and this
    /// process may (`None` otherwise: the reader then sleeps in short polls instead).
    pub(crate) fn open(folder: &Path) -> Option<Self> {
        let path = folder.join(super::WAKE_FILE);
        let file = fs::open(
            &path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let stat = fs::fstat(&file).ok()?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
            || u64::try_from(stat.st_size).ok() != Some(WAKE_FILE_SIZE)
        {
            return None;
        }
        Self::map(&file, &path).ok()
    }

    fn map(file: &OwnedFd, path: &Path) -> Result<Self, JournalError> {
        let (base, _) = map(file, WAKE_FILE_SIZE, true, path)?;
        Ok(Self { base: base.cast() })
    }

    /// The cell.
    pub(crate) fn cell(&self) -> &super::wait::WakeCell {
        // SAFETY: a live, page-aligned mapping of 4096 bytes; the cell's fields are atomics and
        // integers, valid for any bits (all zero is its initial state).
        unsafe { self.base.as_ref() }
    }

    fn slot(&self, index: usize) -> &ReaderSlot {
        assert!(index < READER_SLOTS);
        // SAFETY: slot `index` lies at 64 + 64 * index, inside the 4096-byte mapping (asserted
        // above and by the const assertion); 8-aligned; its fields are atomics.
        unsafe {
            &*self
                .base
                .as_ptr()
                .cast::<u8>()
                .add(64 + 64 * index)
                .cast::<ReaderSlot>()
        }
    }

    /// Claims a free reader record for this process (`None` if all are taken).
    pub(crate) fn claim_slot(&self) -> Option<usize> {
        use core::sync::atomic::Ordering;
        let pid = crate::pid::current_pid().get();
        let start = crate::pid::current_start_time();
        (0..READER_SLOTS).find(|&index| {
            let slot = self.slot(index);
            if slot
                .pid
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return false;
            }
            slot.start.store(start, Ordering::Relaxed);
            slot.armed.store(0, Ordering::Release);
            true
        })
    }

    /// Records whether the reader of record `index` is armed (see [`ReaderSlot`] for the order).
    pub(crate) fn mark(&self, index: usize, armed: bool) {
        self.slot(index)
            .armed
            .store(u32::from(armed), core::sync::atomic::Ordering::Release);
    }

    /// Frees record `index` (the reader is disarmed).
    pub(crate) fn release(&self, index: usize) {
        use core::sync::atomic::Ordering;
        let slot = self.slot(index);
        slot.armed.store(0, Ordering::Release);
        slot.start.store(0, Ordering::Relaxed);
        slot.pid.store(0, Ordering::Release);
    }

    /// The writer's sweep: frees the records of readers that are gone, taking back the arm of
    /// each that died armed, so its writer stops fencing for it. Returns the arms taken back.
    /// Costs a `/proc` read per recorded reader: call it seldom (`maintain` does, once a second).
    pub(crate) fn sweep(&self) -> u32 {
        use core::sync::atomic::Ordering;
        let mut taken = 0;
        for index in 0..READER_SLOTS {
            let slot = self.slot(index);
            let pid = slot.pid.load(Ordering::Acquire);
            if pid == 0 {
                continue;
            }
            let start = slot.start.load(Ordering::Relaxed);
            if crate::pid::is_process_alive_since(pid, start) {
                continue;
            }
            // Dead: only one sweeper takes its arm back (the writer is the only sweeper, but a
            // reader may be releasing the record at this very moment if the pid check raced
            // with a reused pid: the compare-exchange settles it).
            if slot
                .armed
                .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.cell().disarm_dead();
                taken += 1;
            }
            let _ = slot
                .pid
                .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        taken
    }
}

impl Drop for WakeMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping of WAKE_FILE_SIZE bytes, unmapped once.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), WAKE_FILE_SIZE as usize) };
    }
}
