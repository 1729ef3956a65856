//! The byte stream: writing control frames and queued records, reading and checking frames.

use std::io::{IoSlice, Read, Write};

use super::{Connection, LinkState};
use crate::error::ConnectionError;
use crate::frame::{self, FrameInfo, Kind, FRAME_OVERHEAD};
use crate::options::ConnectionOptions;

impl<const C: usize> Connection<C> {
    pub(super) fn push_ctrl(&mut self, kind: Kind, seq: u64, payload: &[u8]) {
        let end = self.ctrl_end;
        let size = frame::write_control(&mut self.ctrl[end..], kind, seq, payload);
        self.ctrl_end += size;
        self.unsent = true;
    }

    /// Queues an ack frame with the current pop count (also the heartbeat).
    pub(super) fn queue_ack(&mut self) {
        let popped = self.queue.popped();
        self.push_ctrl(Kind::Ack, popped, &[]);
        self.ack_sent = popped;
        self.unacked_bytes = 0;
    }

    /// Writes pending control frames and (connected) queued records, until done or the socket
    /// is full. One write per round (a `send`, or a `writev` for a control frame and data); a push normally needs one round.
    pub(super) fn flush(&mut self) -> Result<(), ConnectionError> {
        self.write_out(self.state == LinkState::Connected)
    }

    /// Writes pending control frames, and queued records (with their ack) when `data`.
    pub(super) fn write_out(&mut self, data: bool) -> Result<(), ConnectionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let connected = data;
        loop {
            // The ack rides in front of a write once a sixteenth of the standalone threshold was
            // popped: often enough that the peer's queue never waits on it, rarely enough that
            // neither side parses and applies one per message.
            if connected
                && self.ctrl_start == self.ctrl_end
                && self.queue.popped() != self.ack_sent
                && self.unacked_bytes >= self.ack_threshold / 16
            {
                let popped = self.queue.popped();
                let size = frame::write_control(&mut self.ctrl[..], Kind::Ack, popped, &[]);
                (self.ctrl_start, self.ctrl_end) = (0, size);
                self.ack_sent = popped;
                self.unacked_bytes = 0;
            }
            // A data frame partly written goes out whole first: a control frame (an ack, a
            // heartbeat) written now would land inside it on the wire.
            let ctrl = if self.partial > 0 {
                &[][..]
            } else {
                &self.ctrl[self.ctrl_start..self.ctrl_end]
            };
            let run = if connected {
                Some(self.queue.run(self.cursor, self.options.max_write)?)
            } else {
                None
            };
            let data = match &run {
                Some(run) => {
                    let bytes = run.bytes();
                    let rest = &bytes[self.partial.min(bytes.len())..];
                    if self.partial > 0 && self.ctrl_start != self.ctrl_end {
                        // Only the partly written record, so the waiting control frame (an ack
                        // the peer's queue may wait for) follows right after it.
                        let size = frame::size_from_header(bytes);
                        &rest[..size.saturating_sub(self.partial).min(rest.len())]
                    } else {
                        rest
                    }
                }
                None => &[][..],
            };
            if ctrl.is_empty() && data.is_empty() {
                self.unsent = false;
                return Ok(());
            }
            let total = ctrl.len() + data.len();
            // One slice is a plain `send`; two, a `writev`.
            let result = if ctrl.is_empty() {
                stream.write(data)
            } else if data.is_empty() {
                stream.write(ctrl)
            } else {
                stream.write_vectored(&[IoSlice::new(ctrl), IoSlice::new(data)])
            };
            let written = match result {
                Ok(0) => {
                    return Err(ConnectionError::Closed { peer: self.peer });
                }
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(ConnectionError::Io {
                        op: "writing",
                        peer: self.peer,
                        error,
                    })
                }
            };
            self.stats.writes += 1;
            let from_ctrl = written.min(ctrl.len());
            let from_data = written - from_ctrl;
            if let (true, Some(run)) = (from_data > 0, &run) {
                let (cursor, partial) =
                    if from_data == data.len() && data.len() + self.partial == run.bytes().len() {
                        (run.end(), 0) // all of it: no walk to find where it ends
                    } else {
                        run.cursor_after(self.partial + from_data)
                    };
                self.cursor = cursor;
                self.partial = partial;
            }
            self.ctrl_start += from_ctrl;
            if self.ctrl_start == self.ctrl_end {
                (self.ctrl_start, self.ctrl_end) = (0, 0);
            }
            self.tx_seen = true;
            if written < total {
                return Ok(()); // the socket's buffer is full: the next poll continues
            }
        }
    }

    /// Reads once from the socket into the receive buffer and handles every complete frame.
    pub(super) fn receive(&mut self) -> Result<(), ConnectionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let room = self.recv.free_space();
        if room.is_empty() {
            // Full: TCP's flow control holds the peer back until pops make room. The peer's
            // silence is then ours, not a sign that it is gone.
            self.rx_seen = true;
            return Ok(());
        }
        match stream.read(room) {
            Ok(0) => return Err(ConnectionError::Closed { peer: self.peer }),
            Ok(n) => {
                self.recv.wrote(n);
                self.rx_seen = true;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(error) => {
                return Err(ConnectionError::Io {
                    op: "reading",
                    peer: self.peer,
                    error,
                })
            }
        }
        self.parse()
    }

    /// Checks and handles every complete frame received.
    pub(super) fn parse(&mut self) -> Result<(), ConnectionError> {
        loop {
            let start = self.recv.parse_position();
            let info = match frame::decode(self.recv.unparsed(), self.options.max_recv_payload) {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(ConnectionError::Frame {
                        peer: self.peer,
                        error,
                    })
                }
            };
            match self.state {
                LinkState::Connected => self.on_frame(&info, start)?,
                LinkState::Handshaking => {
                    self.on_handshake_frame(&info)?;
                    self.recv.parsed(info.size);
                    self.recv.release(info.size);
                }
                LinkState::Disconnected | LinkState::Connecting => return Ok(()),
            }
        }
    }

    pub(super) fn on_frame(
        &mut self,
        info: &FrameInfo,
        start: usize,
    ) -> Result<(), ConnectionError> {
        match info.kind {
            Kind::Data => {
                if info.seq != self.expected_seq {
                    return Err(ConnectionError::Protocol {
                        peer: self.peer,
                        reason: format!(
                            "data frame with sequence number {} where {} was due",
                            info.seq, self.expected_seq
                        ),
                    });
                }
                self.expected_seq += 1;
                self.stats.frames_received += 1;
                self.recv.parsed(info.size);
            }
            Kind::Ack => {
                self.queue.ack(info.seq)?;
                self.recv.parsed(info.size);
                if self.recv.nothing_undelivered_before(start) {
                    self.recv.release(info.size);
                }
            }
            Kind::Reject => {
                let payload = &self.recv.unparsed()
                    [FRAME_OVERHEAD..FRAME_OVERHEAD + info.payload_len as usize];
                return Err(ConnectionError::Rejected {
                    peer: self.peer,
                    reason: String::from_utf8_lossy(payload).into_owned(),
                });
            }
            Kind::Hello | Kind::Auth => {
                return Err(ConnectionError::Protocol {
                    peer: self.peer,
                    reason: format!("{:?} frame after the handshake", info.kind),
                })
            }
        }
        Ok(())
    }
}

/// The receive buffer's size: the options', raised to hold everything the largest peer queue
/// accepted can have unacknowledged, plus two of the largest frames. Then the peer can never fill
/// it, so its acknowledgements (which travel behind its data) are always read: an application
/// that holds a message at the front while it waits for room to push cannot deadlock.
pub(super) fn receive_buffer_size(options: &ConnectionOptions, max_frame: usize) -> usize {
    // A queue of `C` bytes sends payloads of up to `C / 2 - 24` bytes (its hello says so, and
    // larger ones are refused), so the largest peer queue accepted is this many bytes.
    let largest_peer_queue = 2 * (options.max_recv_payload as usize + FRAME_OVERHEAD);
    options.recv_buffer.max(largest_peer_queue + 2 * max_frame)
}
