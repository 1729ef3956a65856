//! The handshake of a connection: the hellos, the checks of both sides' states, the session,
//! and what a refused combination does.

use std::net::SocketAddr;
use std::path::PathBuf;

use rustix::io::Errno;
use shm_channel::SegmentName;

use super::{Connection, LinkState, Role, CTRL_CAP};
use crate::error::ConnectionError;
use crate::frame::{self, FrameInfo, Kind, ACK_SIZE, FRAME_OVERHEAD};
use crate::handshake::{HandshakeError, Step};
use crate::hello::{check_streams, Hello, RecoveryError};
use crate::login::{LoginParts, PendingLogin};
use crate::options::ConnectionOptions;
use crate::options::RecoveryPolicy;
use crate::queue::SendQueue;

impl<const C: usize> Connection<C> {
    /// The accepting side's connection of a pair, made from the pair's first login: opens (or
    /// creates) the pair's persisted queue in `options`' folder, named after the login's
    /// acceptor and client names (`<acceptor>_<client>`, with its `.lock`), in the login's
    /// acceptor session, then applies the login as [`take_login`](Self::take_login) does.
    /// Returns the connection, `Handshaking` (or already `Connected` without a key), and where a
    /// state file of another session was moved (a new session starts every pair afresh: the old
    /// file is renamed `<name>.<nanoseconds>.stale`).
    ///
    /// `options` must have the key the [`LoginListener`](crate::LoginListener) was bound with.
    /// Cost: the file's open (or creation) and map, the pair's lock, a receive buffer
    /// ([`ConnectionOptions::receive_buffer`](crate::ConnectionOptions::receive_buffer)); then
    /// the handshake's writes. `now` is the caller's clock (as for [`poll`](Self::poll)).
    ///
    /// # Errors
    /// [`ConnectionError::Queue`]: an invalid pair name, a pair in use (by another live process
    /// or another connection of this one: [`QueueError::InUse`](crate::QueueError::InUse)), a
    /// wrong, truncated or corrupt state file (never re-initialised), or a failed move aside.
    /// The client is then refused with the error's text (it receives it as
    /// [`ConnectionError::Rejected`]). A failure of the handshake itself is reported by the
    /// connection's next `poll`, as for `take_login`.
    pub fn from_login(
        login: PendingLogin,
        options: &ConnectionOptions,
        now: u64,
    ) -> Result<(Self, Option<PathBuf>), ConnectionError> {
        let made = Self::accepted(
            login.acceptor_name().clone(),
            login.client_name().clone(),
            login.acceptor_session(),
            options,
        );
        match made {
            Ok((mut conn, moved)) => {
                conn.take_socket(login, now);
                Ok((conn, moved))
            }
            Err(error) => {
                let _ = login.reject(&error.to_string()); // best effort
                Err(error)
            }
        }
    }

    /// Applies a client's login again to its pair's accepting connection (made by
    /// [`from_login`](Self::from_login) or an [`Acceptor`](crate::Acceptor)), whatever its
    /// state: any socket it still had is closed first (the client logged in again, so the old
    /// and new streams never interleave), its receive buffer is forgotten (the client resends
    /// what this side did not pop), and the handshake continues on the new socket with this
    /// side's hello (numbers from the queue). Nothing queued is lost: after the handshake both
    /// sides resend exactly what the other did not pop. `now` is the caller's clock.
    ///
    /// Cost: one hello built and written (a `write`), the bytes that followed the client's
    /// hello parsed; no allocation but an error's text. The login's buffers are freed.
    ///
    /// # Errors
    /// [`ConnectionError::Misrouted`] if the login is not this pair's (its client and acceptor
    /// names are not this connection's remote and local names) or this is a client's
    /// connection: the client is refused, this connection is left as it was. A failure of the
    /// handshake (the numbers, the session, the authentication code) is this connection's:
    /// its next [`poll`](Self::poll) reports it, as when one happens within `poll`.
    pub fn take_login(&mut self, login: PendingLogin, now: u64) -> Result<(), ConnectionError> {
        let ours = matches!(self.role, Role::Accepted)
            && login.client_name() == &self.remote
            && login.acceptor_name() == &self.local;
        if !ours {
            let error = ConnectionError::Misrouted {
                peer: Some(login.peer()),
                login: format!("{}_{}", login.acceptor_name(), login.client_name()),
                connection: format!("{}_{}", self.local, self.remote),
            };
            let _ = login.reject(&error.to_string()); // best effort
            return Err(error);
        }
        self.take_socket(login, now);
        Ok(())
    }

    /// Takes `login`'s socket, hello and following bytes; a failure is the next `poll`'s to
    /// report.
    fn take_socket(&mut self, login: PendingLogin, now: u64) {
        self.now = now;
        self.disconnect_at(now);
        let LoginParts {
            stream,
            peer,
            mut handshake,
            rest,
            rest_len,
            ..
        } = *login.0;
        let rest = &rest[..rest_len];
        let result = (|| {
            self.stream = Some(stream);
            self.peer = Some(peer);
            self.state = LinkState::Handshaking;
            self.state_at = now;
            self.last_rx = now;
            let hello = self.own_hello();
            let step = handshake
                .answer(&hello)
                .map_err(|error| handshake_error(Some(peer), error))?;
            self.push_ctrl(Kind::Hello, 0, handshake.own_hello());
            self.handshake = Some(handshake);
            match step {
                Step::SendAuth(code) => self.push_ctrl(Kind::Auth, 0, &code),
                Step::Done => self.finish_handshake()?,
                _ => {}
            }
            let room = self.recv.free_space();
            if rest.len() > room.len() {
                return Err(ConnectionError::Protocol {
                    peer: Some(peer),
                    reason: "sent more than a receive buffer before the handshake ended".into(),
                });
            }
            room[..rest.len()].copy_from_slice(rest);
            self.recv.wrote(rest.len());
            self.parse()?;
            self.flush()
        })();
        if let Err(error) = result {
            let _ = self.flush();
            // The login was handed over, so (as when the handshake completes in `poll`, with a
            // key) its failure is this connection's to report, at its next `poll`, while the
            // acceptor reports the login and any state file it moved aside for it.
            self.fail(error);
        }
    }

    pub(super) fn own_hello(&self) -> Hello {
        let state = self.queue.stream_state();
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce);
        Hello {
            authenticated: self.options.key.is_some(),
            max_payload: Self::MAX_PAYLOAD,
            first_unacked: state.first_unacked,
            next_seq: state.next_seq,
            popped: state.popped,
            nonce,
            name: self.local.clone(),
            peer_name: self.remote.clone(),
            session: self.queue.session(),
        }
    }

    pub(super) fn on_handshake_frame(&mut self, info: &FrameInfo) -> Result<(), ConnectionError> {
        let peer = self.peer;
        let Some(handshake) = self.handshake.as_mut() else {
            return Err(ConnectionError::Protocol {
                peer,
                reason: "frame before the handshake started".into(),
            });
        };
        let payload =
            &self.recv.unparsed()[FRAME_OVERHEAD..FRAME_OVERHEAD + info.payload_len as usize];
        let step = match handshake.on_frame(info, payload) {
            Ok(step) => step,
            // With a key, the acceptor's side waits for the client's code after sending its own:
            // a refusal then is the client's verdict on that code.
            Err(HandshakeError::Rejected(_))
                if matches!(self.role, Role::Accepted) && self.options.key.is_some() =>
            {
                return Err(ConnectionError::Authentication {
                    peer,
                    reason: "the peer refused this side's authentication code: the keys differ",
                });
            }
            Err(error) => {
                let error = handshake_error(peer, error);
                if let ConnectionError::Authentication { reason, .. } = error {
                    // The peer waits for this side's code: tell it why none comes.
                    self.reject(reason);
                }
                return Err(error);
            }
        };
        match step {
            Step::Wait => Ok(()),
            Step::SendAuth(code) => {
                self.push_ctrl(Kind::Auth, 0, &code);
                Ok(())
            }
            Step::SendAuthAndDone(code) => {
                self.push_ctrl(Kind::Auth, 0, &code);
                self.finish_handshake()
            }
            Step::Done => self.finish_handshake(),
            Step::NeedAnswer => Err(ConnectionError::Protocol {
                peer,
                reason: "a second hello".into(),
            }),
        }
    }

    /// Both hellos are in (and authenticated): check the peer and the two states, then resume.
    pub(super) fn finish_handshake(&mut self) -> Result<(), ConnectionError> {
        let peer_addr = self.peer;
        let hello = self
            .handshake
            .take()
            .and_then(|h| h.peer().cloned())
            .expect("a completed handshake has the peer's hello");
        let names = [
            (self.remote.clone(), &hello.name),
            (self.local.clone(), &hello.peer_name),
        ];
        for (expected, found) in names {
            if &expected != found {
                let reason = format!("expected \"{expected}\", not \"{found}\"");
                self.reject(&reason);
                return Err(ConnectionError::WrongPeer {
                    peer: peer_addr,
                    expected: expected.to_string(),
                    found: found.to_string(),
                });
            }
        }
        if hello.max_payload > self.options.max_recv_payload {
            let error = ConnectionError::MessageSizeMismatch {
                peer: peer_addr,
                peer_max: hello.max_payload,
                our_max: self.options.max_recv_payload,
            };
            self.reject(&error.to_string());
            return Err(error);
        }
        let ours = self.queue.stream_state();
        let theirs = crate::hello::StreamState {
            first_unacked: hello.first_unacked,
            next_seq: hello.next_seq,
            popped: hello.popped,
        };
        let verdict = self
            .check_session(&hello, &ours)
            .and_then(|()| check_streams(&ours, &theirs));
        if let Err(error) = verdict {
            self.reject(&error.to_string());
            let session_mismatch = matches!(error, RecoveryError::SessionMismatch { .. });
            let moved_to = match (self.options.policy, &self.role) {
                (RecoveryPolicy::StartAfresh, Role::Client { .. }) => {
                    Some(self.start_afresh(hello.session.as_ref())?)
                }
                (RecoveryPolicy::StartAfresh, Role::Accepted) if !session_mismatch => {
                    let session = self.queue.session();
                    Some(self.start_afresh(session.as_ref())?)
                }
                _ => None,
            };
            if moved_to.is_some() {
                if let Role::Client { backoff_ns, .. } = &mut self.role {
                    *backoff_ns = 0; // retry at once, with the fresh state
                }
            }
            return Err(ConnectionError::Recovery {
                peer: peer_addr,
                error,
                moved_to,
            });
        }
        if self.queue.session().is_none() {
            if let Some(session) = &hello.session {
                self.queue.set_session(session);
            }
        }
        // Drop what the peer popped (checked to lie in our unacknowledged range), resend the rest.
        self.queue.ack(hello.popped)?;
        self.cursor = self.queue.resend_cursor();
        self.partial = 0;
        self.stats.resent += self.queue.stream_state().next_seq - hello.popped;
        self.expected_seq = self.queue.popped();
        self.ack_sent = self.queue.popped();
        self.unacked_bytes = 0;
        self.unsent = true; // the resend
        self.ack_threshold = ((hello.max_payload as usize + FRAME_OVERHEAD) / 2).max(ACK_SIZE);
        self.state = LinkState::Connected;
        self.state_at = self.now;
        self.last_rx = self.now;
        self.stats.handshakes += 1;
        if let Role::Client { backoff_ns, .. } = &mut self.role {
            *backoff_ns = self.options.reconnect_min_ns;
        }
        Ok(())
    }

    pub(super) fn check_session(
        &self,
        hello: &Hello,
        ours: &crate::hello::StreamState,
    ) -> Result<(), RecoveryError> {
        let text =
            |s: Option<&SegmentName>| s.map_or_else(|| "(none)".to_owned(), |s| s.to_string());
        let mine = self.queue.session();
        let fresh = ours.popped == 0 && ours.first_unacked == 0;
        let agree = match (&self.role, &mine, &hello.session) {
            (Role::Client { .. }, None, Some(_)) => fresh,
            (Role::Client { .. }, Some(a), Some(b)) => a == b,
            (Role::Client { .. }, _, None) => false,
            (Role::Accepted, Some(_), None) => true,
            (Role::Accepted, Some(a), Some(b)) => a == b,
            (Role::Accepted, None, _) => false,
        };
        if agree {
            Ok(())
        } else {
            Err(RecoveryError::SessionMismatch {
                ours: text(mine.as_ref()),
                theirs: text(hello.session.as_ref()),
            })
        }
    }

    /// Moves the state file aside and starts the pair from nothing.
    pub(super) fn start_afresh(
        &mut self,
        session: Option<&SegmentName>,
    ) -> Result<std::path::PathBuf, ConnectionError> {
        let moved = self.queue.move_aside(self.now)?;
        let fresh = SendQueue::open(
            &self.options.dir,
            &self.local,
            &self.remote,
            session,
            self.options.durability,
        )?;
        self.queue = fresh;
        self.cursor = self.queue.resend_cursor();
        self.expected_seq = 0;
        self.ack_sent = 0;
        Ok(moved)
    }

    /// Tells the peer why (best effort: the connection ends anyway).
    pub(super) fn reject(&mut self, reason: &str) {
        let reason = frame::reject_reason(reason);
        if self.ctrl_end + frame::frame_size(reason.len() as u32) <= CTRL_CAP {
            self.push_ctrl(Kind::Reject, 0, reason);
        }
        let _ = self.write_out(false); // the reject only, no data after it
    }
}

pub(crate) fn handshake_error(peer: Option<SocketAddr>, error: HandshakeError) -> ConnectionError {
    match error {
        HandshakeError::Hello(error) => ConnectionError::Hello { peer, error },
        HandshakeError::Rejected(reason) => ConnectionError::Rejected { peer, reason },
        HandshakeError::Unexpected { kind, waiting_for } => ConnectionError::Protocol {
            peer,
            reason: format!("a {kind:?} frame while waiting for {waiting_for}"),
        },
        HandshakeError::Authentication(reason) => ConnectionError::Authentication { peer, reason },
        HandshakeError::OutOfTurn => ConnectionError::Protocol {
            peer,
            reason: "the handshake was answered out of turn".into(),
        },
    }
}

pub(crate) fn fill_random(out: &mut [u8]) {
    let mut filled = 0;
    while filled < out.len() {
        match rustix::rand::getrandom(&mut out[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(_) => {
                // No entropy source: a nonce from the clock and pid still differs per hello.
                let seed = shm_channel::monotonic_nanos() ^ u64::from(std::process::id()) << 32;
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = (seed.rotate_left(i as u32 * 8) as u8) ^ i as u8;
                }
                return;
            }
        }
    }
}
