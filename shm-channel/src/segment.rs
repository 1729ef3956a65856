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

use core::fmt;
use core::ptr::NonNull;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fd::OwnedFd;
use rustix::fs::{self, AtFlags, FallocateFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{self, MapFlags, ProtFlags};
use spsc_core::RingLayout;

use crate::header::{HeaderError, RingPlacement, SegmentHeader, HEADER_SIZE};
use crate::name::{NameError, SegmentName};
use crate::pid::current_pid;

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

/// Why a segment could not be created, opened or removed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// The segment name is invalid.
    Name(NameError),
    /// A system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The segment (or folder) concerned.
        target: String,
        /// The error the system reported.
        errno: Errno,
    },
    /// No segment of that name exists (for opening without creating).
    NotFound {
        /// The name looked for.
        name: String,
    },
    /// A segment of that name already exists (for creating without opening).
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The name exists in the folder but is not a regular file.
    NotAFile {
        /// The name.
        name: String,
    },
    /// The segment's header was refused.
    Header(HeaderError),
    /// The creator did not finish initialising within the configured time, and is still alive
    /// (or has not recorded its pid yet).
    InitTimeout {
        /// The creator's pid, 0 if it never recorded it.
        creator_pid: u32,
        /// How long we waited.
        waited: Duration,
    },
    /// The requested segment size cannot be mapped on this machine.
    SizeTooLarge {
        /// The size asked for.
        size: u64,
    },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(error) => fmt::Display::fmt(error, f),
            Self::Io { op, target, errno } => write!(f, "{op} of {target} failed: {errno}"),
            Self::NotFound { name } => write!(f, "no segment named {name:?} exists"),
            Self::AlreadyExists { name } => write!(f, "a segment named {name:?} already exists"),
            Self::NotAFile { name } => {
                write!(
                    f,
                    "{name:?} exists in the segment folder but is not a regular file"
                )
            }
            Self::Header(error) => fmt::Display::fmt(error, f),
            Self::InitTimeout {
                creator_pid,
                waited,
            } => write!(
                f,
                "segment was not ready after {waited:?}: its creator (pid {creator_pid}) is \
                 still initialising it; if no process is creating it, it is stale: remove it"
            ),
            Self::SizeTooLarge { size } => {
                write!(
                    f,
                    "a segment of {size} bytes cannot be mapped on this machine"
                )
            }
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Name(error) => Some(error),
            Self::Header(error) => Some(error),
            _ => None,
        }
    }
}

impl From<NameError> for SegmentError {
    fn from(error: NameError) -> Self {
        Self::Name(error)
    }
}

impl From<HeaderError> for SegmentError {
    fn from(error: HeaderError) -> Self {
        Self::Header(error)
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
    name: SegmentName,
    _file: OwnedFd,
    dir: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value, valid from any thread; every
// access to its contents goes through atomics or the rings' own synchronisation.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only exposes the base pointer and length.
unsafe impl Sync for Segment {}

fn io(op: &'static str, name: &SegmentName, errno: Errno) -> SegmentError {
    SegmentError::Io {
        op,
        target: format!("segment {name:?}"),
        errno,
    }
}

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
fn hold_shared_lock(file: &OwnedFd, name: &SegmentName) -> Result<(), SegmentError> {
    // Blocking: an exclusive holder is a reclaimer, which holds it for a few system calls.
    fs::flock(file, FlockOperation::LockShared).map_err(|e| io("locking", name, e))
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

/// The size of an open segment file, refusing anything but a regular file.
fn file_len(file: &OwnedFd, name: &SegmentName) -> Result<u64, SegmentError> {
    let stat = fs::fstat(file).map_err(|e| io("fstat", name, e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(SegmentError::NotAFile {
            name: name.to_string(),
        });
    }
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// Maps `len` bytes of `file` shared, read-write.
fn map(file: &OwnedFd, len: u64, name: &SegmentName) -> Result<(NonNull<u8>, usize), SegmentError> {
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
    .map_err(|e| io("mmap", name, e))?;
    let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io("mmap", name, Errno::NOMEM))?;
    Ok((base, len))
}

impl Segment {
    /// Creates a new segment file of `size` bytes (zero-filled), failing if the name exists.
    ///
    /// The file gets exactly the options' mode (0600 by default) and its blocks are reserved up
    /// front where the file system supports it, so a full `/dev/shm` is an error here rather
    /// than a `SIGBUS` later.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`], [`SegmentError::Name`], [`SegmentError::Io`].
    pub fn create(name: &str, size: u64, options: &SegmentOptions) -> Result<Self, SegmentError> {
        let name = SegmentName::new(name)?;
        let dir = open_dir(&options.dir)?;
        Self::create_in(dir, name, size, options)
    }

    fn create_in(
        dir: OwnedFd,
        name: SegmentName,
        size: u64,
        options: &SegmentOptions,
    ) -> Result<Self, SegmentError> {
        if size == 0 || usize::try_from(size).map_or(true, |s| s > isize::MAX as usize) {
            return Err(SegmentError::SizeTooLarge { size });
        }
        let mode = Mode::from_raw_mode(options.mode);
        let file = match fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            mode,
        ) {
            Ok(file) => file,
            Err(Errno::EXIST) => {
                return Err(SegmentError::AlreadyExists {
                    name: name.to_string(),
                })
            }
            Err(errno) => return Err(io("creating", &name, errno)),
        };
        let setup = || -> Result<(NonNull<u8>, usize), SegmentError> {
            hold_shared_lock(&file, &name)?;
            // A reclaimer may have taken the brand-new, still empty file for a stale one in the
            // instant before our lock: then it is no longer linked, and we must not use it.
            if fs::fstat(&file)
                .map_err(|e| io("fstat", &name, e))?
                .st_nlink
                == 0
            {
                return Err(io(
                    "creating (removed by a concurrent reclaim; retry)",
                    &name,
                    Errno::NOENT,
                ));
            }
            // The umask may have narrowed the mode given to open; set it exactly.
            fs::fchmod(&file, mode).map_err(|e| io("fchmod", &name, e))?;
            fs::ftruncate(&file, size).map_err(|e| io("ftruncate", &name, e))?;
            match fs::fallocate(&file, FallocateFlags::empty(), 0, size) {
                Ok(()) | Err(Errno::OPNOTSUPP | Errno::NOSYS) => {}
                Err(errno) => return Err(io("reserving space for", &name, errno)),
            }
            map(&file, size, &name)
        };
        match setup() {
            Ok((base, len)) => Ok(Self {
                base,
                len,
                created: true,
                name,
                _file: file,
                dir,
            }),
            Err(error) => {
                // Leave no file behind that nobody could ever initialise.
                let _ = fs::unlinkat(&dir, name.as_str(), AtFlags::empty());
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
        let name = SegmentName::new(name)?;
        let dir = open_dir(&options.dir)?;
        let file = Self::open_file(&dir, &name)?;
        let len = file_len(&file, &name)?;
        hold_shared_lock(&file, &name)?;
        if len == 0 {
            return Err(HeaderError::TooShort {
                len: 0,
                required: HEADER_SIZE as u64,
            }
            .into());
        }
        let (base, len) = map(&file, len, &name)?;
        Ok(Self {
            base,
            len,
            created: false,
            name,
            _file: file,
            dir,
        })
    }

    fn open_file(dir: &OwnedFd, name: &SegmentName) -> Result<OwnedFd, SegmentError> {
        match fs::openat(
            dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(file) => Ok(file),
            Err(Errno::NOENT) => Err(SegmentError::NotFound {
                name: name.to_string(),
            }),
            Err(Errno::LOOP) => Err(SegmentError::NotAFile {
                name: name.to_string(),
            }),
            Err(errno) => Err(io("opening", name, errno)),
        }
    }

    /// Opens an existing channel segment and waits, at most the options' `init_timeout`, until
    /// its creator has published it; then validates its header against the `expected` ring
    /// layouts. Returns the segment and where its rings are.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`SegmentError::Header`] for any refused header (a creator that
    /// died while initialising is [`HeaderError::HalfInitialised`]);
    /// [`SegmentError::InitTimeout`] if a live creator takes too long.
    pub fn open_ready(
        name: &str,
        options: &SegmentOptions,
        expected: &[RingLayout; 2],
    ) -> Result<(Self, [RingPlacement; 2]), SegmentError> {
        let name = SegmentName::new(name)?;
        let dir = open_dir(&options.dir)?;
        Self::open_ready_in(dir, name, options, expected)
    }

    fn open_ready_in(
        dir: OwnedFd,
        name: SegmentName,
        options: &SegmentOptions,
        expected: &[RingLayout; 2],
    ) -> Result<(Self, [RingPlacement; 2]), SegmentError> {
        let started = Instant::now();
        let mut backoff = Backoff::new();
        let file = Self::open_file(&dir, &name)?;
        hold_shared_lock(&file, &name)?;
        // The creator sizes the file right after creating it; wait for that.
        let len = loop {
            let len = file_len(&file, &name)?;
            if len >= HEADER_SIZE as u64 {
                break len;
            }
            if started.elapsed() >= options.init_timeout {
                return Err(HeaderError::TooShort {
                    len,
                    required: HEADER_SIZE as u64,
                }
                .into());
            }
            backoff.wait();
        };
        let (base, len) = map(&file, len, &name)?;
        let segment = Self {
            base,
            len,
            created: false,
            name,
            _file: file,
            dir,
        };
        loop {
            match segment.header()?.validate(segment.len as u64, expected) {
                Ok(placements) => return Ok((segment, placements)),
                Err(HeaderError::NotReady { creator_pid }) => {
                    let waited = started.elapsed();
                    if waited >= options.init_timeout {
                        return Err(SegmentError::InitTimeout {
                            creator_pid,
                            waited,
                        });
                    }
                    backoff.wait();
                }
                Err(error) => return Err(error.into()),
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
        let name = SegmentName::new(name)?;
        let dir = open_dir(&options.dir)?;
        loop {
            let dir_for_create = dup(&dir, &name)?;
            match Self::create_in(dir_for_create, name.clone(), size, options) {
                Ok(segment) => {
                    let placements = segment.initialise(expected, init)?;
                    return Ok((segment, placements));
                }
                Err(SegmentError::AlreadyExists { .. }) => {}
                Err(error) => return Err(error),
            }
            let dir_for_open = dup(&dir, &name)?;
            match Self::open_ready_in(dir_for_open, name.clone(), options, expected) {
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
        let header = self.header()?;
        header.begin_init(current_pid().get());
        let result = init(self).and_then(|placements| {
            header.write_identity(
                self.len as u64,
                &[(placements[0], expected[0]), (placements[1], expected[1])],
            );
            // Check what we wrote as any opener will, before publishing it.
            let placements = header.check_layout(self.len as u64, expected)?;
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

    /// Removes the segment's name from its folder. Mappings (ours and other processes') stay
    /// valid until dropped; a later create under the same name makes a new segment.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if the name is already gone, [`SegmentError::Io`].
    pub fn unlink(&self) -> Result<(), SegmentError> {
        unlink_at(&self.dir, &self.name)
    }

    /// Removes the segment file `name` from the options' folder, without opening it.
    ///
    /// # Errors
    /// As [`unlink`](Self::unlink), and [`SegmentError::Name`].
    pub fn unlink_name(name: &str, options: &SegmentOptions) -> Result<(), SegmentError> {
        let name = SegmentName::new(name)?;
        let dir = open_dir(&options.dir)?;
        unlink_at(&dir, &name)
    }

    /// Removes segment `name` if no live process has it open: a segment left by a crashed run,
    /// whether half-initialised or holding undelivered messages (which are then lost, so this is
    /// only done on request). A segment some live process holds is left alone.
    ///
    /// Every [`Segment`] keeps a shared advisory lock on its file while it exists, which the
    /// kernel releases when its process dies; reclaiming takes the exclusive lock without waiting,
    /// so it succeeds exactly when no holder is alive (no pid checks, so pid reuse cannot fool
    /// it), and it unlinks the name only if it still names the file that was locked. Two
    /// reclaimers, or a reclaimer and a creator, racing on one name cannot remove a live segment.
    ///
    /// # Errors
    /// [`SegmentError::Name`], [`SegmentError::NotAFile`], [`SegmentError::Io`].
    pub fn reclaim_stale(name: &str, options: &SegmentOptions) -> Result<Reclaim, SegmentError> {
        let name = SegmentName::new(name)?;
        let dir = open_dir(&options.dir)?;
        Self::reclaim_at(&dir, &name)
    }

    /// Closes this segment (unmapping it and dropping its lock), then removes its file if no
    /// other process has it open, exactly as [`reclaim_stale`](Self::reclaim_stale) would: the
    /// clean-close path of the last user. When two users close at once, exactly one of them
    /// removes the file; a user still holding it sees [`Reclaim::InUse`] and the file stays for
    /// it to remove when it closes.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if the folder or the file cannot be examined (the segment is closed
    /// all the same), [`SegmentError::NotAFile`] if the name now names something else.
    pub fn close_and_remove_if_unused(self) -> Result<Reclaim, SegmentError> {
        let (dir, name) = self.locate()?;
        drop(self);
        Self::reclaim_at(&dir, &name)
    }

    /// The folder (a new descriptor) and the name, which outlive the segment: what
    /// [`reclaim_at`](Self::reclaim_at) needs once it is closed.
    pub(crate) fn locate(&self) -> Result<(OwnedFd, SegmentName), SegmentError> {
        Ok((dup(&self.dir, &self.name)?, self.name.clone()))
    }

    /// [`reclaim_stale`](Self::reclaim_stale) of `name` in the open folder `dir`.
    pub(crate) fn reclaim_at(dir: &OwnedFd, name: &SegmentName) -> Result<Reclaim, SegmentError> {
        let file = match Self::open_file(dir, name) {
            Ok(file) => file,
            Err(SegmentError::NotFound { .. }) => return Ok(Reclaim::NotFound),
            Err(error) => return Err(error),
        };
        file_len(&file, name)?;
        match fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Ok(Reclaim::InUse),
            Err(errno) => return Err(io("locking", name, errno)),
        }
        let locked = fs::fstat(&file).map_err(|e| io("fstat", name, e))?;
        match fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(named) if named.st_dev == locked.st_dev && named.st_ino == locked.st_ino => {}
            Ok(_) | Err(Errno::NOENT) => return Ok(Reclaim::NotFound),
            Err(errno) => return Err(io("stat", name, errno)),
        }
        match unlink_at(dir, name) {
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
        &self.name
    }

    /// `true` if this process created the segment, `false` if it opened an existing one.
    pub fn created(&self) -> bool {
        self.created
    }
}

fn dup(dir: &OwnedFd, name: &SegmentName) -> Result<OwnedFd, SegmentError> {
    rustix::io::fcntl_dupfd_cloexec(dir, 0)
        .map_err(|e| io("duplicating the folder descriptor for", name, e))
}

fn unlink_at(dir: &OwnedFd, name: &SegmentName) -> Result<(), SegmentError> {
    match fs::unlinkat(dir, name.as_str(), AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(SegmentError::NotFound {
            name: name.to_string(),
        }),
        Err(errno) => Err(io("removing", name, errno)),
    }
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
