//! Segment names: the only part of a segment's path that comes from the caller, so the only way
//! a caller (or a peer that sent us a name) could steer a file operation outside the folder.
//!
//! # Rules
//!
//! A valid name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, and
//! does not start with `.` (which also rules out `.` and `..`, and hidden files). There is no
//! `/`, so a name is always one entry directly inside the segment folder, and no byte that a
//! shell, a log line or a file listing would show ambiguously.

use core::fmt;

/// The longest segment name, in bytes. Below the 255-byte `NAME_MAX` of Linux file systems,
/// leaving room for an upper layer's suffixes.
pub const MAX_NAME_LEN: usize = 200;

/// A validated segment name: one file name inside the segment folder, never a path.
///
/// A valid name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, and
/// does not start with `.` (which also rules out `.`, `..` and hidden files).
///
/// Stored inline (no allocation), so it can be copied into headers and error values freely.
///
/// ```
/// use shm_channel::SegmentName;
///
/// let name = SegmentName::new("orders.gw-1_risk").unwrap();
/// assert_eq!(name.as_str(), "orders.gw-1_risk");
/// assert!(SegmentName::new("../etc/passwd").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SegmentName(heapless::String<MAX_NAME_LEN>);

/// Why a string is not a valid [`SegmentName`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// The name's length in bytes.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The name starts with `.` (this covers `.`, `..` and hidden files).
    LeadingDot,
    /// The name holds a character outside the allowed set (ASCII letters, digits, `-`, `_`, `.`),
    /// such as `/`.
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the name.
        index: usize,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("segment name is empty"),
            Self::TooLong { len, max } => {
                write!(
                    f,
                    "segment name is {len} bytes long; at most {max} are allowed"
                )
            }
            Self::LeadingDot => f.write_str("segment name must not start with '.'"),
            Self::InvalidChar { ch, index } => write!(
                f,
                "segment name has {ch:?} at byte {index}; only ASCII letters, digits, '-', '_' \
                 and '.' are allowed"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Whether `byte` may appear in a segment name.
const fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
}

impl SegmentName {
    /// Validates `name` against the rules of [`SegmentName`].
    ///
    /// # Errors
    /// [`NameError`] saying which rule the name breaks.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        if let Some((index, ch)) = name.char_indices().find(|&(_, ch)| {
            // Non-ASCII characters are refused whole, reported as the character, not a byte.
            !(ch.is_ascii() && allowed(ch as u8))
        }) {
            return Err(NameError::InvalidChar { ch, index });
        }
        if name.starts_with('.') {
            return Err(NameError::LeadingDot);
        }
        let mut inner = heapless::String::new();
        // Cannot fail: the length was checked against the capacity above.
        inner.push_str(name).map_err(|_| NameError::TooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        })?;
        Ok(Self(inner))
    }

    /// The segment name for a connection between two named ends, `<a>_<b>`, as the design notes
    /// propose for upper layers.
    ///
    /// # Errors
    /// [`NameError`] if either name is invalid or the combination is too long.
    pub fn for_pair(a: &str, b: &str) -> Result<Self, NameError> {
        SegmentName::new(a)?;
        SegmentName::new(b)?;
        let mut joined = heapless::String::<{ 2 * MAX_NAME_LEN + 1 }>::new();
        // Cannot fail: two names of at most MAX_NAME_LEN bytes plus one separator.
        let _ = joined.push_str(a);
        let _ = joined.push('_');
        let _ = joined.push_str(b);
        SegmentName::new(&joined)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for SegmentName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<&str> for SegmentName {
    type Error = NameError;

    fn try_from(name: &str) -> Result<Self, NameError> {
        Self::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_set() {
        for name in ["a", "A-z_0.9", "x..y", "name.", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(SegmentName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(SegmentName::new(""), Err(NameError::Empty));
        assert_eq!(SegmentName::new("."), Err(NameError::LeadingDot));
        assert_eq!(SegmentName::new(".."), Err(NameError::LeadingDot));
        assert_eq!(SegmentName::new(".hidden"), Err(NameError::LeadingDot));
        assert_eq!(
            SegmentName::new("../x"),
            Err(NameError::InvalidChar { ch: '/', index: 2 })
        );
        assert_eq!(
            SegmentName::new("a/b"),
            Err(NameError::InvalidChar { ch: '/', index: 1 })
        );
        assert_eq!(
            SegmentName::new("é"),
            Err(NameError::InvalidChar { ch: 'é', index: 0 })
        );
        for bad in ["a b", "a\0b", "a\nb", "a\\b", "a:b", "a*"] {
            assert!(matches!(
                SegmentName::new(bad),
                Err(NameError::InvalidChar { index: 1, .. })
            ));
        }
        assert_eq!(
            SegmentName::new(&"n".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong {
                len: MAX_NAME_LEN + 1,
                max: MAX_NAME_LEN
            })
        );
    }

    #[test]
    fn pair_names() {
        assert_eq!(
            SegmentName::for_pair("gw", "risk").unwrap().as_str(),
            "gw_risk"
        );
        assert_eq!(
            SegmentName::for_pair("gw", "../x"),
            Err(NameError::InvalidChar { ch: '/', index: 2 })
        );
        let long = "n".repeat(MAX_NAME_LEN);
        assert!(matches!(
            SegmentName::for_pair(&long, "b"),
            Err(NameError::TooLong { .. })
        ));
    }
}
