//! The receive buffer: a fixed block into which the socket is read, holding frames until the
//! application pops them, in place.
//!
//! Frames are delivered in place, so each must be contiguous. Bytes arrive at `write`; complete,
//! checked frames lie before `parsed`; the oldest undelivered one starts at `read`. When the
//! room left at the end could be too small for a whole frame, the incomplete tail (less than one
//! frame) is copied to the start and reading continues there, while the complete frames still
//! at the end are delivered first (`wrap_at` marks their end). So the only copy is of a part of
//! one frame, never of the frames waiting to be popped, and the block never grows: when it is
//! full, nothing is read, and TCP's flow control pushes back on the peer.

/// A fixed receive buffer of whole frames (module docs).
pub(crate) struct RecvBuffer {
    /// 8-byte aligned storage, so frames (multiples of 8 bytes) keep their payloads aligned.
    storage: Box<[u64]>,
    read: usize,
    parsed: usize,
    write: usize,
    /// With `Some(end)`, the frames in `read..end` are delivered before those from offset 0.
    wrap_at: Option<usize>,
    /// The largest frame the peer may send, in bytes.
    max_frame: usize,
}

impl RecvBuffer {
    /// A buffer of `bytes` (rounded up to 8; at least two maximum frames).
    pub(crate) fn new(bytes: usize, max_frame: usize) -> Self {
        let bytes = bytes.max(2 * max_frame).next_multiple_of(8);
        Self {
            storage: vec![0u64; bytes / 8].into_boxed_slice(),
            read: 0,
            parsed: 0,
            write: 0,
            wrap_at: None,
            max_frame,
        }
    }

    fn capacity(&self) -> usize {
        self.storage.len() * 8
    }

    fn bytes(&self) -> &[u8] {
        shm_channel::bytemuck::cast_slice(&self.storage)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        shm_channel::bytemuck::cast_slice_mut(&mut self.storage)
    }

    /// Forgets everything: after a disconnect, the peer resends what was not popped.
    pub(crate) fn clear(&mut self) {
        (self.read, self.parsed, self.write, self.wrap_at) = (0, 0, 0, None);
    }

    /// The contiguous room the socket may be read into now (empty when full).
    pub(crate) fn free_space(&mut self) -> &mut [u8] {
        if self.wrap_at.is_none() {
            if self.read == self.parsed {
                // Nothing waits to be popped: move the incomplete tail (if any) to the start.
                let tail = self.write - self.parsed;
                if self.parsed != 0 && (tail == 0 || self.capacity() - self.parsed < self.max_frame)
                {
                    let range = self.parsed..self.write;
                    self.bytes_mut().copy_within(range, 0);
                    (self.read, self.parsed, self.write) = (0, 0, tail);
                }
            } else if self.capacity() - self.parsed < self.max_frame {
                let tail = self.write - self.parsed;
                if tail <= self.read {
                    // The tail goes below the frames waiting at `read`, which stay in place.
                    let range = self.parsed..self.write;
                    self.bytes_mut().copy_within(range, 0);
                    self.wrap_at = Some(self.parsed);
                    (self.parsed, self.write) = (0, tail);
                }
            }
        }
        let end = match self.wrap_at {
            Some(_) => self.read,
            None => self.capacity(),
        };
        let write = self.write;
        &mut self.bytes_mut()[write..end]
    }

    /// Counts `n` bytes read into [`free_space`](Self::free_space).
    pub(crate) fn wrote(&mut self, n: usize) {
        self.write += n;
    }

    /// The received bytes not yet parsed into frames.
    pub(crate) fn unparsed(&self) -> &[u8] {
        &self.bytes()[self.parsed..self.write]
    }

    /// Marks the next `size` unparsed bytes as a complete, checked frame.
    pub(crate) fn parsed(&mut self, size: usize) {
        self.parsed += size;
    }

    /// Whether no complete frame waits at `read` (so a control frame just parsed is the oldest
    /// and may be released at once).
    pub(crate) fn nothing_undelivered_before(&self, frame_start: usize) -> bool {
        self.wrap_at.is_none() && self.read == frame_start
    }

    /// Where the next unparsed byte is (the start of a frame about to be parsed).
    pub(crate) fn parse_position(&self) -> usize {
        self.parsed
    }

    /// The oldest complete frame, in place.
    #[inline]
    pub(crate) fn front(&mut self) -> Option<&[u8]> {
        if self.wrap_at == Some(self.read) {
            self.read = 0;
            self.wrap_at = None;
        }
        let end = self.wrap_at.unwrap_or(self.parsed);
        if self.read >= end {
            return None;
        }
        let read = self.read;
        Some(&self.bytes()[read..end])
    }

    /// Releases the `size` bytes of the oldest frame.
    #[inline]
    pub(crate) fn release(&mut self, size: usize) {
        self.read += size;
        if self.wrap_at.is_none() && self.read == self.write {
            (self.read, self.parsed, self.write) = (0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `size` bytes, each filled with its number, fed in pieces of `piece` bytes while
    /// the consumer holds `lag` complete frames before it pops one: every frame comes out whole,
    /// in order, 8-aligned. Held frames stay in place, so the next frame needs contiguous room
    /// beside them: two maximum frames serve a consumer that pops whatever is complete (`lag`
    /// 0), and one holding `lag` frames needs `lag + 2` (with less, the held frames and the
    /// wrapped tail can leave no room for the next frame, and the buffer waits for a pop).
    fn stream(sizes: &[usize], piece: usize, lag: usize) {
        let max = *sizes.iter().max().unwrap();
        let mut buf = RecvBuffer::new((lag + 2) * max, max);
        let wire: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, &s)| std::iter::repeat_n(i as u8, s))
            .collect();
        let (mut sent, mut next_parse, mut delivered, mut pending) = (0, 0, 0, Vec::new());
        let mut rounds = 0;
        while delivered < sizes.len() {
            rounds += 1;
            assert!(rounds < 1_000_000, "stuck");
            let room = buf.free_space();
            let n = room.len().min(piece).min(wire.len() - sent);
            room[..n].copy_from_slice(&wire[sent..sent + n]);
            buf.wrote(n);
            sent += n;
            while next_parse < sizes.len() && buf.unparsed().len() >= sizes[next_parse] {
                buf.parsed(sizes[next_parse]);
                pending.push(next_parse);
                next_parse += 1;
            }
            while pending.len() > lag || (sent == wire.len() && !pending.is_empty()) {
                let i = pending.remove(0);
                let frame = buf.front().expect("a parsed frame");
                assert_eq!(frame.as_ptr() as usize % 8, 0);
                assert!(frame[..sizes[i]].iter().all(|&b| b == i as u8), "frame {i}");
                buf.release(sizes[i]);
                delivered += 1;
            }
        }
        assert!(buf.front().is_none());
    }

    #[test]
    fn frames_come_out_whole_and_in_order() {
        let sizes: Vec<usize> = (0..500).map(|i| 8 * (1 + (i * 37) % 40)).collect();
        for piece in [1, 7, 64, 1000] {
            for lag in [0, 1, 3] {
                stream(&sizes, piece, lag);
            }
        }
    }
}
