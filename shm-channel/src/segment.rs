//! Named shared-memory segments: a file in a folder (default `/dev/shm`), mapped `MAP_SHARED`.
//!
//! Every path operation goes through a descriptor of the folder (`openat`/`unlinkat` with a
//! validated [`SegmentName`]), so no name can reach outside it, and never follows a symbolic
//! link. A segment is created with `O_CREAT | O_EXCL`, so of two processes creating the same name
//! at once exactly one creates it; [`Segment::create_or_open`] makes the other open it and wait,
//! bounded, until the creator publishes the header as `ready`.
//!
//! # Hazard
//! A mapped file that another process truncates makes access past its new end raise `SIGBUS`.
//! Validation checks sizes at attach time; it cannot stop a process with write access to the
//! file from truncating it later. Keep segment folders writable only by the processes that use
//! them (the default mode is 0600).

use core::ptr::NonNull;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fd::OwnedFd;
use rustix::fs::{self, AtFlags, FallocateFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};
use spsc_core::RingLayout;

use crate::header::{
    classify_prefix, creation_marker, FilePrefix, HeaderError, RingPlacement, SegmentHeader,
    CREATION_MARKER_OFFSET, HEADER_SIZE, PREFIX_LEN,
};
use crate::name::SegmentName;
use crate::pid::{current_pid, is_process_alive};
use crate::segment_error::Place;
pub use crate::segment_error::SegmentError;

/// The folder segments live in unless the caller chooses another: Linux's shared-memory tmpfs.
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Where and how segments are created and opened.
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    dir: PathBuf,
    mode: u32,
    init_timeout: Duration,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_DIR),
            mode: 0o600,
            init_timeout: Duration::from_secs(2),
        }
    }
}

impl SegmentOptions {
    /// The folder holding segment files. A folder on disk instead of `/dev/shm` keeps queued
    /// messages across a reboot.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Permission bits of a created segment (default `0o600`, owner only). Set exactly, whatever
    /// the process's umask; bits beyond `0o777` are ignored.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// How long an opener waits for a creator that is still initialising the segment (default
    /// 2 s). Initialisation zeroes the rings, so allow for the rings' size.
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// The folder segments are in.
    pub fn folder(&self) -> &Path {
        &self.dir
    }
}

/// A mapped segment file. Unmapped on drop; the file stays until [`unlink`](Self::unlink)ed.
///
/// The mapping never moves while the `Segment` exists, even when the `Segment` value does.
#[derive(Debug)]
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
    created: bool,
    place: Place,
    file: OwnedFd,
    dir: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value, valid from any thread; every
// access to its contents goes through atomics or the rings' own synchronisation.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only exposes the base pointer and length.
unsafe impl Sync for Segment {}

/// How long an opener waits on an *empty* file before calling it too short: a creator writes its
/// marker right after creating the file, so only the instant between the two shows an empty
/// file; a file that stays empty was left by a creator that died in that instant, or by someone
/// else.
const EMPTY_FILE_GRACE: Duration = Duration::from_millis(100);

fn open_dir(dir: &Path) -> Result<OwnedFd, SegmentError> {
    fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| SegmentError::Io {
        op: "opening the segment folder",
        target: dir.display().to_string(),
        errno,
    })
}

/// Takes the shared advisory lock every holder of a segment keeps for as long as it has the
/// segment open. The kernel drops it when the process exits, however it dies, so an exclusive
/// lock can be had exactly when no live process has the segment open ([`Segment::reclaim_stale`]).
/// A child made by `fork` shares its parent's descriptor and so its lock: while either lives,
/// the segment counts as in use, which is right, since both have it mapped.
fn hold_shared_lock(file: &OwnedFd, place: &Place) -> Result<(), SegmentError> {
    // Blocking: an exclusive holder is a reclaimer, which holds it for a few system calls.
    fs::flock(file, FlockOperation::LockShared).map_err(|e| place.io("locking", e))
}

/// What [`Segment::reclaim_stale`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// Nobody had the segment open: it was removed.
    Removed,
    /// A live process has the segment open: it was left alone.
    InUse,
    /// No segment of that name exists (or it was replaced while we looked).
    NotFound,
}

/// What a file type is, in the words of [`SegmentError::NotAFile`]; `None` for a regular file.
fn non_file_kind(file_type: FileType) -> Option<&'static str> {
    Some(match file_type {
        FileType::RegularFile => return None,
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "not a regular file",
    })
}

/// The size of an open segment file, refusing anything but a regular file.
fn file_len(file: &OwnedFd, place: &Place) -> Result<u64, SegmentError> {
    let stat = fs::fstat(file).map_err(|e| place.io("fstat", e))?;
    if let Some(kind) = non_file_kind(FileType::from_raw_mode(stat.st_mode)) {
        return Err(place.not_a_file(kind));
    }
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// The file's first [`PREFIX_LEN`] bytes (fewer if it is shorter), read without mapping it.
fn read_prefix(file: &OwnedFd, place: &Place) -> Result<([u8; PREFIX_LEN], usize), SegmentError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let mut filled = 0;
    while filled < PREFIX_LEN {
        match rustix::io::pread(file, &mut prefix[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(errno) => return Err(place.io("reading the start", errno)),
        }
    }
    Ok((prefix, filled))
}

/// Checks that the open file is a segment (or one being created, or an empty file, which holds
/// nothing) before anything removes it: a file that merely carries the name, a hard link to a
/// foreign file included, is [`SegmentError::NotASegment`].
fn check_is_segment(file: &OwnedFd, place: &Place) -> Result<(), SegmentError> {
    let len = file_len(file, place)?;
    let (prefix, filled) = read_prefix(file, place)?;
    match classify_prefix(&prefix[..filled]) {
        FilePrefix::Empty | FilePrefix::Segment | FilePrefix::Creating { .. } => Ok(()),
        FilePrefix::Foreign { first_word } => Err(SegmentError::NotASegment {
            name: place.name.to_string(),
            folder: place.folder.clone(),
            len,
            first_word,
        }),
    }
}

/// Maps `len` bytes of `file` shared, read-write.
fn map(file: &OwnedFd, len: u64, place: &Place) -> Result<(NonNull<u8>, usize), SegmentError> {
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len > 0 && len <= isize::MAX as usize)
        .ok_or(SegmentError::SizeTooLarge { size: len })?;
    // SAFETY: a fresh mapping at an address of the kernel's choosing (null hint), so it aliases
    // no Rust memory; `file` is a regular file open for reading and writing.
    let ptr = unsafe {
        mm::mmap(
            core::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            file,
            0,
        )
    }
    .map_err(|e| place.io("mmap", e))?;
    let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| place.io("mmap", Errno::NOMEM))?;
    Ok((base, len))
}

/// Opens the regular file `place` names in `dir`, never following a symbolic link and never
/// opening anything else (a FIFO or a device could block or have effects on open): the type is
/// checked before opening, and again on the open descriptor ([`file_len`]).
fn open_file(dir: &OwnedFd, place: &Place) -> Result<OwnedFd, SegmentError> {
    match fs::statat(dir, place.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => {
            if let Some(kind) = non_file_kind(FileType::from_raw_mode(stat.st_mode)) {
                return Err(place.not_a_file(kind));
            }
        }
        Err(Errno::NOENT) => return Err(place.not_found()),
        Err(errno) => return Err(place.io("stat", errno)),
    }
    match fs::openat(
        dir,
        place.name.as_str(),
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(file) => Ok(file),
        Err(Errno::NOENT) => Err(place.not_found()),
        // Replaced by a link or a folder between the check and the open.
        Err(Errno::LOOP) => Err(place.not_a_file("a symbolic link")),
        Err(Errno::ISDIR) => Err(place.not_a_file("a directory")),
        Err(errno) => Err(place.io("opening", errno)),
    }
}

/// Removes the name `place` in `dir` if it still names `file` (same device and inode): so that a
/// segment created anew under the name after `file` was opened (and perhaps unlinked by someone
/// else) is never removed in its place. [`SegmentError::NotFound`] when the name is gone or
/// names another file now.
fn unlink_if_still(dir: &OwnedFd, place: &Place, file: &OwnedFd) -> Result<(), SegmentError> {
    let ours = fs::fstat(file).map_err(|e| place.io("fstat", e))?;
    match fs::statat(dir, place.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(named) if named.st_dev == ours.st_dev && named.st_ino == ours.st_ino => {}
        Ok(_) | Err(Errno::NOENT) => return Err(place.not_found()),
        Err(errno) => return Err(place.io("stat", errno)),
    }
    match fs::unlinkat(dir, place.name.as_str(), AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(place.not_found()),
        Err(errno) => Err(place.io("removing", errno)),
    }
}

impl Segment {
    /// Creates a new segment file of `size` bytes (zero-filled), failing if the name exists.
    ///
    /// The file gets exactly the options' mode (0600 by default) and its blocks are reserved up
    /// front where the file system supports it, so a full `/dev/shm` is an error here rather
    /// than a `SIGBUS` later. Before sizing the file, the creator writes its pid and the
    /// `initialising` state where the header keeps them, so an opener can tell a segment being
    /// made from a file of the right size that nobody will ever initialise.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`], [`SegmentError::Name`], [`SegmentError::Io`].
    pub fn create(name: &str, size: u64, options: &SegmentOptions) -> Result<Self, SegmentError> {
        let place = Place::new(&options.dir, SegmentName::new(name)?);
        let dir = open_dir(&options.dir)?;
        Self::create_in(dir, place, size, options)
    }

    fn create_in(
        dir: OwnedFd,
        place: Place,
        size: u64,
        options: &SegmentOptions,
    ) -> Result<Self, SegmentError> {
        if size < PREFIX_LEN as u64
            || usize::try_from(size).map_or(true, |s| s > isize::MAX as usize)
        {
            return Err(SegmentError::SizeTooLarge { size });
        }
        let mode = Mode::from_raw_mode(options.mode);
        let file = match fs::openat(
            &dir,
            place.name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
        ) {
            Ok(file) => file,
            Err(Errno::EXIST) => {
                return Err(SegmentError::AlreadyExists {
                    name: place.name.to_string(),
                    folder: place.folder.clone(),
                })
            }
            Err(errno) => return Err(place.io("creating", errno)),
        };
        let setup = || -> Result<(NonNull<u8>, usize), SegmentError> {
            // First of all, while the file is still shorter than a header (openers wait for the
            // size): who is creating it.
            let marker = creation_marker(current_pid().get());
            match rustix::io::pwrite(&file, &marker, CREATION_MARKER_OFFSET) {
                Ok(n) if n == marker.len() => {}
                Ok(_) => return Err(place.io("marking", Errno::IO)),
                Err(errno) => return Err(place.io("marking", errno)),
            }
            hold_shared_lock(&file, &place)?;
            // A reclaimer may have taken the brand-new, still empty file for a stale one in the
            // instant before our lock: then it is no longer linked, and we must not use it.
            if fs::fstat(&file).map_err(|e| place.io("fstat", e))?.st_nlink == 0 {
                return Err(place.io(
                    "creating (removed by a concurrent reclaim; retry)",
                    Errno::NOENT,
                ));
            }
            // The umask may have narrowed the mode given to open; set it exactly.
            fs::fchmod(&file, mode).map_err(|e| place.io("fchmod", e))?;
            fs::ftruncate(&file, size).map_err(|e| place.io("ftruncate", e))?;
            match fs::fallocate(&file, FallocateFlags::empty(), 0, size) {
                Ok(()) | Err(Errno::OPNOTSUPP | Errno::NOSYS) => {}
                Err(errno) => return Err(place.io("reserving space for", errno)),
            }
            map(&file, size, &place)
        };
        match setup() {
            Ok((base, len)) => Ok(Self {
                base,
                len,
                created: true,
                place,
                file,
                dir,
            }),
            Err(error) => {
                // Leave no file behind that nobody could ever initialise.
                let _ = unlink_if_still(&dir, &place, &file);
                Err(error)
            }
        }
    }

    /// Opens an existing segment file and maps it whole, as it is now. Nothing is validated:
    /// see [`open_ready`](Self::open_ready) for a segment with a channel header.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::NotAFile`], [`SegmentError::Header`] with
    /// [`HeaderError::TooShort`] for an empty file, [`SegmentError::Io`].
    pub fn open(name: &str, options: &SegmentOptions) -> Result<Self, SegmentError> {
        let place = Place::new(&options.dir, SegmentName::new(name)?);
        let dir = open_dir(&options.dir)?;
        let file = open_file(&dir, &place)?;
        let len = file_len(&file, &place)?;
        hold_shared_lock(&file, &place)?;
        if len == 0 {
            return Err(place.header(HeaderError::TooShort {
                len: 0,
                required: HEADER_SIZE as u64,
            }));
        }
        let (base, len) = map(&file, len, &place)?;
        Ok(Self {
            base,
            len,
            created: false,
            place,
            file,
            dir,
        })
    }

    /// Opens an existing channel segment and waits, at most the options' `init_timeout`, until
    /// its creator has published it; then validates its header against the `expected` ring
    /// layouts. Returns the segment and where its rings are.
    ///
    /// Only a creator that is alive and at work is waited for. A file that cannot become a
    /// segment is refused at once: shorter than a header without a creator's marker
    /// ([`HeaderError::TooShort`]), not a segment at all ([`SegmentError::NotASegment`]), of
    /// full size but never initialised ([`HeaderError::NeverInitialised`]), or left by a creator
    /// that died ([`HeaderError::HalfInitialised`]). An empty file gets a moment's grace
    /// (a creator writes its marker right after creating the file).
    ///
    /// # Errors
    /// As [`open`](Self::open); [`SegmentError::Header`] for any refused header;
    /// [`SegmentError::NotASegment`]; [`SegmentError::InitTimeout`] if a live creator takes
    /// longer than `init_timeout`.
    pub fn open_ready(
        name: &str,
        options: &SegmentOptions,
        expected: &[RingLayout; 2],
    ) -> Result<(Self, [RingPlacement; 2]), SegmentError> {
        let place = Place::new(&options.dir, SegmentName::new(name)?);
        let dir = open_dir(&options.dir)?;
        Self::open_ready_in(dir, place, options, expected)
    }

    fn open_ready_in(
        dir: OwnedFd,
        place: Place,
        options: &SegmentOptions,
        expected: &[RingLayout; 2],
    ) -> Result<(Self, [RingPlacement; 2]), SegmentError> {
        let started = Instant::now();
        let mut backoff = Backoff::new();
        let file = open_file(&dir, &place)?;
        hold_shared_lock(&file, &place)?;
        let timed_out = |place: &Place, creator_pid| SegmentError::InitTimeout {
            name: place.name.to_string(),
            folder: place.folder.clone(),
            creator_pid,
            waited: started.elapsed(),
        };
        // The creator sizes the file right after marking it; wait for that, but only while a
        // live creator is at work.
        let len = loop {
            let len = file_len(&file, &place)?;
            if len >= HEADER_SIZE as u64 {
                break len;
            }
            let too_short = || {
                place.header(HeaderError::TooShort {
                    len,
                    required: HEADER_SIZE as u64,
                })
            };
            let (prefix, filled) = read_prefix(&file, &place)?;
            match classify_prefix(&prefix[..filled]) {
                FilePrefix::Creating { creator_pid } => {
                    if !is_process_alive(creator_pid) {
                        return Err(place.header(HeaderError::HalfInitialised { creator_pid }));
                    }
                    if started.elapsed() >= options.init_timeout {
                        return Err(timed_out(&place, creator_pid));
                    }
                }
                FilePrefix::Empty => {
                    if started.elapsed() >= options.init_timeout.min(EMPTY_FILE_GRACE) {
                        return Err(too_short());
                    }
                }
                // The magic, in a file shorter than a header: a truncated segment.
                FilePrefix::Segment => return Err(too_short()),
                FilePrefix::Foreign { first_word } => {
                    return Err(SegmentError::NotASegment {
                        name: place.name.to_string(),
                        folder: place.folder.clone(),
                        len,
                        first_word,
                    })
                }
            }
            backoff.wait();
        };
        let (base, len) = map(&file, len, &place)?;
        let segment = Self {
            base,
            len,
            created: false,
            place,
            file,
            dir,
        };
        loop {
            let header = segment.header().map_err(|e| segment.place.header(e))?;
            match header.validate(segment.len as u64, expected) {
                Ok(placements) => return Ok((segment, placements)),
                Err(HeaderError::NotReady { creator_pid }) => {
                    if started.elapsed() >= options.init_timeout {
                        return Err(timed_out(&segment.place, creator_pid));
                    }
                    backoff.wait();
                }
                Err(HeaderError::BadMagic { found }) => {
                    return Err(SegmentError::NotASegment {
                        name: segment.place.name.to_string(),
                        folder: segment.place.folder.clone(),
                        len: segment.len as u64,
                        first_word: Some(found),
                    })
                }
                Err(error) => return Err(segment.place.header(error)),
            }
        }
    }

    /// Creates the segment, or opens it if it exists — race-free when several processes try at
    /// once: exactly one creates it (`O_EXCL`) and runs `init` on the zero-filled mapping while
    /// the header says `initialising`, then publishes `ready`; the others open it and wait for
    /// `ready` as [`open_ready`](Self::open_ready) does. `init` writes the rings and returns their
    /// placements and layouts, which the header then records.
    ///
    /// If `init` fails, the half-made file is removed.
    ///
    /// # Errors
    /// As [`create`](Self::create) and [`open_ready`](Self::open_ready), or `init`'s error.
    pub fn create_or_open(
        name: &str,
        size: u64,
        options: &SegmentOptions,
        expected: &[RingLayout; 2],
        init: impl FnOnce(&Segment) -> Result<[RingPlacement; 2], SegmentError>,
    ) -> Result<(Self, [RingPlacement; 2]), SegmentError> {
        let place = Place::new(&options.dir, SegmentName::new(name)?);
        let dir = open_dir(&options.dir)?;
        loop {
            let dir_for_create = dup(&dir, &place)?;
            match Self::create_in(dir_for_create, place.clone(), size, options) {
                Ok(segment) => {
                    let placements = segment.initialise(expected, init)?;
                    return Ok((segment, placements));
                }
                Err(SegmentError::AlreadyExists { .. }) => {}
                Err(error) => return Err(error),
            }
            let dir_for_open = dup(&dir, &place)?;
            match Self::open_ready_in(dir_for_open, place.clone(), options, expected) {
                // Removed between our create and our open: try to create it again.
                Err(SegmentError::NotFound { .. }) => continue,
                result => return result,
            }
        }
    }

    /// Creates a new channel segment (failing if the name exists), runs `init` on it while the
    /// header says `initialising`, then publishes it `ready`, as the creating side of
    /// [`create_or_open`](Self::create_or_open) does.
    ///
    /// # Errors
    /// As [`create`](Self::create), or `init`'s error (the file is then removed).
    pub fn create_ready(
        name: &str,
        size: u64,
        options: &SegmentOptions,
        expected: &[RingLayout; 2],
        init: impl FnOnce(&Segment) -> Result<[RingPlacement; 2], SegmentError>,
    ) -> Result<(Self, [RingPlacement; 2]), SegmentError> {
        let segment = Self::create(name, size, options)?;
        let placements = segment.initialise(expected, init)?;
        Ok((segment, placements))
    }

    /// Runs the creator's side of initialisation on a freshly created segment.
    fn initialise(
        &self,
        expected: &[RingLayout; 2],
        init: impl FnOnce(&Segment) -> Result<[RingPlacement; 2], SegmentError>,
    ) -> Result<[RingPlacement; 2], SegmentError> {
        let header = self.header().map_err(|e| self.place.header(e))?;
        header.begin_init(current_pid().get());
        let result = init(self).and_then(|placements| {
            header.write_identity(
                self.len as u64,
                &[(placements[0], expected[0]), (placements[1], expected[1])],
            );
            // Check what we wrote as any opener will, before publishing it.
            let placements = header
                .check_layout(self.len as u64, expected)
                .map_err(|e| self.place.header(e))?;
            header.publish_ready();
            Ok(placements)
        });
        if result.is_err() {
            let _ = self.unlink();
        }
        result
    }

    /// The segment's header, not validated (see [`SegmentHeader::validate`]).
    ///
    /// # Errors
    /// [`HeaderError::TooShort`] if the mapping is shorter than a header.
    pub fn header(&self) -> Result<&SegmentHeader, HeaderError> {
        if self.len < HEADER_SIZE {
            return Err(HeaderError::TooShort {
                len: self.len as u64,
                required: HEADER_SIZE as u64,
            });
        }
        // SAFETY: the mapping is page-aligned (so 128-aligned), at least HEADER_SIZE bytes
        // (checked), and lives as long as `self`. Every header field is an atomic, valid for any
        // bit pattern and for concurrent access by other processes.
        Ok(unsafe { self.base.cast::<SegmentHeader>().as_ref() })
    }

    /// Wraps a header error with this segment's name and folder, as every [`SegmentError`]
    /// about a file carries them.
    pub(crate) fn header_error(&self, error: HeaderError) -> SegmentError {
        self.place.header(error)
    }

    /// Removes the segment's name from its folder, if the name still names this segment's file
    /// (a segment created anew under the name since is left alone). Mappings (ours and other
    /// processes') stay valid until dropped; a later create under the same name makes a new
    /// segment.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if the name is gone or names another file now,
    /// [`SegmentError::Io`].
    pub fn unlink(&self) -> Result<(), SegmentError> {
        unlink_if_still(&self.dir, &self.place, &self.file)
    }

    /// Removes the segment file `name` from the options' folder, whether or not a process has it
    /// open, after checking that it is a segment: a regular file with the segment magic (or one
    /// being created, or empty). Anything else under the name is left alone and reported.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::NotAFile`] (a directory, a symbolic link,
    /// ...), [`SegmentError::NotASegment`], [`SegmentError::Name`], [`SegmentError::Io`].
    pub fn unlink_name(name: &str, options: &SegmentOptions) -> Result<(), SegmentError> {
        let place = Place::new(&options.dir, SegmentName::new(name)?);
        let dir = open_dir(&options.dir)?;
        let file = open_file(&dir, &place)?;
        check_is_segment(&file, &place)?;
        unlink_if_still(&dir, &place, &file)
    }

    /// Removes segment `name` if no live process has it open: a segment left by a crashed run,
    /// whether half-initialised or holding undelivered messages (which are then lost, so this is
    /// only done on request). A segment some live process holds is left alone, and so is
    /// anything under the name that is not a segment.
    ///
    /// Every [`Segment`] keeps a shared advisory lock on its file while it exists, which the
    /// kernel releases when its process dies; reclaiming takes the exclusive lock without waiting,
    /// so it succeeds exactly when no holder is alive (no pid checks, so pid reuse cannot fool
    /// it), then checks that the file is a segment (its magic, or a creator's marker, or empty),
    /// and unlinks the name only if it still names the file that was locked. Two reclaimers, or
    /// a reclaimer and a creator, racing on one name cannot remove a live segment.
    ///
    /// ```
    /// use shm_channel::{Channel, ChannelOptions, End, Reclaim, Segment};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let options = ChannelOptions::new().dir(dir.path());
    /// // At start-up, before creating the channel: remove what a crashed run left, if nobody
    /// // uses it (its queued messages are dropped with it).
    /// match Segment::reclaim_stale("orders", options.segment_options()) {
    ///     Ok(Reclaim::Removed) => println!("removed a stale segment"),
    ///     Ok(Reclaim::InUse) => println!("a live process has it: reopening it instead"),
    ///     Ok(Reclaim::NotFound) => {}
    ///     Err(error) => eprintln!("{error}"), // e.g. a file that is not a segment: left alone
    /// }
    /// let _a = Channel::<4096>::create_or_open("orders", End::A, &options).unwrap();
    /// assert_eq!(Segment::reclaim_stale("orders", options.segment_options()).unwrap(), Reclaim::InUse);
    /// ```
    ///
    /// # Errors
    /// [`SegmentError::Name`], [`SegmentError::NotAFile`], [`SegmentError::NotASegment`] (a
    /// plain file or a hard link to one, left alone), [`SegmentError::Io`].
    pub fn reclaim_stale(name: &str, options: &SegmentOptions) -> Result<Reclaim, SegmentError> {
        let place = Place::new(&options.dir, SegmentName::new(name)?);
        let dir = open_dir(&options.dir)?;
        Self::reclaim_at(&dir, &place)
    }

    /// Closes this segment (unmapping it and dropping its lock), then removes its file if no
    /// other process has it open, exactly as [`reclaim_stale`](Self::reclaim_stale) would: the
    /// clean-close path of the last user. When two users close at once, exactly one of them
    /// removes the file; a user still holding it sees [`Reclaim::InUse`] and the file stays for
    /// it to remove when it closes.
    ///
    /// A process that forks while it has the segment open shares its lock with the child until
    /// the child calls `exec` or exits (`std::process::Command::spawn` is such a fork). If a
    /// thread of either user spawns a process at the instant both close, both may see
    /// [`Reclaim::InUse`] and the file stays: nothing is lost, and a later
    /// [`reclaim_stale`](Self::reclaim_stale) removes it.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if the folder or the file cannot be examined (the segment is closed
    /// all the same), [`SegmentError::NotAFile`] or [`SegmentError::NotASegment`] if the name
    /// now names something else.
    pub fn close_and_remove_if_unused(self) -> Result<Reclaim, SegmentError> {
        let (dir, place) = self.locate()?;
        drop(self);
        Self::reclaim_at(&dir, &place)
    }

    /// The folder (a new descriptor) and the place, which outlive the segment: what
    /// [`reclaim_at`](Self::reclaim_at) needs once it is closed.
    pub(crate) fn locate(&self) -> Result<(OwnedFd, Place), SegmentError> {
        Ok((dup(&self.dir, &self.place)?, self.place.clone()))
    }

    /// [`reclaim_stale`](Self::reclaim_stale) of `place` in the open folder `dir`.
    pub(crate) fn reclaim_at(dir: &OwnedFd, place: &Place) -> Result<Reclaim, SegmentError> {
        let file = match open_file(dir, place) {
            Ok(file) => file,
            Err(SegmentError::NotFound { .. }) => return Ok(Reclaim::NotFound),
            Err(error) => return Err(error),
        };
        // `open_file` refused anything but a regular file; `check_is_segment` checks again on
        // the descriptor, under the lock.
        match fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Ok(Reclaim::InUse),
            Err(errno) => return Err(place.io("locking", errno)),
        }
        // Nobody has it open now, so its contents hold still while we look at them.
        check_is_segment(&file, place)?;
        match unlink_if_still(dir, place, &file) {
            Ok(()) => Ok(Reclaim::Removed),
            Err(SegmentError::NotFound { .. }) => Ok(Reclaim::NotFound),
            Err(error) => Err(error),
        }
    }

    /// Start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    /// Length of the mapping: the file's size when it was opened.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: an empty file is never mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment's name.
    pub fn name(&self) -> &SegmentName {
        &self.place.name
    }

    /// The folder the segment is in, as the options gave it.
    pub fn folder(&self) -> &Path {
        &self.place.folder
    }

    /// `segment "name" in /folder`, as errors name it.
    pub(crate) fn describe(&self) -> String {
        self.place.to_string()
    }

    /// `true` if this process created the segment, `false` if it opened an existing one.
    pub fn created(&self) -> bool {
        self.created
    }
}

fn dup(dir: &OwnedFd, place: &Place) -> Result<OwnedFd, SegmentError> {
    rustix::io::fcntl_dupfd_cloexec(dir, 0)
        .map_err(|e| place.io("duplicating the folder descriptor for", e))
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `map`, owned by this value; every
        // reference into it borrows `self` (or, for channel handles, is dropped before the
        // segment, see `channel.rs`), so nothing uses it after this.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Polling while another process finishes something: spin briefly, then sleep in growing steps
/// up to 1 ms, so a quick creator is seen quickly and a slow one costs no CPU.
struct Backoff {
    step: u32,
}

impl Backoff {
    fn new() -> Self {
        Self { step: 0 }
    }

    fn wait(&mut self) {
        if self.step < 10 {
            std::thread::yield_now();
        } else {
            let micros = 10u64 << (self.step - 10).min(7);
            std::thread::sleep(Duration::from_micros(micros.min(1000)));
        }
        self.step = self.step.saturating_add(1);
    }
}
