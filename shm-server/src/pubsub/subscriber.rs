//! The subscriber's side: a direct reader of a topic's journal (shared memory), and the
//! bookkeeping of subscriptions made over a connection (forwarded frames, resumption).

use std::path::Path;

use shm_channel::journal::{
    JournalError, JournalFrame, JournalReader, ReadError, ReadFrom, ReaderOptions,
};
use spsc_core::{MessageSender, SendError, SendSlot};

use super::wire::{ServerMessage, Subscribe, FIRST_RESERVED_TAG, TAG_SUBSCRIBE, TAG_UNSUBSCRIBE};
use super::LagPolicy;

/// Why a subscription's read failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// Nothing new.
    Empty,
    /// The subscriber fell behind past the topic's retention: `missed` frames were removed
    /// before it read them; reading goes on at `resume_at` ([`LagPolicy::Report`]).
    Lagged {
        /// The topic.
        topic: String,
        /// Frames missed.
        missed: u64,
        /// The next frame's sequence number.
        resume_at: u64,
    },
    /// The subscriber fell behind past retention and the policy ends the subscription
    /// ([`LagPolicy::Unsubscribe`]); open it again to go on from the oldest frame kept.
    Ended {
        /// The topic.
        topic: String,
        /// Frames missed.
        missed: u64,
    },
    /// The topic's journal refused a page or frame.
    Journal(JournalError),
}

impl core::fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Empty => write!(f, "no new frame on the topic"),
            Self::Lagged { topic, missed, resume_at } => write!(
                f,
                "subscriber of topic {topic:?} lagged: {missed} frames missed, resuming at seq {resume_at}"
            ),
            Self::Ended { topic, missed } => write!(
                f,
                "subscription to topic {topic:?} ended: it lagged {missed} frames behind the topic's retention"
            ),
            Self::Journal(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for SubscriptionError {}

/// A shared-memory subscriber reading a topic's journal directly and read-only, at its own pace:
/// the publisher's cost does not depend on how many there are, and a slow one only falls behind.
pub struct TopicReader {
    topic: String,
    reader: JournalReader,
    lag: LagPolicy,
    ended: bool,
}

impl TopicReader {
    /// Opens topic `topic` in `dir` (the topics folder, [`PubSubConfig::dir`](super::PubSubConfig)
    /// — or the parent of the folder a [`ServerMessage::Subscribed`] answer names), starting at
    /// `from`, optionally persisting its position in `position_file` (then a restart resumes after
    /// the last pop).
    ///
    /// # Errors
    /// As [`JournalReader::open`].
    pub fn open(
        dir: &Path,
        topic: &str,
        from: ReadFrom,
        lag: LagPolicy,
        position_file: Option<&Path>,
    ) -> Result<Self, JournalError> {
        let mut options = ReaderOptions::new().dir(dir);
        if let Some(path) = position_file {
            options = options.position_file(path);
        }
        Ok(Self {
            topic: topic.to_owned(),
            reader: JournalReader::open(topic, &options, from)?,
            lag,
            ended: false,
        })
    }

    /// The next frame, borrowed in place.
    ///
    /// # Errors
    /// [`SubscriptionError::Empty`]; `Lagged` (once; the next call returns the frame it resumes
    /// at) or `Ended` by the [`LagPolicy`]; `Journal` for damage.
    pub fn front(&mut self) -> Result<JournalFrame<'_>, SubscriptionError> {
        if self.ended {
            return Err(SubscriptionError::Ended {
                topic: self.topic.clone(),
                missed: 0,
            });
        }
        match self.reader.front() {
            Ok(_) => {}
            Err(ReadError::Empty) => return Err(SubscriptionError::Empty),
            Err(ReadError::Lagged {
                missed, resume_at, ..
            }) => {
                return Err(match self.lag {
                    LagPolicy::Report => SubscriptionError::Lagged {
                        topic: self.topic.clone(),
                        missed,
                        resume_at,
                    },
                    LagPolicy::Unsubscribe => {
                        self.ended = true;
                        SubscriptionError::Ended {
                            topic: self.topic.clone(),
                            missed,
                        }
                    }
                })
            }
            Err(ReadError::Journal(error)) => return Err(SubscriptionError::Journal(error)),
            Err(other) => {
                return Err(SubscriptionError::Journal(JournalError::Config {
                    reason: other.to_string(),
                }))
            }
        }
        self.reader.front().map_err(|_| SubscriptionError::Empty)
    }

    /// Releases the frame [`front`](Self::front) returned.
    ///
    /// # Errors
    /// As [`front`](Self::front).
    pub fn pop(&mut self) -> Result<(), SubscriptionError> {
        self.front()?;
        self.reader.pop().map_err(|_| SubscriptionError::Empty)
    }

    /// The underlying journal reader (for [`JournalReader::wait`], its position, ...).
    pub fn reader(&mut self) -> &mut JournalReader {
        &mut self.reader
    }
}

/// What [`Subscriptions::on_message`] made of a server message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicEvent<'a> {
    /// The server admitted the subscription. For a direct one, open
    /// [`TopicReader`] on `folder`'s parent at `start_seq`.
    Subscribed {
        /// The subscription.
        sub: u32,
        /// The topic journal's folder.
        folder: &'a str,
        /// The first sequence number it gets.
        start_seq: u64,
    },
    /// The server refused it (or ended it), with a reason.
    Refused {
        /// The subscription.
        sub: u32,
        /// Why.
        reason: &'a str,
    },
    /// A forwarded frame, new to this subscriber (pop the message, which is the commit).
    Frame {
        /// The subscription.
        sub: u32,
        /// Its sequence number in the topic.
        seq: u64,
        /// The publisher's timestamp.
        time: u64,
        /// Its tag.
        tag: u16,
        /// Its payload.
        payload: &'a [u8],
    },
    /// A frame forwarded again after a re-subscription, already seen: skip it (pop it).
    Duplicate {
        /// The subscription.
        sub: u32,
        /// Its sequence number.
        seq: u64,
    },
    /// Frames were removed by retention before the server could forward them.
    Lagged {
        /// The subscription.
        sub: u32,
        /// How many.
        missed: u64,
        /// The next frame's sequence number.
        resume_at: u64,
    },
}

struct Entry {
    sub: u32,
    topic: heapless::String<{ shm_channel::MAX_NAME_LEN }>,
    forward: bool,
    from: ReadFrom,
    /// The next sequence number expected (after the last frame handed out).
    next_seq: Option<u64>,
}

/// A client's subscriptions over its connection (shared memory or TCP): sends subscribe
/// requests, turns the server's answers and forwarded frames into [`TopicEvent`]s, drops
/// frames already seen, and re-subscribes after a reconnect from the frame after the last one
/// it handed out, so nothing is lost or repeated within the topic's retention.
#[derive(Default)]
pub struct Subscriptions {
    entries: Vec<Entry>,
    next_sub: u32,
}

impl Subscriptions {
    /// No subscription yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a subscription to `topic` from `from`; `forward` asks the server to forward the
    /// frames over the connection (what a remote client does), rather than answering with the
    /// journal's folder to read directly. Returns the subscription's number.
    ///
    /// # Errors
    /// The connection's [`SendError`] (try again later on `Full`); `TooLarge` for a topic name
    /// longer than a name may be.
    pub fn subscribe<S: MessageSender>(
        &mut self,
        sender: &mut S,
        topic: &str,
        from: ReadFrom,
        forward: bool,
    ) -> Result<u32, SendError> {
        let name = heapless::String::try_from(topic).map_err(|_| SendError::TooLarge {
            len: topic.len() as u64,
            max: shm_channel::MAX_NAME_LEN as u32,
        })?;
        let sub = self.next_sub;
        send_subscribe(sender, sub, topic, from, forward, false)?;
        self.next_sub = self.next_sub.wrapping_add(1);
        self.entries.push(Entry {
            sub,
            topic: name,
            forward,
            from,
            // From a sequence number, anything earlier is a duplicate even before the answer
            // (frames a restarted client's connection still held arrive first).
            next_seq: match from {
                ReadFrom::Seq(seq) => Some(seq),
                _ => None,
            },
        });
        Ok(sub)
    }

    /// Sends the subscribe requests again after the connection came back (a server restart, a
    /// TCP reconnect): each forwarded subscription from the frame after the last one handed out
    /// (or from where it first asked, if none was). A server that still has the subscription
    /// goes on where it is (nothing is sent twice); one that lost it starts at that frame.
    ///
    /// A client process that restarted calls [`subscribe`](Self::subscribe) instead, from the
    /// position it persisted: the server then starts afresh there, and frames its connection
    /// still held are reported as [`TopicEvent::Duplicate`]s.
    ///
    /// # Errors
    /// The connection's [`SendError`]: call again.
    pub fn resubscribe<S: MessageSender>(&mut self, sender: &mut S) -> Result<(), SendError> {
        for entry in self.entries.iter().filter(|e| e.forward) {
            let from = entry.next_seq.map_or(entry.from, ReadFrom::Seq);
            send_subscribe(sender, entry.sub, &entry.topic, from, true, true)?;
        }
        Ok(())
    }

    /// Ends subscription `sub`.
    ///
    /// # Errors
    /// The connection's [`SendError`].
    pub fn unsubscribe<S: MessageSender>(
        &mut self,
        sender: &mut S,
        sub: u32,
    ) -> Result<(), SendError> {
        sender.send(TAG_UNSUBSCRIBE, &sub.to_le_bytes())?;
        self.entries.retain(|e| e.sub != sub);
        Ok(())
    }

    /// Interprets a message from the server: `Ok(None)` for the application's own messages
    /// (tags below [`FIRST_RESERVED_TAG`]), an event for publish/subscribe's, an error for a
    /// malformed one. Pop the message after handling the event.
    ///
    /// # Errors
    /// A description of what is malformed.
    pub fn on_message<'m>(
        &mut self,
        tag: u16,
        payload: &'m [u8],
    ) -> Result<Option<TopicEvent<'m>>, &'static str> {
        if tag < FIRST_RESERVED_TAG {
            return Ok(None);
        }
        let Some(message) = ServerMessage::decode(tag, payload)? else {
            return Err("an unknown publish/subscribe tag from the server");
        };
        Ok(Some(match message {
            ServerMessage::Subscribed {
                sub,
                folder,
                start_seq,
                ..
            } => {
                if let Some(entry) = self.entry(sub) {
                    if entry.next_seq.is_none() {
                        entry.next_seq = Some(start_seq);
                    }
                }
                TopicEvent::Subscribed {
                    sub,
                    folder,
                    start_seq,
                }
            }
            ServerMessage::Refused { sub, reason } => {
                self.entries.retain(|e| e.sub != sub);
                TopicEvent::Refused { sub, reason }
            }
            ServerMessage::Frame {
                sub,
                tag,
                seq,
                time,
                payload,
            } => {
                let Some(entry) = self.entry(sub) else {
                    // Forwarded before our unsubscribe reached the server.
                    return Ok(Some(TopicEvent::Duplicate { sub, seq }));
                };
                if entry.next_seq.is_some_and(|next| seq < next) {
                    return Ok(Some(TopicEvent::Duplicate { sub, seq }));
                }
                entry.next_seq = Some(seq + 1);
                TopicEvent::Frame {
                    sub,
                    seq,
                    time,
                    tag,
                    payload,
                }
            }
            ServerMessage::Lagged {
                sub,
                missed,
                resume_at,
            } => {
                if let Some(entry) = self.entry(sub) {
                    entry.next_seq = Some(resume_at);
                }
                TopicEvent::Lagged {
                    sub,
                    missed,
                    resume_at,
                }
            }
        }))
    }

    /// The next sequence number subscription `sub` expects.
    pub fn next_seq(&self, sub: u32) -> Option<u64> {
        self.entries.iter().find(|e| e.sub == sub)?.next_seq
    }

    fn entry(&mut self, sub: u32) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.sub == sub)
    }
}

fn send_subscribe<S: MessageSender>(
    sender: &mut S,
    sub: u32,
    topic: &str,
    from: ReadFrom,
    forward: bool,
    resume: bool,
) -> Result<(), SendError> {
    let request = Subscribe {
        sub,
        topic,
        from,
        forward,
        resume,
    };
    let mut slot = sender.alloc(request.len() as u32, TAG_SUBSCRIBE)?;
    request.encode(slot.payload_mut());
    slot.push();
    Ok(())
}
