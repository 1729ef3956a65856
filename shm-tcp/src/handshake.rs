//! The handshake state machine, apart from sockets and files: it is fed the peer's frames and
//! says what to send and when the peer is known (and, with a key, authenticated).
//!
//! The client speaks first: its hello; the acceptor answers with its own (built from the pair's
//! state once the client's names are known), then, with a key, its authentication code; the
//! client checks that and answers with its own code. Without a key the two hellos are all.

use crate::frame::{FrameInfo, Kind};
use crate::hello::{auth_code, auth_matches, Hello, HelloError, MAC_LEN, MAX_HELLO_PAYLOAD};

/// Which side of the handshake this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side that connected: sends its hello first.
    Client,
    /// The side that accepted: answers.
    Acceptor,
}

/// What the handshake wants done after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet: wait for the next frame.
    Wait,
    /// (Acceptor) The client's hello arrived and is well-formed: build this side's hello with
    /// [`Handshake::answer`].
    NeedAnswer,
    /// Send this authentication code (an [`Kind::Auth`] frame), then continue.
    SendAuth([u8; MAC_LEN]),
    /// Send this authentication code, and the handshake is complete.
    SendAuthAndDone([u8; MAC_LEN]),
    /// The handshake is complete: the peer's hello is [`Handshake::peer`].
    Done,
}

/// Why the handshake failed.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer's hello is malformed.
    Hello(HelloError),
    /// The peer refused, with this reason.
    Rejected(String),
    /// A frame of the wrong kind for this point of the handshake.
    Unexpected {
        /// The frame's kind.
        kind: Kind,
        /// What was awaited.
        waiting_for: &'static str,
    },
    /// Authentication failed.
    Authentication(&'static str),
    /// [`Handshake::answer`] was called when no client hello awaited an answer.
    OutOfTurn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    AwaitHello,
    AwaitAnswer,
    AwaitAuth,
    Done,
}

/// One handshake in progress (module docs).
pub struct Handshake {
    side: Side,
    key: Option<Box<[u8]>>,
    own: Box<[u8; MAX_HELLO_PAYLOAD]>,
    own_len: usize,
    peer_bytes: Box<[u8; MAX_HELLO_PAYLOAD]>,
    peer_len: usize,
    peer: Option<Hello>,
    stage: Stage,
}

impl core::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handshake")
            .field("side", &self.side)
            .field("stage", &self.stage)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A client's handshake: `own` is its hello, to be sent first
    /// ([`own_hello`](Self::own_hello)).
    pub fn client(own: &Hello, key: Option<&[u8]>) -> Self {
        let mut hs = Self::new(Side::Client, key);
        hs.own_len = own.encode(&mut hs.own[..]);
        hs
    }

    /// An acceptor's handshake: waits for the client's hello.
    pub fn acceptor(key: Option<&[u8]>) -> Self {
        Self::new(Side::Acceptor, key)
    }

    fn new(side: Side, key: Option<&[u8]>) -> Self {
        Self {
            side,
            key: key.map(Box::from),
            own: Box::new([0; MAX_HELLO_PAYLOAD]),
            own_len: 0,
            peer_bytes: Box::new([0; MAX_HELLO_PAYLOAD]),
            peer_len: 0,
            peer: None,
            stage: Stage::AwaitHello,
        }
    }

    /// This side's hello payload (empty for an acceptor until [`answer`](Self::answer)).
    pub fn own_hello(&self) -> &[u8] {
        &self.own[..self.own_len]
    }

    /// The peer's hello, once received.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// Whether the handshake completed.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Feeds one frame from the peer (`payload`: its payload bytes).
    ///
    /// # Errors
    /// A [`HandshakeError`]; the handshake cannot continue after one.
    pub fn on_frame(&mut self, info: &FrameInfo, payload: &[u8]) -> Result<Step, HandshakeError> {
        if info.kind == Kind::Reject {
            return Err(HandshakeError::Rejected(
                String::from_utf8_lossy(payload).into_owned(),
            ));
        }
        match (self.stage, info.kind) {
            (Stage::AwaitHello, Kind::Hello) => {
                let hello = Hello::decode(payload).map_err(HandshakeError::Hello)?;
                if hello.authenticated != self.key.is_some() {
                    return Err(HandshakeError::Authentication(if self.key.is_some() {
                        "this side requires a pre-shared key, the peer uses none"
                    } else {
                        "the peer uses a pre-shared key, this side has none"
                    }));
                }
                self.peer_bytes[..payload.len()].copy_from_slice(payload);
                self.peer_len = payload.len();
                self.peer = Some(hello);
                match self.side {
                    Side::Acceptor => {
                        self.stage = Stage::AwaitAnswer;
                        Ok(Step::NeedAnswer)
                    }
                    Side::Client if self.key.is_some() => {
                        self.stage = Stage::AwaitAuth;
                        Ok(Step::Wait)
                    }
                    Side::Client => {
                        self.stage = Stage::Done;
                        Ok(Step::Done)
                    }
                }
            }
            (Stage::AwaitAuth, Kind::Auth) => {
                let key = self.key.as_deref().unwrap_or_default();
                let peer = &self.peer_bytes[..self.peer_len];
                let own = &self.own[..self.own_len];
                if !auth_matches(key, peer, own, payload) {
                    return Err(HandshakeError::Authentication(
                        "the peer's authentication code is wrong: the keys differ",
                    ));
                }
                self.stage = Stage::Done;
                Ok(match self.side {
                    Side::Client => Step::SendAuthAndDone(auth_code(key, own, peer)),
                    Side::Acceptor => Step::Done,
                })
            }
            (stage, kind) => Err(HandshakeError::Unexpected {
                kind,
                waiting_for: match stage {
                    Stage::AwaitHello => "the peer's hello",
                    Stage::AwaitAnswer => "this side's answer (nothing from the peer)",
                    Stage::AwaitAuth => "the peer's authentication code",
                    Stage::Done => "nothing (the handshake is over)",
                },
            }),
        }
    }

    /// (Acceptor) Sets this side's hello, once the client's hello said who it is; returns what
    /// to send after the hello.
    ///
    /// # Errors
    /// [`HandshakeError::OutOfTurn`] unless the client's hello has just arrived
    /// ([`Step::NeedAnswer`]); the handshake is left as it was.
    pub fn answer(&mut self, own: &Hello) -> Result<Step, HandshakeError> {
        if self.stage != Stage::AwaitAnswer {
            return Err(HandshakeError::OutOfTurn);
        }
        self.own_len = own.encode(&mut self.own[..]);
        match self.key.as_deref() {
            Some(key) => {
                self.stage = Stage::AwaitAuth;
                let code = auth_code(
                    key,
                    &self.own[..self.own_len],
                    &self.peer_bytes[..self.peer_len],
                );
                Ok(Step::SendAuth(code))
            }
            None => {
                self.stage = Stage::Done;
                Ok(Step::Done)
            }
        }
    }
}
