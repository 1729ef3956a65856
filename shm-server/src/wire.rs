//! The login protocol on the server's Unix socket: one fixed-size request from the client, one
//! fixed-size answer from the server, then the socket stays open (and silent but for a logout)
//! for the life of the connection, so either side sees the other's death at once.
//!
//! Both records are little-endian and fixed-size, so a reader knows from the first byte how much
//! to expect and a half-sent record is simply incomplete (the login timeout drops it). Every field
//! is checked before use: magic, version, kind, lengths, name characters, reserved bytes. A
//! record that fails a check is a [`WireError`] naming the field and the numbers.
//!
//! | offset | size | request field | answer field |
//! |---:|---:|---|---|
//! | 0 | 8 | magic `SHMLOGIN` | magic `SHMANSWR` |
//! | 8 | 2 | protocol version | protocol version |
//! | 10 | 2 | kind (1 login, 2 logout) | status (0 accepted, 1 rejected, 2 retry later, 3 capacity mismatch, 4 already logged in) |
//! | 12 | 4 | reserved, 0 | group (accepted) |
//! | 16 | 8 | channel capacity the client was built with | the server's channel capacity |
//! | 24 | 2 | client name length | server name length |
//! | 26 | 2 | last known server name length (0: none) | reason length |
//! | 28 | 4 | reserved, 0 | holder pid (already logged in) |
//! | 32 | 200 | client name | server name |
//! | 232 | 200 | last known server name | reason (200 bytes, cut at a character boundary) |

use core::fmt;

use shm_channel::{SegmentName, MAX_NAME_LEN};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of both records on the wire.
pub const RECORD_LEN: usize = 432;

const REQUEST_MAGIC: [u8; 8] = *b"SHMLOGIN";
const ANSWER_MAGIC: [u8; 8] = *b"SHMANSWR";
const NAME_AT: usize = 32;
const SECOND_AT: usize = NAME_AT + MAX_NAME_LEN;
/// Longest reason an answer carries, in bytes.
pub const MAX_REASON_LEN: usize = MAX_NAME_LEN;

const _: () = assert!(SECOND_AT + MAX_NAME_LEN == RECORD_LEN);

/// What a client asks on the login socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // decoded once per login, on the stack
pub enum ClientRecord {
    /// Log in (or back in) as `name`.
    Login(LoginHello),
    /// End the connection cleanly; the session (its segment and unconsumed messages) stays.
    Logout,
}

/// A login request as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginHello {
    /// The client's name: one half of the session's name pair.
    pub name: SegmentName,
    /// The server name the client last logged in to, if it knows one.
    pub last_server: Option<SegmentName>,
    /// The channel capacity (`C`) the client was built with.
    pub capacity: u64,
}

/// How the server answered a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Admitted into `group`; the session's segment is `<folder>/<server>/<client name>`.
    Accepted {
        /// The server's (session) name.
        server: SegmentName,
        /// The group the connection was put in.
        group: u32,
    },
    /// Refused by the server's login check or its limits, with the reason.
    Rejected {
        /// The server's name.
        server: SegmentName,
        /// Why, in words meant for the client's operator.
        reason: String,
    },
    /// The server cannot take the login right now (the previous connection of this name is
    /// still being closed); try again shortly.
    RetryLater {
        /// The server's name.
        server: SegmentName,
        /// Why.
        reason: String,
    },
    /// The client's channel capacity differs from the server's.
    CapacityMismatch {
        /// The server's name.
        server: SegmentName,
        /// The server's channel capacity.
        server_capacity: u64,
    },
    /// A live connection already holds this client name.
    AlreadyLoggedIn {
        /// The server's name.
        server: SegmentName,
        /// The pid the live login came from.
        holder_pid: u32,
    },
}

/// A login record that is not what the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The first 8 bytes are not the record's magic: not a client of this protocol.
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// Another protocol version.
    Version {
        /// The version found.
        found: u16,
        /// The version this side speaks.
        expected: u16,
    },
    /// An unknown kind or status code.
    Kind {
        /// The code found.
        found: u16,
    },
    /// A length field larger than its field, or zero where a name is required.
    Length {
        /// Which field.
        field: &'static str,
        /// The length found.
        found: u16,
        /// The largest allowed.
        max: usize,
    },
    /// A name with characters a segment name may not hold.
    Name {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A reserved field or the bytes past a name's length are not zero.
    Reserved {
        /// Which field.
        field: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { found } => write!(
                f,
                "login record starts with {found:02x?}, not this protocol's magic: the peer is not a shm-server client or server"
            ),
            Self::Version { found, expected } => write!(
                f,
                "login protocol version {found}, but this side speaks version {expected}: upgrade the older side"
            ),
            Self::Kind { found } => write!(f, "unknown login record kind or status {found}"),
            Self::Length { field, found, max } => {
                write!(f, "login record field {field} claims {found} bytes; 1 to {max} are allowed")
            }
            Self::Name { field, reason } => write!(f, "login record field {field}: {reason}"),
            Self::Reserved { field } => {
                write!(f, "login record field {field} has non-zero reserved bytes")
            }
        }
    }
}

impl std::error::Error for WireError {}

fn put_u16(buf: &mut [u8; RECORD_LEN], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
}
fn put_u32(buf: &mut [u8; RECORD_LEN], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn put_u64(buf: &mut [u8; RECORD_LEN], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
fn get_u16(buf: &[u8; RECORD_LEN], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn get_u32(buf: &[u8; RECORD_LEN], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn get_u64(buf: &[u8; RECORD_LEN], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Writes `bytes` at `at`, its length at `len_at`.
fn put_text(buf: &mut [u8; RECORD_LEN], at: usize, len_at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
    put_u16(buf, len_at, bytes.len() as u16);
}

/// The text field at `at` whose length is at `len_at`: at most `max` bytes, the rest zero.
fn get_text<'a>(
    buf: &'a [u8; RECORD_LEN],
    at: usize,
    len_at: usize,
    field: &'static str,
    allow_empty: bool,
) -> Result<&'a [u8], WireError> {
    let len = get_u16(buf, len_at);
    if usize::from(len) > MAX_NAME_LEN || (len == 0 && !allow_empty) {
        return Err(WireError::Length {
            field,
            found: len,
            max: MAX_NAME_LEN,
        });
    }
    let (text, rest) = buf[at..at + MAX_NAME_LEN].split_at(usize::from(len));
    if rest.iter().any(|&byte| byte != 0) {
        return Err(WireError::Reserved { field });
    }
    Ok(text)
}

fn get_name(
    buf: &[u8; RECORD_LEN],
    at: usize,
    len_at: usize,
    field: &'static str,
) -> Result<SegmentName, WireError> {
    let text = get_text(buf, at, len_at, field, false)?;
    let text = core::str::from_utf8(text).map_err(|_| WireError::Name {
        field,
        reason: "not UTF-8".into(),
    })?;
    SegmentName::new(text).map_err(|error| WireError::Name {
        field,
        reason: error.to_string(),
    })
}

fn check_head(buf: &[u8; RECORD_LEN], magic: [u8; 8]) -> Result<(), WireError> {
    let mut found = [0; 8];
    found.copy_from_slice(&buf[..8]);
    if found != magic {
        return Err(WireError::BadMagic { found });
    }
    let version = get_u16(buf, 8);
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            found: version,
            expected: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

impl ClientRecord {
    /// The record as sent.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut buf = [0; RECORD_LEN];
        buf[..8].copy_from_slice(&REQUEST_MAGIC);
        put_u16(&mut buf, 8, PROTOCOL_VERSION);
        match self {
            Self::Login(hello) => {
                put_u16(&mut buf, 10, 1);
                put_u64(&mut buf, 16, hello.capacity);
                put_text(&mut buf, NAME_AT, 24, hello.name.as_str().as_bytes());
                if let Some(last) = &hello.last_server {
                    put_text(&mut buf, SECOND_AT, 26, last.as_str().as_bytes());
                }
            }
            Self::Logout => put_u16(&mut buf, 10, 2),
        }
        buf
    }

    /// Checks and reads a client's record.
    ///
    /// # Errors
    /// A [`WireError`] for the first field that breaks the protocol.
    pub fn decode(buf: &[u8; RECORD_LEN]) -> Result<Self, WireError> {
        check_head(buf, REQUEST_MAGIC)?;
        if get_u32(buf, 12) != 0 || get_u32(buf, 28) != 0 {
            return Err(WireError::Reserved { field: "reserved" });
        }
        match get_u16(buf, 10) {
            1 => {
                let name = get_name(buf, NAME_AT, 24, "client name")?;
                let last_server = if get_u16(buf, 26) == 0 {
                    get_text(buf, SECOND_AT, 26, "last server name", true)?;
                    None
                } else {
                    Some(get_name(buf, SECOND_AT, 26, "last server name")?)
                };
                Ok(Self::Login(LoginHello {
                    name,
                    last_server,
                    capacity: get_u64(buf, 16),
                }))
            }
            2 => {
                if buf[16..].iter().any(|&byte| byte != 0) {
                    return Err(WireError::Reserved { field: "logout" });
                }
                Ok(Self::Logout)
            }
            found => Err(WireError::Kind { found }),
        }
    }
}

/// `reason` cut to [`MAX_REASON_LEN`] bytes at a character boundary.
fn cut_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Answer {
    /// The server's name the answer carries.
    pub fn server(&self) -> &SegmentName {
        match self {
            Self::Accepted { server, .. }
            | Self::Rejected { server, .. }
            | Self::RetryLater { server, .. }
            | Self::CapacityMismatch { server, .. }
            | Self::AlreadyLoggedIn { server, .. } => server,
        }
    }

    /// The record as sent; a reason longer than [`MAX_REASON_LEN`] bytes is cut.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut buf = [0; RECORD_LEN];
        buf[..8].copy_from_slice(&ANSWER_MAGIC);
        put_u16(&mut buf, 8, PROTOCOL_VERSION);
        put_text(&mut buf, NAME_AT, 24, self.server().as_str().as_bytes());
        match self {
            Self::Accepted { group, .. } => {
                put_u16(&mut buf, 10, 0);
                put_u32(&mut buf, 12, *group);
            }
            Self::Rejected { reason, .. } => {
                put_u16(&mut buf, 10, 1);
                put_text(&mut buf, SECOND_AT, 26, cut_reason(reason).as_bytes());
            }
            Self::RetryLater { reason, .. } => {
                put_u16(&mut buf, 10, 2);
                put_text(&mut buf, SECOND_AT, 26, cut_reason(reason).as_bytes());
            }
            Self::CapacityMismatch {
                server_capacity, ..
            } => {
                put_u16(&mut buf, 10, 3);
                put_u64(&mut buf, 16, *server_capacity);
            }
            Self::AlreadyLoggedIn { holder_pid, .. } => {
                put_u16(&mut buf, 10, 4);
                put_u32(&mut buf, 28, *holder_pid);
            }
        }
        buf
    }

    /// Checks and reads the server's answer.
    ///
    /// # Errors
    /// A [`WireError`] for the first field that breaks the protocol.
    pub fn decode(buf: &[u8; RECORD_LEN]) -> Result<Self, WireError> {
        check_head(buf, ANSWER_MAGIC)?;
        let server = get_name(buf, NAME_AT, 24, "server name")?;
        let reason = || -> Result<String, WireError> {
            let text = get_text(buf, SECOND_AT, 26, "reason", true)?;
            // Bytes that are not UTF-8 become U+FFFD (3 bytes each), which can grow the text
            // past the field: cut it again, so the value re-encodes to itself.
            Ok(cut_reason(&String::from_utf8_lossy(text)).to_owned())
        };
        let status = get_u16(buf, 10);
        let (group, capacity, pid) = (get_u32(buf, 12), get_u64(buf, 16), get_u32(buf, 28));
        let unused_zero = |group_used: bool, capacity_used: bool, pid_used: bool| {
            if (!group_used && group != 0)
                || (!capacity_used && capacity != 0)
                || (!pid_used && pid != 0)
            {
                Err(WireError::Reserved { field: "answer" })
            } else {
                Ok(())
            }
        };
        let no_reason = || {
            get_text(buf, SECOND_AT, 26, "reason", true).and_then(|text| {
                if text.is_empty() {
                    Ok(())
                } else {
                    Err(WireError::Reserved { field: "reason" })
                }
            })
        };
        match status {
            0 => {
                unused_zero(true, false, false)?;
                no_reason()?;
                Ok(Self::Accepted { server, group })
            }
            1 => {
                unused_zero(false, false, false)?;
                Ok(Self::Rejected {
                    reason: reason()?,
                    server,
                })
            }
            2 => {
                unused_zero(false, false, false)?;
                Ok(Self::RetryLater {
                    reason: reason()?,
                    server,
                })
            }
            3 => {
                unused_zero(false, true, false)?;
                no_reason()?;
                Ok(Self::CapacityMismatch {
                    server,
                    server_capacity: capacity,
                })
            }
            4 => {
                unused_zero(false, false, true)?;
                no_reason()?;
                Ok(Self::AlreadyLoggedIn {
                    server,
                    holder_pid: pid,
                })
            }
            found => Err(WireError::Kind { found }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> SegmentName {
        SegmentName::new(text).unwrap()
    }

    #[test]
    fn records_round_trip() {
        for record in [
            ClientRecord::Login(LoginHello {
                name: name("trader-1"),
                last_server: Some(name("gateway.2026-12-02")),
                capacity: 65536,
            }),
            ClientRecord::Login(LoginHello {
                name: name(&"n".repeat(MAX_NAME_LEN)),
                last_server: None,
                capacity: 1,
            }),
            ClientRecord::Logout,
        ] {
            assert_eq!(ClientRecord::decode(&record.encode()), Ok(record));
        }
        let server = name("gw");
        for answer in [
            Answer::Accepted {
                server: server.clone(),
                group: 3,
            },
            Answer::Rejected {
                server: server.clone(),
                reason: "not on the list".into(),
            },
            Answer::RetryLater {
                server: server.clone(),
                reason: String::new(),
            },
            Answer::CapacityMismatch {
                server: server.clone(),
                server_capacity: 4096,
            },
            Answer::AlreadyLoggedIn {
                server,
                holder_pid: 42,
            },
        ] {
            assert_eq!(Answer::decode(&answer.encode()), Ok(answer));
        }
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(150); // 300 bytes
        let answer = Answer::Rejected {
            server: name("gw"),
            reason,
        };
        let Ok(Answer::Rejected { reason, .. }) = Answer::decode(&answer.encode()) else {
            panic!("not a rejection");
        };
        assert_eq!(reason, "é".repeat(100));
    }

    #[test]
    fn a_reason_that_is_not_utf8_decodes_within_the_field_and_round_trips() {
        // Found by fuzz/fuzz_targets/login_records.rs: 200 bytes of which some are not UTF-8
        // decoded to a longer reason (each bad byte is 3 bytes of U+FFFD), which re-encoded cut,
        // so to another value.
        let mut buf = Answer::Rejected {
            server: name("gw"),
            reason: "x".repeat(MAX_REASON_LEN),
        }
        .encode();
        buf[SECOND_AT..SECOND_AT + 8].fill(0xff);
        let answer = Answer::decode(&buf).unwrap();
        let Answer::Rejected { reason, .. } = &answer else {
            panic!("not a rejection");
        };
        assert!(reason.len() <= MAX_REASON_LEN);
        assert!(reason.starts_with('\u{fffd}'));
        assert_eq!(Answer::decode(&answer.encode()), Ok(answer));
    }

    #[test]
    fn every_bad_field_is_named() {
        let good = ClientRecord::Logout.encode();
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::BadMagic { .. })
        ));
        let mut bad = good;
        bad[8] = 9;
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::Version { found: 9, .. })
        ));
        let mut bad = good;
        bad[10] = 7;
        assert_eq!(
            ClientRecord::decode(&bad),
            Err(WireError::Kind { found: 7 })
        );
        let mut bad = good;
        bad[300] = 1;
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::Reserved { .. })
        ));

        let login = ClientRecord::Login(LoginHello {
            name: name("a"),
            last_server: None,
            capacity: 8,
        })
        .encode();
        let mut bad = login;
        put_u16(&mut bad, 24, 0);
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::Length { .. })
        ));
        let mut bad = login;
        put_u16(&mut bad, 24, 201);
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::Length { found: 201, .. })
        ));
        let mut bad = login;
        bad[NAME_AT] = b'/';
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::Name { .. })
        ));
        let mut bad = login;
        bad[NAME_AT + 1] = b'x'; // past the name's length
        assert!(matches!(
            ClientRecord::decode(&bad),
            Err(WireError::Reserved { .. })
        ));
        // An answer is not a request.
        let answer = Answer::Accepted {
            server: name("gw"),
            group: 0,
        }
        .encode();
        assert!(matches!(
            ClientRecord::decode(&answer),
            Err(WireError::BadMagic { .. })
        ));
    }
}
