//! Why a segment could not be created, opened or removed, and where it was looked for: every
//! message names the segment and its folder, so a user can act on it without reading the source.

use core::fmt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::header::HeaderError;
use crate::name::{NameError, SegmentName};

/// Where a segment is: its folder (as the caller gave it) and its validated name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) folder: PathBuf,
    pub(crate) name: SegmentName,
}

impl Place {
    pub(crate) fn new(folder: &Path, name: SegmentName) -> Self {
        Self {
            folder: folder.to_owned(),
            name,
        }
    }

    /// A system call on this segment failed.
    pub(crate) fn io(&self, op: &'static str, errno: Errno) -> SegmentError {
        SegmentError::Io {
            op,
            target: self.to_string(),
            errno,
        }
    }

    /// The segment's header was refused.
    pub(crate) fn header(&self, error: HeaderError) -> SegmentError {
        SegmentError::Header {
            name: self.name.to_string(),
            folder: self.folder.clone(),
            error,
        }
    }

    pub(crate) fn not_found(&self) -> SegmentError {
        SegmentError::NotFound {
            name: self.name.to_string(),
            folder: self.folder.clone(),
        }
    }

    pub(crate) fn not_a_file(&self, kind: &'static str) -> SegmentError {
        SegmentError::NotAFile {
            name: self.name.to_string(),
            folder: self.folder.clone(),
            kind,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {:?} in {}",
            self.name.as_str(),
            self.folder.display()
        )
    }
}

/// Why a segment could not be created, opened or removed. Every variant about a file names it
/// (`name`) and its folder (`folder`, as given in the options).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// The segment name is invalid.
    Name(NameError),
    /// A system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The segment (name and folder) or folder concerned.
        target: String,
        /// The error the system reported.
        errno: Errno,
    },
    /// No segment of that name exists in the folder (for opening without creating, or removing).
    NotFound {
        /// The name looked for.
        name: String,
        /// The folder it was looked for in.
        folder: PathBuf,
    },
    /// A segment of that name already exists (for creating without opening).
    AlreadyExists {
        /// The name asked for.
        name: String,
        /// The folder.
        folder: PathBuf,
    },
    /// The name exists in the folder but is not a regular file: a directory, a symbolic link
    /// (never followed), a FIFO, a socket or a device. Nothing was opened or removed.
    NotAFile {
        /// The name.
        name: String,
        /// The folder.
        folder: PathBuf,
        /// What it is instead: `"a directory"`, `"a symbolic link"`, ...
        kind: &'static str,
    },
    /// The name is a regular file, but not a segment: it lacks the segment magic and is no
    /// segment being created. Removal refuses it, so that a file that only shares the name is
    /// never deleted; opening refuses it too.
    NotASegment {
        /// The name.
        name: String,
        /// The folder.
        folder: PathBuf,
        /// The file's length in bytes.
        len: u64,
        /// Its first 8 bytes as a little-endian word (`None` if it is shorter).
        first_word: Option<u64>,
    },
    /// The segment's header was refused.
    Header {
        /// The segment's name.
        name: String,
        /// Its folder.
        folder: PathBuf,
        /// What is wrong with the header.
        error: HeaderError,
    },
    /// The creator did not finish initialising within the configured time, and is still alive.
    InitTimeout {
        /// The segment's name.
        name: String,
        /// Its folder.
        folder: PathBuf,
        /// The creator's pid.
        creator_pid: u32,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The requested segment size cannot be made: below the 32 bytes a segment's identity needs,
    /// or too large to map on this machine.
    SizeTooLarge {
        /// The size asked for.
        size: u64,
    },
}

impl SegmentError {
    /// The header error, if the header was refused.
    pub fn header_error(&self) -> Option<&HeaderError> {
        match self {
            Self::Header { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |name: &str, folder: &Path| format!("segment {name:?} in {}", folder.display());
        match self {
            Self::Name(error) => fmt::Display::fmt(error, f),
            Self::Io { op, target, errno } => write!(f, "{op} of {target} failed: {errno}"),
            Self::NotFound { name, folder } => write!(
                f,
                "no {} exists: check the name and the folder (ChannelOptions::dir), or create it",
                at(name, folder)
            ),
            Self::AlreadyExists { name, folder } => {
                write!(f, "{} already exists", at(name, folder))
            }
            Self::NotAFile { name, folder, kind } => write!(
                f,
                "{name:?} in {} is {kind}, not a segment file; it was left alone",
                folder.display()
            ),
            Self::NotASegment {
                name,
                folder,
                len,
                first_word,
            } => {
                write!(
                    f,
                    "{name:?} in {} is a {len}-byte file that is not a segment (",
                    folder.display()
                )?;
                match first_word {
                    Some(word) => write!(f, "it starts with {word:#018x}, not the segment magic")?,
                    None => f.write_str("too short to hold the segment magic")?,
                }
                f.write_str("); it was left alone: remove or rename it yourself if it is yours")
            }
            Self::Header {
                name,
                folder,
                error,
            } => write!(f, "{}: {error}", at(name, folder)),
            Self::InitTimeout {
                name,
                folder,
                creator_pid,
                waited,
            } => write!(
                f,
                "{} was not ready after {waited:?}: its creator (pid {creator_pid}, still \
                 running) is still initialising it; allow more time (init_timeout) or find out \
                 why that process is stuck",
                at(name, folder)
            ),
            Self::SizeTooLarge { size } => {
                write!(
                    f,
                    "a segment of {size} bytes cannot be made: it must be at least 32 bytes and \
                     small enough to map on this machine"
                )
            }
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Name(error) => Some(error),
            Self::Header { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<NameError> for SegmentError {
    fn from(error: NameError) -> Self {
        Self::Name(error)
    }
}
