//! Several journals read as one, in timestamp order.

use super::error::ReadError;
use super::reader::{JournalFrame, JournalReader};

/// Reads several journals merged by time: each [`front`](Self::front) is the unread frame with
/// the smallest timestamp among them (ties go to the journal given first), so a recording of
/// market data and orders in separate journals replays in the order it happened.
///
/// A journal with nothing published yet does not hold the others back: the merge is over what
/// is published when it is called (a live merge may therefore return a frame, then an earlier
/// one from a journal whose writer was late; a replay of finished journals never does).
pub struct MergedReader {
    readers: Vec<JournalReader>,
    /// The reader `front` chose, for `pop`.
    chosen: Option<usize>,
}

impl MergedReader {
    /// Merges `readers` (each already positioned, e.g. by [`ReadFrom::Time`](super::ReadFrom)).
    pub fn new(readers: Vec<JournalReader>) -> Self {
        Self {
            readers,
            chosen: None,
        }
    }

    /// The earliest unread frame among the journals, and the index of its journal (in the
    /// order given to [`new`](Self::new)).
    ///
    /// # Errors
    /// [`ReadError::Empty`] when no journal has a frame; any other error of one journal's
    /// [`JournalReader::front`] (a `Lagged` one included: the next call goes on).
    ///
    /// Costs: one [`JournalReader::front`] per journal.
    pub fn front(&mut self) -> Result<(usize, JournalFrame<'_>), ReadError> {
        let mut best: Option<(u64, usize)> = None;
        for (i, reader) in self.readers.iter_mut().enumerate() {
            match reader.peek_time() {
                Ok(time) => {
                    if best.is_none_or(|(t, _)| time < t) {
                        best = Some((time, i));
                    }
                }
                Err(ReadError::Empty) => {}
                Err(error) => return Err(error),
            }
        }
        let Some((_, i)) = best else {
            self.chosen = None;
            return Err(ReadError::Empty);
        };
        self.chosen = Some(i);
        let frame = self.readers[i].front()?;
        Ok((i, frame))
    }

    /// Pops the frame [`front`](Self::front) returned (reading it first if it was not).
    ///
    /// # Errors
    /// As [`front`](Self::front).
    pub fn pop(&mut self) -> Result<(), ReadError> {
        let i = match self.chosen.take() {
            Some(i) => i,
            None => self.front()?.0,
        };
        self.chosen = None;
        self.readers[i].pop()
    }

    /// The merged readers.
    pub fn readers(&self) -> &[JournalReader] {
        &self.readers
    }

    /// Gives the readers back.
    pub fn into_readers(self) -> Vec<JournalReader> {
        self.readers
    }
}
