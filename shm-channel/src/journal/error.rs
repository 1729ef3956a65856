//! The journal's errors: opening and maintaining ([`JournalError`]), appending ([`AppendError`])
//! and reading ([`ReadError`]).

use std::fmt;
use std::path::PathBuf;

use rustix::io::Errno;

use super::layout::{FrameFault, PageFault};
use crate::name::NameError;

/// Opening a journal, making or removing pages, seeking, persisting a position.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal's (or a named reader's) name is not a valid name.
    Name(NameError),
    /// A configuration value out of range.
    Config {
        /// What is wrong, with the numbers.
        reason: String,
    },
    /// A system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or folder.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// Another live process writes this journal.
    WriterActive {
        /// The journal's folder.
        folder: PathBuf,
        /// The writer's pid, as its lock file records it (0 if unreadable).
        pid: u32,
    },
    /// The journal has no page yet (a reader came before its writer ever started).
    NoPages {
        /// The journal's folder.
        folder: PathBuf,
    },
    /// A page file was refused.
    Page {
        /// The file.
        path: PathBuf,
        /// Why.
        fault: PageFault,
    },
    /// A frame was refused.
    Frame {
        /// The page file.
        path: PathBuf,
        /// The frame's offset in it.
        offset: usize,
        /// Why.
        fault: FrameFault,
    },
    /// Pages are missing between the oldest and the newest (retention only removes the oldest),
    /// or a page's first sequence number does not follow its predecessor's frames.
    Discontinuous {
        /// The journal's folder.
        folder: PathBuf,
        /// What was found, with the numbers.
        what: String,
    },
    /// A seek asked for a sequence number past the next one the writer will write.
    BeyondEnd {
        /// The journal's folder.
        folder: PathBuf,
        /// The sequence number asked for.
        seq: u64,
        /// The next one the writer writes.
        next: u64,
    },
    /// A seek asked for a frame that retention removed.
    Removed {
        /// The journal's folder.
        folder: PathBuf,
        /// The sequence number asked for.
        seq: u64,
        /// The oldest one still kept.
        oldest: u64,
    },
    /// A position file is not one, or belongs to another journal.
    Position {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(error) => write!(f, "{error}"),
            Self::Config { reason } => write!(f, "journal configuration: {reason}"),
            Self::Io { op, path, errno } => {
                write!(f, "journal: {op} {} failed: {errno}", path.display())
            }
            Self::WriterActive { folder, pid } => write!(
                f,
                "journal {} already has a live writer (pid {pid}); a journal has one writer at a time, and a dead writer's place is taken at once",
                folder.display()
            ),
            Self::NoPages { folder } => write!(
                f,
                "journal {} has no page yet: its writer never started (readers never create a journal)",
                folder.display()
            ),
            Self::Page { path, fault } => write!(f, "journal page {} refused: {fault}", path.display()),
            Self::Frame { path, offset, fault } => write!(
                f,
                "journal page {}: the frame at offset {offset} is refused: {fault}",
                path.display()
            ),
            Self::Discontinuous { folder, what } => {
                write!(f, "journal {} is not continuous: {what}", folder.display())
            }
            Self::BeyondEnd { folder, seq, next } => write!(
                f,
                "journal {}: sequence number {seq} was asked for, but the writer's next is {next}",
                folder.display()
            ),
            Self::Removed { folder, seq, oldest } => write!(
                f,
                "journal {}: frame {seq} was removed by retention; the oldest kept is now {oldest}",
                folder.display()
            ),
            Self::Position { path, reason } => {
                write!(f, "reader position file {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for JournalError {}

impl From<NameError> for JournalError {
    fn from(error: NameError) -> Self {
        Self::Name(error)
    }
}

/// Appending a frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum AppendError {
    /// The payload can never fit a page.
    TooLarge {
        /// The payload length asked for.
        len: u32,
        /// The largest a page of this journal holds.
        max: u32,
    },
    /// The timestamp is earlier than the last frame's: a journal's times never decrease, so a
    /// search by time stays a search.
    TimeBackwards {
        /// The time given.
        time: u64,
        /// The last frame's.
        last: u64,
    },
    /// Going on in the next page failed (making it, or removing old ones).
    Page(JournalError),
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => write!(
                f,
                "a {len}-byte frame payload cannot fit this journal's pages, which hold at most {max} bytes: make pages larger"
            ),
            Self::TimeBackwards { time, last } => write!(
                f,
                "timestamp {time} is earlier than the journal's last frame's, {last}: pass a clock that never goes back across writer restarts (e.g. CLOCK_REALTIME nanoseconds)"
            ),
            Self::Page(error) => write!(f, "switching pages: {error}"),
        }
    }
}

impl std::error::Error for AppendError {}

/// Reading the next frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// Nothing new yet.
    Empty,
    /// Retention removed frames this reader had not read. The reader was moved on to the oldest
    /// frame kept: the next read returns it.
    Lagged {
        /// The journal's folder.
        folder: PathBuf,
        /// The frames missed.
        missed: u64,
        /// The sequence number reading resumes at.
        resume_at: u64,
    },
    /// A page or frame was refused, or a file could not be opened: the reader stays where it
    /// was.
    Journal(JournalError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "no new frame in the journal"),
            Self::Lagged {
                folder,
                missed,
                resume_at,
            } => write!(
                f,
                "reader of journal {} lagged: {missed} frames were removed before it read them; resuming at sequence number {resume_at}",
                folder.display()
            ),
            Self::Journal(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<JournalError> for ReadError {
    fn from(error: JournalError) -> Self {
        Self::Journal(error)
    }
}
