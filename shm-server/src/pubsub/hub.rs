//! The server's side: answering subscribe requests after the authorisation check, and forwarding
//! topics' frames to subscribers that asked for it.

use shm_channel::journal::{JournalReader, ReadError, ReadFrom, ReaderOptions};
use shm_channel::SegmentName;
use spsc_core::{MessageSender, SendError, SendSlot};

use super::wire::{
    encode_frame_prefix, encode_lagged, encode_refused, encode_subscribed, Subscribe,
    FIRST_RESERVED_TAG, FRAME_PREFIX, TAG_LAGGED, TAG_REFUSED, TAG_SUBSCRIBE, TAG_SUBSCRIBED,
    TAG_TOPIC_FRAME, TAG_UNSUBSCRIBE,
};
use super::{LagPolicy, PubSubConfig};
use crate::{ConnId, Group, Reply, Request};

/// What the authorisation check sees of a subscribe request.
#[derive(Clone, Copy, Debug)]
pub struct SubscribeRequest<'a> {
    /// The connection asking.
    pub conn: ConnId,
    /// The client's name (as it logged in: the same login and uid check as everything else).
    pub client: &'a SegmentName,
    /// The topic.
    pub topic: &'a str,
    /// Where it wants to start.
    pub from: ReadFrom,
    /// Whether it asks the server to forward frames (a remote subscriber).
    pub forward: bool,
}

/// The authorisation check: `Ok(())` admits, `Err(reason)` refuses (the client receives the
/// reason).
pub type SubscribeCheck = Box<dyn FnMut(&SubscribeRequest<'_>) -> Result<(), String> + Send>;

/// What a hub counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Subscriptions admitted (read directly or forwarded).
    pub subscribed: u64,
    /// Subscriptions refused (by the check, an unknown topic, a full forwarding table, a bad
    /// request).
    pub refused: u64,
    /// Frames forwarded.
    pub forwarded: u64,
    /// Forwarded subscriptions that lagged (retention overtook them).
    pub lagged: u64,
    /// Forwarded subscriptions dropped because their connection closed.
    pub dropped: u64,
}

struct Forward {
    /// The subscriber (a session: its connection may be lost and made again).
    client: SegmentName,
    sub: u32,
    /// Since when the subscriber has had no connection in the group (`now` of `forward`).
    absent_since: Option<u64>,
    reader: JournalReader,
    /// A lag notice not sent yet (the client's ring was full): (missed, resume at).
    notice: Option<(u64, u64)>,
}

/// Publish/subscribe for one group (see the [module docs](super)): call
/// [`handle`](Self::handle) first in the group's handler, and [`forward`](Self::forward) after
/// each poll of the group.
pub struct TopicHub {
    config: PubSubConfig,
    check: SubscribeCheck,
    forwards: Vec<Forward>,
    stats: HubStats,
    scratch: Vec<u8>,
}

impl TopicHub {
    /// A hub over `config`'s topics, admitting subscriptions `check` admits. The forwarding table
    /// is allocated here ([`PubSubConfig::max_forwarded`]).
    pub fn new(config: PubSubConfig, check: SubscribeCheck) -> Self {
        let capacity = config.max_forwarded;
        Self {
            config,
            check,
            forwards: Vec::with_capacity(capacity),
            stats: HubStats::default(),
            scratch: vec![0; 1024],
        }
    }

    /// Handles a publish/subscribe request (a tag from
    /// [`FIRST_RESERVED_TAG`](super::wire::FIRST_RESERVED_TAG) up) and answers it; returns
    /// `false`, doing nothing, for any other message (the application's).
    ///
    /// A subscribe request passes the check, then opens a reader of the topic's journal
    /// (read-only) at the requested start: for a forwarded subscription the hub keeps it; for a
    /// direct one it only checks the start exists and answers with the journal's folder, which
    /// the client opens itself ([`TopicReader`](super::TopicReader)). Costs: a subscribe opens
    /// files (a listing, a few mappings); other messages cost one compare.
    pub fn handle<const C: usize>(
        &mut self,
        request: &Request<'_>,
        reply: &mut Reply<'_, C>,
    ) -> bool {
        if request.tag() < FIRST_RESERVED_TAG {
            return false;
        }
        match request.tag() {
            TAG_SUBSCRIBE => self.subscribe(request, reply),
            TAG_UNSUBSCRIBE => {
                if let Some(sub) = request.payload().get(0..4) {
                    let sub = u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]);
                    let client = request.client();
                    self.forwards
                        .retain(|f| !(&f.client == client && f.sub == sub));
                }
            }
            _ => {
                self.stats.refused += 1;
                self.refuse(reply, u32::MAX, "an unknown publish/subscribe request tag");
            }
        }
        true
    }

    fn refuse<const C: usize>(&mut self, reply: &mut Reply<'_, C>, sub: u32, reason: &str) {
        let len = encode_refused(&mut self.scratch, sub, reason);
        let _ = reply.send(TAG_REFUSED, &self.scratch[..len]);
    }

    fn subscribe<const C: usize>(&mut self, request: &Request<'_>, reply: &mut Reply<'_, C>) {
        let subscribe = match Subscribe::decode(request.payload()) {
            Ok(subscribe) => subscribe,
            Err(reason) => {
                self.stats.refused += 1;
                return self.refuse(reply, u32::MAX, reason);
            }
        };
        let sub = subscribe.sub;
        let refused = |hub: &mut Self, reply: &mut Reply<'_, C>, reason: &str| {
            hub.stats.refused += 1;
            hub.refuse(reply, sub, reason);
        };
        if let Err(error) = SegmentName::new(subscribe.topic) {
            return refused(self, reply, &format!("topic name: {error}"));
        }
        let asked = SubscribeRequest {
            conn: request.conn(),
            client: request.client(),
            topic: subscribe.topic,
            from: subscribe.from,
            forward: subscribe.forward,
        };
        if let Err(reason) = (self.check)(&asked) {
            return refused(self, reply, &reason);
        }
        let client = request.client();
        let existing = self
            .forwards
            .iter()
            .position(|f| &f.client == client && f.sub == sub);
        if subscribe.forward && subscribe.resume {
            if let Some(index) = existing {
                // The same session asking again (it reconnected): the subscription it has goes
                // on where it is. Every frame forwarded before is in the connection's persisted
                // queue, which the reconnect delivers exactly once, so starting over from the
                // client's position would only send those frames twice.
                let entry = &mut self.forwards[index];
                entry.absent_since = None;
                // The client's next frame comes from the connection's queue, or from the reader.
                let start_seq = match subscribe.from {
                    ReadFrom::Seq(seq) => seq.min(entry.reader.next_seq()),
                    _ => entry.reader.next_seq(),
                };
                let journal_id = entry.reader.journal_id();
                let folder = entry.reader.folder().to_string_lossy().into_owned();
                self.answer_subscribed(reply, sub, &folder, journal_id, start_seq);
                return;
            }
        }
        if subscribe.forward {
            if let Some(index) = existing {
                // Asked afresh (a client that restarted): its own position is what counts. What
                // the connection's queue still holds of the old one arrives first; the client
                // tells those frames for duplicates by their sequence numbers.
                self.forwards.swap_remove(index);
            } else if self.forwards.len() >= self.config.max_forwarded {
                return refused(
                    self,
                    reply,
                    "the server forwards as many subscriptions as it can",
                );
            }
        }
        let options = ReaderOptions::new().dir(&self.config.dir);
        let reader = match JournalReader::open(subscribe.topic, &options, subscribe.from) {
            Ok(reader) => reader,
            Err(error) => return refused(self, reply, &error.to_string()),
        };
        let folder = reader.folder().to_string_lossy().into_owned();
        let (journal_id, start_seq) = (reader.journal_id(), reader.next_seq());
        if !self.answer_subscribed(reply, sub, &folder, journal_id, start_seq) {
            // The client will time out and ask again; keep nothing.
            return;
        }
        if subscribe.forward {
            self.forwards.push(Forward {
                client: client.clone(),
                sub,
                absent_since: None,
                reader,
                notice: None,
            });
        }
    }

    fn answer_subscribed<const C: usize>(
        &mut self,
        reply: &mut Reply<'_, C>,
        sub: u32,
        folder: &str,
        journal_id: u64,
        start_seq: u64,
    ) -> bool {
        if self.scratch.len() < 24 + folder.len() {
            self.scratch.resize(24 + folder.len(), 0);
        }
        let len = encode_subscribed(&mut self.scratch, sub, folder, journal_id, start_seq);
        let sent = reply.send(TAG_SUBSCRIBED, &self.scratch[..len]).is_ok();
        if sent {
            self.stats.subscribed += 1;
        }
        sent
    }

    /// Forwards up to `budget` frames per forwarded subscription of `group`'s connections (as
    /// many as their rings or send queues take: a full one waits for the next call, never
    /// stalls the group), and drops subscriptions whose session has had no connection in the
    /// group for [`PubSubConfig::absent_timeout`]. Returns the frames forwarded.
    ///
    /// A subscription belongs to the session (the client's name), not to one connection: after
    /// a reconnect it goes on where it was, and the connection's persisted queue delivers what
    /// was forwarded before exactly once. `now` is the clock of the group's poll.
    ///
    /// Call it from the thread that polls `group`, after each poll. Costs: per subscription, a
    /// search of the group's connections and one [`JournalReader::front`]; per frame, one
    /// `alloc`/`push` into the connection and a copy of the payload. No allocation.
    pub fn forward<const C: usize>(
        &mut self,
        group: &mut Group<C>,
        now: u64,
        budget: u32,
    ) -> usize {
        let mut total = 0;
        let mut i = 0;
        while i < self.forwards.len() {
            let entry = &mut self.forwards[i];
            let mut found = false;
            let mut outcome = Ok(0);
            for (_, name, sender) in group.senders() {
                if *name == entry.client {
                    found = true;
                    outcome = forward_into(entry, sender, budget, self.config.lag);
                    break;
                }
            }
            if !found {
                for (_, name, tcp) in group.tcp_connections() {
                    if *name == entry.client {
                        found = true;
                        outcome = forward_into(entry, tcp, budget, self.config.lag);
                        break;
                    }
                }
            }
            if found {
                entry.absent_since = None;
            } else {
                // Between a lost connection and the session's next login: keep the
                // subscription where it is for a while.
                let since = *entry.absent_since.get_or_insert(now);
                if now.saturating_sub(since) < self.config.absent_timeout_ns {
                    i += 1;
                    continue;
                }
            }
            match (found, outcome) {
                (true, Ok(count)) => {
                    total += count;
                    i += 1;
                }
                (true, Err(Ended::Lagged(count))) => {
                    total += count;
                    self.stats.lagged += 1;
                    if self.config.lag == LagPolicy::Unsubscribe {
                        self.forwards.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                (true, Err(Ended::Broken(count))) => {
                    total += count;
                    self.forwards.swap_remove(i);
                }
                (false, _) => {
                    self.stats.dropped += 1;
                    self.forwards.swap_remove(i);
                }
            }
        }
        self.stats.forwarded += total as u64;
        total
    }

    /// Forwarded subscriptions held.
    pub fn forwarded_subscriptions(&self) -> usize {
        self.forwards.len()
    }

    /// What the hub counted.
    pub fn stats(&self) -> HubStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &PubSubConfig {
        &self.config
    }
}

enum Ended {
    /// The subscription lagged (after this many frames): notice sent or pending.
    Lagged(usize),
    /// The journal refused a frame or page: the subscription ends (its client was told).
    Broken(usize),
}

fn forward_into<S: MessageSender>(
    entry: &mut Forward,
    sender: &mut S,
    budget: u32,
    lag: LagPolicy,
) -> Result<usize, Ended> {
    let mut count = 0;
    let mut lagged = false;
    if let Some((missed, resume_at)) = entry.notice {
        if !send_lagged(sender, entry.sub, missed, resume_at) {
            return Ok(0);
        }
        entry.notice = None;
    }
    while count < budget as usize {
        let frame = match entry.reader.front() {
            Ok(frame) => frame,
            Err(ReadError::Empty) => break,
            Err(ReadError::Lagged {
                missed, resume_at, ..
            }) => {
                lagged = true;
                if !send_lagged(sender, entry.sub, missed, resume_at) {
                    entry.notice = Some((missed, resume_at));
                    break;
                }
                if lag == LagPolicy::Unsubscribe {
                    // The subscription ends here: say so (the lag notice said how much was
                    // missed), so the client's bookkeeping drops it too.
                    let mut reason = [0u8; 128];
                    let len = encode_refused(
                        &mut reason,
                        entry.sub,
                        "subscription ended: it fell behind the topic's retention (LagPolicy::Unsubscribe)",
                    );
                    let _ = sender.send(TAG_REFUSED, &reason[..len]);
                    break;
                }
                continue;
            }
            Err(error) => {
                let mut reason = [0u8; 256];
                let text = error.to_string();
                let len = encode_refused(&mut reason, entry.sub, &text);
                let _ = sender.send(TAG_REFUSED, &reason[..len]);
                return Err(Ended::Broken(count));
            }
        };
        let len = frame.payload().len() + FRAME_PREFIX;
        let Ok(len32) = u32::try_from(len) else {
            return Err(Ended::Broken(count));
        };
        let failed = match sender.alloc(len32, TAG_TOPIC_FRAME) {
            Ok(mut slot) => {
                let out = slot.payload_mut();
                encode_frame_prefix(out, entry.sub, frame.tag(), frame.seq(), frame.time());
                out[FRAME_PREFIX..].copy_from_slice(frame.payload());
                slot.push();
                None
            }
            Err(error) => Some(error),
        };
        match failed {
            None => {}
            Some(SendError::Full) => break,
            Some(_) => {
                // Too large for the connection: the subscription cannot go on.
                let mut reason = [0u8; 256];
                let len = encode_refused(
                    &mut reason,
                    entry.sub,
                    "a topic frame is larger than this connection carries",
                );
                let _ = sender.send(TAG_REFUSED, &reason[..len]);
                return Err(Ended::Broken(count));
            }
        }
        let _ = entry.reader.pop();
        count += 1;
    }
    if lagged {
        Err(Ended::Lagged(count))
    } else {
        Ok(count)
    }
}

fn send_lagged<S: MessageSender>(sender: &mut S, sub: u32, missed: u64, resume_at: u64) -> bool {
    let mut notice = [0u8; 24];
    encode_lagged(&mut notice, sub, missed, resume_at);
    sender.send(TAG_LAGGED, &notice).is_ok()
}
