//! Request/reply correlation over the message API: a request id that the reply carries back, so
//! a client with several outstanding requests matches each reply to its request, and a reply
//! that arrives after its request timed out is recognised as such instead of being matched to a
//! later request.
//!
//! Everything here is generic over [`MessageSender`] / [`MessageReceiver`], so it runs over
//! spsc-core's in-process [`MessageRing`](spsc_core::MessageRing), a shared-memory channel and a
//! TCP connection alike. Nothing allocates and nothing reads a clock on the hot path: times are
//! `u64` nanoseconds that the caller passes in (any monotonic clock, as long as the deadlines and
//! the `now` given to [`Requests::expire`] come from the same one).
//!
//! # Wire format
//!
//! The first [`REQUEST_ID_LEN`] (8) bytes of a request's payload are its [`RequestId`], a
//! little-endian `u64`; the user's body follows. A reply starts with the id of the request it
//! answers, then its body. The message tag is the user's. Payloads are 8-byte aligned, so the
//! body is too: a `#[repr(C)]` struct can still be read from it in place.
//!
//! # Client: [`Requests`]
//!
//! A fixed-capacity table of the outstanding requests (id, deadline, a user token).
//! [`Requests::alloc`] reserves a request in place on a sender and writes its id; the caller
//! writes the body into the slot and pushes it, which records it as outstanding.
//! [`Requests::on_reply`] classifies a reply ([`Reply`]); [`Requests::expire`] yields the requests
//! whose deadline passed.
//!
//! Ids are consecutive: `first`, `first + 1`, … An id is never reused by a table, so a reply is
//! matched only to the request that carried its id; that alone rules out the misalignment where
//! a late reply answers the wrong (later) request. The classification of a reply's id:
//!
//! | id | reply is |
//! |---|---|
//! | shorter than 8 bytes | [`Reply::Malformed`] |
//! | below `first`, or not issued yet (≥ [`next_id`](Requests::next_id)) | [`Reply::Unknown`]: never issued by this table (e.g. a reply to a previous incarnation of the client) |
//! | outstanding | [`Reply::Matched`]; the request is no longer outstanding |
//! | issued, timed out, no reply seen yet | [`Reply::Late`] |
//! | issued, already answered (matched, or reported late) | [`Reply::Duplicate`] |
//!
//! The last two rows need memory of what happened to each id. The table keeps one bit per id for
//! the last [`LATE_WINDOW`] ids issued ("timed out, no reply seen yet"), so within that window
//! the late/duplicate split is exact. For an id older than the window that is not outstanding
//! the table cannot tell, and reports [`Reply::Late`]: the reply is still recognised as one to a
//! request of this table that is over, and never matched. (An outstanding request is matched
//! whatever its age: the window only concerns requests that are over.)
//!
//! # Ids after a restart
//!
//! A client that restarts may still find replies queued for its previous incarnation. Those
//! carry ids the previous incarnation issued, and they must not match the new incarnation's
//! requests: the first id is a constructor argument ([`Requests::new`]) and ids below it are
//! [`Reply::Unknown`]. The default, [`Requests::from_clock`], starts at the wall clock in
//! nanoseconds since the Unix epoch, read once at construction ([`RequestId::from_clock`]): the
//! previous incarnation started earlier, with a smaller first id, and would have had to issue
//! more than one request per nanosecond of its life to reach the new first id. That holds unless
//! the wall clock steps back across the restart by more than the gap; a client for which that
//! matters persists [`Requests::next_id`] and starts the next incarnation from it.
//!
//! # Server: pop the request, then push the reply
//!
//! The order is tcpshm's rule: read the request in place and write the reply in place, then
//! **pop the request (the commit), then push the reply**. A crash between the two loses one
//! reply, which the client sees as a timeout; the request is never delivered again, so its work
//! is never done twice. The other order (push, then pop) redelivers the request after a crash
//! between the two: the work is done again and the client gets a second reply
//! ([`Reply::Duplicate`]). [`serve_one`] does it in this order: the handler reads the
//! [`Request`], allocates its reply through a [`Replier`] and writes it, and returns it unpushed;
//! `serve_one` pops, then pushes.
//!
//! What the pop commits is the work in the handler: work whose effects outlive a crash of the
//! server (a file, a database, another process) must be done so that it counts only once the
//! pop happened, or be idempotent; effects held in the server's memory die with it anyway.
//!
//! # Example
//!
//! Over two in-process rings, one per direction:
//!
//! ```
//! use shm_server::request::{serve_one, Handled, Reply, RequestId, Requests, Served};
//! use spsc_core::{MessageReceiver, MessageRing};
//!
//! let mut requests_ring = MessageRing::<4096>::new();
//! let mut replies_ring = MessageRing::<4096>::new();
//! let (mut request_tx, mut request_rx) = requests_ring.split();
//! let (mut reply_tx, mut reply_rx) = replies_ring.split();
//!
//! // A real client starts from `Requests::from_clock()`.
//! let mut requests = Requests::<8>::new(RequestId(1_000));
//! let now = 0;
//! let deadline = now + 1_000_000;
//!
//! // Client: a request written in place (token 7), and one copied in (token 8).
//! let mut slot = requests.alloc(&mut request_tx, 8, 1, deadline, 7).unwrap();
//! slot.body_mut().copy_from_slice(&21u64.to_le_bytes());
//! let first = slot.push();
//! let second = requests.send(&mut request_tx, 1, &4u64.to_le_bytes(), deadline, 8).unwrap();
//! assert_eq!((first, second), (RequestId(1_000), RequestId(1_001)));
//!
//! // Server: doubles a number. `serve_one` pops each request before pushing its reply.
//! while let Ok(served) = serve_one(&mut request_rx, &mut reply_tx, |request, replier| {
//!     let x = u64::from_le_bytes(request.body().try_into().unwrap());
//!     match replier.alloc(8, 2) {
//!         Ok(mut reply) => {
//!             reply.body_mut().copy_from_slice(&(2 * x).to_le_bytes());
//!             Handled::Reply(reply)
//!         }
//!         // No room for the reply: leave the request queued and retry later.
//!         Err(_) => Handled::Keep,
//!     }
//! }) {
//!     assert!(matches!(served, Served::Replied(_)));
//! }
//!
//! // Client: each reply finds its request's token.
//! let mut answers = Vec::new();
//! while let Ok(message) = reply_rx.front() {
//!     match requests.on_reply(message.payload()) {
//!         Reply::Matched { token, body, .. } => {
//!             answers.push((token, u64::from_le_bytes(body.try_into().unwrap())));
//!         }
//!         other => panic!("unexpected {other:?}"),
//!     }
//!     reply_rx.pop().unwrap();
//! }
//! assert_eq!(answers, [(7, 42), (8, 8)]);
//! assert!(requests.is_empty());
//! assert_eq!(requests.expire(deadline).count(), 0);
//! ```

use core::fmt;
use core::iter::FusedIterator;

use spsc_core::{Message, MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Bytes of the request id at the start of every request's and reply's payload.
pub const REQUEST_ID_LEN: usize = 8;

/// [`REQUEST_ID_LEN`] as a payload length.
const ID_LEN: u32 = REQUEST_ID_LEN as u32;

/// How many of the most recently issued ids a [`Requests`] table remembers the fate of, so that
/// a reply to one of them that is not outstanding is told apart exactly as [`Reply::Late`] (its
/// request timed out) or [`Reply::Duplicate`] (it was answered already). Costs one bit per id:
/// 512 bytes per table.
pub const LATE_WINDOW: u64 = 64 * WINDOW_WORDS as u64;

const WINDOW_WORDS: usize = 64;

/// The id of a request, carried back by its reply: the first 8 bytes of both payloads,
/// little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// A first id for a [`Requests`] table that a previous incarnation of the process cannot
    /// have reached: the wall clock in nanoseconds since the Unix epoch (module docs, "Ids after
    /// a restart"). Reads the system clock once; call it at construction, not on the hot path.
    /// A clock before the epoch gives 0.
    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Self(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The id as a number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A payload too short to hold a request id (fewer than [`REQUEST_ID_LEN`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingRequestId {
    /// The payload's length.
    pub len: usize,
}

impl core::error::Error for MissingRequestId {}

impl fmt::Display for MissingRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload of {} bytes is too short for its {REQUEST_ID_LEN}-byte request id",
            self.len
        )
    }
}

/// The request id at the start of a request's or reply's payload. Cost: one 8-byte load.
///
/// # Errors
/// [`MissingRequestId`] for a payload shorter than [`REQUEST_ID_LEN`].
pub fn request_id(payload: &[u8]) -> Result<RequestId, MissingRequestId> {
    split_request_id(payload).map(|(id, _)| id)
}

/// Splits a request's or reply's payload into its request id and the user's body (8-byte
/// aligned when the payload is). Cost: one 8-byte load.
///
/// # Errors
/// [`MissingRequestId`] for a payload shorter than [`REQUEST_ID_LEN`].
pub fn split_request_id(payload: &[u8]) -> Result<(RequestId, &[u8]), MissingRequestId> {
    match payload.split_first_chunk::<REQUEST_ID_LEN>() {
        Some((id, body)) => Ok((RequestId(u64::from_le_bytes(*id)), body)),
        None => Err(MissingRequestId { len: payload.len() }),
    }
}

/// A message being written whose payload starts with a request id: a reply from
/// [`alloc_reply`] or [`Replier::alloc`]. Write the body with [`body_mut`](Self::body_mut), then
/// [`push`](Self::push); dropping it publishes nothing.
pub struct IdSlot<Sl> {
    slot: Sl,
    id: RequestId,
}

impl<Sl: SendSlot> IdSlot<Sl> {
    /// The request id the message carries (already written).
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The message's type tag.
    pub fn tag(&self) -> u16 {
        self.slot.tag()
    }

    /// The body to fill, after the id: exactly the length asked for, 8-byte aligned. Its previous
    /// contents are unspecified: write all of it.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.slot.payload_mut()[REQUEST_ID_LEN..]
    }

    /// Publishes the message (the transport's push).
    pub fn push(self) {
        self.slot.push();
    }
}

impl<Sl> fmt::Debug for IdSlot<Sl> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdSlot")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Allocates on `tx` a message of `body_len` body bytes that starts with `id`, and writes the id.
fn alloc_with_id<S: MessageSender + ?Sized>(
    tx: &mut S,
    id: RequestId,
    body_len: u32,
    tag: u16,
) -> Result<IdSlot<S::Slot<'_>>, SendError> {
    let Some(len) = body_len.checked_add(ID_LEN) else {
        return Err(SendError::TooLarge {
            len: u64::from(body_len) + u64::from(ID_LEN),
            max: tx.max_payload(),
        });
    };
    let mut slot = tx.alloc(len, tag)?;
    slot.payload_mut()[..REQUEST_ID_LEN].copy_from_slice(&id.0.to_le_bytes());
    Ok(IdSlot { slot, id })
}

/// Allocates on `tx` the reply to `request`, with room for `body_len` body bytes after the id
/// (written already). For servers that do not use [`serve_one`]: push the reply only after
/// popping the request (module docs). Cost: the transport's `alloc` and an 8-byte store.
///
/// # Errors
/// As [`MessageSender::alloc`] for a payload of `body_len + 8` bytes ([`SendError::Full`]: no
/// room now; [`SendError::TooLarge`]: never fits).
pub fn alloc_reply<S: MessageSender + ?Sized>(
    tx: &mut S,
    request: RequestId,
    body_len: u32,
    tag: u16,
) -> Result<IdSlot<S::Slot<'_>>, SendError> {
    alloc_with_id(tx, request, body_len, tag)
}

/// A received request, borrowed in place: its id and its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    id: RequestId,
    message: Message<'a>,
}

impl<'a> Request<'a> {
    /// Reads the request id at the start of `message`'s payload. Cost: one 8-byte load.
    ///
    /// # Errors
    /// [`MissingRequestId`] for a payload shorter than [`REQUEST_ID_LEN`].
    pub fn parse(message: Message<'a>) -> Result<Self, MissingRequestId> {
        let id = request_id(message.payload())?;
        Ok(Self { id, message })
    }

    /// The request id, to be carried back by the reply.
    pub const fn id(&self) -> RequestId {
        self.id
    }

    /// The message's type tag.
    pub const fn tag(&self) -> u16 {
        self.message.tag()
    }

    /// The user's body, after the id; 8-byte aligned.
    pub fn body(&self) -> &'a [u8] {
        &self.message.payload()[REQUEST_ID_LEN..]
    }

    /// The whole message, id included.
    pub const fn message(&self) -> Message<'a> {
        self.message
    }
}

/// Lets a [`serve_one`] handler allocate the reply to the request it is handling, on the reply
/// sender, with the request's id already written.
pub struct Replier<'t, Tx: ?Sized> {
    tx: &'t mut Tx,
    id: RequestId,
}

impl<'t, Tx: MessageSender + ?Sized> Replier<'t, Tx> {
    /// The id of the request being answered.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The largest body a reply can have on this sender.
    pub fn max_body(&self) -> u32 {
        self.tx.max_payload().saturating_sub(ID_LEN)
    }

    /// Allocates the reply with room for `body_len` body bytes; return it in
    /// [`Handled::Reply`] after writing the body, and [`serve_one`] pushes it after popping the
    /// request. Allocate before doing work that cannot be undone: on an error, return
    /// [`Handled::Keep`] (retry later), and the request is delivered again. Cost: the transport's
    /// `alloc` and an 8-byte store.
    ///
    /// # Errors
    /// As [`alloc_reply`].
    pub fn alloc(self, body_len: u32, tag: u16) -> Result<IdSlot<Tx::Slot<'t>>, SendError> {
        alloc_with_id(self.tx, self.id, body_len, tag)
    }
}

impl<Tx: ?Sized> fmt::Debug for Replier<'_, Tx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replier")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a [`serve_one`] handler did with its request.
pub enum Handled<Sl> {
    /// Answer with this reply: the request is popped, then the reply pushed.
    Reply(IdSlot<Sl>),
    /// The request needs no reply (or the server chose not to send one): the request is popped.
    NoReply,
    /// Leave the request queued, nothing committed (e.g. no room for the reply now): it is
    /// delivered again by the next `front`. Any work the handler did will be done again.
    Keep,
}

impl<Sl> fmt::Debug for Handled<Sl> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reply(reply) => f.debug_tuple("Reply").field(reply).finish(),
            Self::NoReply => f.write_str("NoReply"),
            Self::Keep => f.write_str("Keep"),
        }
    }
}

/// What [`serve_one`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Served {
    /// The request was popped and its reply pushed.
    Replied(RequestId),
    /// The request was popped; no reply was sent.
    NoReply(RequestId),
    /// The request was left queued ([`Handled::Keep`]).
    Kept(RequestId),
    /// The message was too short to carry a request id; it was popped without calling the
    /// handler (there is no id to answer to).
    Malformed {
        /// The message's payload length.
        len: usize,
    },
}

/// Serves the oldest request on `rx` in tcpshm's order: `front`; `handle` reads the request in
/// place and, through its [`Replier`], allocates and writes the reply in place; then the request
/// is **popped** (the commit), and only then the reply **pushed**. A crash between the pop and
/// the push loses this one reply (the client times out) and never redelivers the request, so its
/// work is done at most once (module docs).
///
/// A message too short for a request id is popped and reported as [`Served::Malformed`] without
/// calling `handle`. Cost: the transports' `front`, `pop`, `alloc` and `push`, plus `handle`;
/// nothing is copied. Call it in a loop with a budget to serve a batch.
///
/// # Errors
/// As [`MessageReceiver::front`] ([`RecvError::Empty`]: no request now; `handle` is not called)
/// and [`MessageReceiver::pop`]; if the pop fails after `handle` returned a reply, the reply is
/// dropped unpublished.
pub fn serve_one<'t, Rx, Tx, F>(rx: &mut Rx, tx: &'t mut Tx, handle: F) -> Result<Served, RecvError>
where
    Rx: MessageReceiver + ?Sized,
    Tx: MessageSender + ?Sized + 't,
    F: FnOnce(Request<'_>, Replier<'t, Tx>) -> Handled<Tx::Slot<'t>>,
{
    let message = rx.front()?;
    let request = match Request::parse(message) {
        Ok(request) => request,
        Err(MissingRequestId { len }) => {
            rx.pop()?;
            return Ok(Served::Malformed { len });
        }
    };
    let id = request.id();
    match handle(request, Replier { tx, id }) {
        Handled::Reply(reply) => {
            rx.pop()?;
            reply.push();
            Ok(Served::Replied(id))
        }
        Handled::NoReply => {
            rx.pop()?;
            Ok(Served::NoReply(id))
        }
        Handled::Keep => Ok(Served::Kept(id)),
    }
}

/// Why [`Requests::alloc`] or [`Requests::send`] sent nothing.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The table already holds its capacity of outstanding requests; retry once a reply or a
    /// timeout has freed an entry. The sender was not touched.
    Full,
    /// The sender refused the message (e.g. [`SendError::Full`]: no room now). The table is
    /// unchanged and the id was not used.
    Send(SendError),
    /// The table has issued every id up to `u64::MAX`; make a new table with a new first id.
    IdsExhausted,
}

impl From<SendError> for RequestError {
    fn from(error: SendError) -> Self {
        Self::Send(error)
    }
}

impl core::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Send(error) => Some(error),
            Self::Full | Self::IdsExhausted => None,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("too many outstanding requests"),
            Self::Send(error) => write!(f, "request not sent: {error}"),
            Self::IdsExhausted => f.write_str("request ids are exhausted"),
        }
    }
}

/// What a reply turned out to be, from [`Requests::on_reply`] (module docs have the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Reply<'a> {
    /// The reply to an outstanding request, which is now answered and no longer outstanding.
    Matched {
        /// The request's id.
        id: RequestId,
        /// The token given when the request was sent.
        token: u64,
        /// The reply's body, after the id.
        body: &'a [u8],
    },
    /// A reply to a request of this table that timed out (was yielded by
    /// [`expire`](Requests::expire)); for an id older than [`LATE_WINDOW`], to a request of this
    /// table that is over, timed out or answered.
    Late {
        /// The request's id.
        id: RequestId,
        /// The reply's body, after the id.
        body: &'a [u8],
    },
    /// A further reply to a request, among the last [`LATE_WINDOW`] issued, that was already
    /// answered (matched, or reported late): e.g. a server that pushed the reply before popping
    /// the request, crashed between the two and answered the redelivered request again.
    Duplicate {
        /// The request's id.
        id: RequestId,
        /// The reply's body, after the id.
        body: &'a [u8],
    },
    /// An id this table never issued: below its first id (e.g. a reply to a previous
    /// incarnation of the client) or not issued yet.
    Unknown {
        /// The id the reply carries.
        id: RequestId,
        /// The reply's body, after the id.
        body: &'a [u8],
    },
    /// A payload too short to carry a request id.
    Malformed {
        /// The payload's length.
        len: usize,
    },
}

/// A request whose deadline passed, yielded by [`Requests::expire`]; it is no longer outstanding,
/// and a reply to it that still arrives is [`Reply::Late`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The request's id.
    pub id: RequestId,
    /// The token given when the request was sent.
    pub token: u64,
    /// The request's deadline.
    pub deadline: u64,
}

/// Counters of a [`Requests`] table since it was made. Every request sent is, at any moment,
/// matched, timed out or outstanding: `sent == matched + timed_out + len()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Requests pushed.
    pub sent: u64,
    /// Replies matched to an outstanding request.
    pub matched: u64,
    /// Requests yielded by [`Requests::expire`].
    pub timed_out: u64,
    /// Replies reported [`Reply::Late`].
    pub late: u64,
    /// Replies reported [`Reply::Duplicate`].
    pub duplicate: u64,
    /// Replies reported [`Reply::Unknown`].
    pub unknown: u64,
    /// Replies reported [`Reply::Malformed`].
    pub malformed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    id: u64,
    deadline: u64,
    token: u64,
}

/// The client's table of up to `N` outstanding requests (id, deadline, token), with the ids'
/// allocation and the classification of replies (module docs). Fixed size, no allocation:
/// `N * 24` bytes plus a 512-byte window of [`LATE_WINDOW`] bits.
///
/// Costs: looking an id up is a binary search over the outstanding requests (kept in id order);
/// removing one shifts the entries after it (at most `N - 1` of 24 bytes);
/// [`expire`](Self::expire) is one comparison when nothing is due, and one pass over the
/// outstanding requests per request it yields.
///
/// Not `Clone`: two copies would issue the same ids.
#[derive(Debug)]
pub struct Requests<const N: usize> {
    /// Sorted by id: ids are issued in increasing order and appended.
    outstanding: heapless::Vec<Outstanding, N>,
    first: u64,
    next: u64,
    /// At most the earliest deadline of the outstanding requests (`u64::MAX` when there are
    /// none); a reply can leave it lower than that, and the next due `expire` raises it again.
    earliest: u64,
    /// Bit `id % LATE_WINDOW`, for the ids in the window: timed out, and no reply seen since.
    timed_out: [u64; WINDOW_WORDS],
    stats: RequestStats,
}

impl<const N: usize> Requests<N> {
    /// An empty table whose first request gets id `first`; replies with ids below it are
    /// [`Reply::Unknown`]. A process that may restart while replies to it are still queued needs
    /// a first id above every id its previous incarnation issued: [`from_clock`](Self::from_clock)
    /// (module docs, "Ids after a restart").
    pub const fn new(first: RequestId) -> Self {
        Self {
            outstanding: heapless::Vec::new(),
            first: first.0,
            next: first.0,
            earliest: u64::MAX,
            timed_out: [0; WINDOW_WORDS],
            stats: RequestStats {
                sent: 0,
                matched: 0,
                timed_out: 0,
                late: 0,
                duplicate: 0,
                unknown: 0,
                malformed: 0,
            },
        }
    }

    /// An empty table whose first id is the wall clock in nanoseconds ([`RequestId::from_clock`]):
    /// the default for a client that may restart. Reads the system clock once.
    pub fn from_clock() -> Self {
        Self::new(RequestId::from_clock())
    }

    /// The id of the first request of this table.
    pub fn first_id(&self) -> RequestId {
        RequestId(self.first)
    }

    /// The id the next request will get. Ids in `first_id()..next_id()` have been issued.
    pub fn next_id(&self) -> RequestId {
        RequestId(self.next)
    }

    /// How many requests are outstanding (sent, neither matched nor expired).
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    /// `true` when no request is outstanding.
    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// `true` when `N` requests are outstanding: sending now fails with [`RequestError::Full`].
    pub fn is_full(&self) -> bool {
        self.outstanding.is_full()
    }

    /// The most requests that can be outstanding at once: `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Whether request `id` is outstanding. Cost: a binary search.
    pub fn is_outstanding(&self, id: RequestId) -> bool {
        self.find(id.0).is_ok()
    }

    /// The counters since the table was made.
    pub fn stats(&self) -> RequestStats {
        self.stats
    }

    /// Reserves a request on `tx` with room for `body_len` body bytes after its id, which it
    /// writes; write the body with [`RequestSlot::body_mut`], then [`RequestSlot::push`] to send
    /// it and record it as outstanding until `deadline` (nanoseconds, e.g. `now + timeout`) with
    /// `token` (any value; returned with its reply or its expiry). Dropping the slot sends
    /// nothing and uses no id. Cost: the transport's `alloc` and an 8-byte store.
    ///
    /// # Errors
    /// [`RequestError::Full`] when `N` requests are outstanding (the sender is not touched);
    /// [`RequestError::Send`] when the sender refuses a payload of `body_len + 8` bytes;
    /// [`RequestError::IdsExhausted`] after `u64::MAX - first` requests.
    pub fn alloc<'a, S: MessageSender + ?Sized>(
        &'a mut self,
        tx: &'a mut S,
        body_len: u32,
        tag: u16,
        deadline: u64,
        token: u64,
    ) -> Result<RequestSlot<'a, S::Slot<'a>, N>, RequestError> {
        if self.outstanding.is_full() {
            return Err(RequestError::Full);
        }
        if self.next == u64::MAX {
            return Err(RequestError::IdsExhausted);
        }
        let slot = alloc_with_id(tx, RequestId(self.next), body_len, tag)?;
        Ok(RequestSlot {
            slot,
            requests: self,
            deadline,
            token,
        })
    }

    /// Sends a request whose body is a copy of `body`: [`alloc`](Self::alloc), copy,
    /// [`push`](RequestSlot::push). Returns the request's id.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc); a body longer than `u32::MAX` is
    /// `RequestError::Send(SendError::TooLarge { .. })`.
    pub fn send<S: MessageSender + ?Sized>(
        &mut self,
        tx: &mut S,
        tag: u16,
        body: &[u8],
        deadline: u64,
        token: u64,
    ) -> Result<RequestId, RequestError> {
        let body_len = u32::try_from(body.len()).map_err(|_| SendError::TooLarge {
            len: body.len() as u64,
            max: tx.max_payload(),
        })?;
        let mut slot = self.alloc(tx, body_len, tag, deadline, token)?;
        slot.body_mut().copy_from_slice(body);
        Ok(slot.push())
    }

    /// Classifies a reply's payload (module docs have the rule) and updates the table and the
    /// counters: a [`Reply::Matched`] request is no longer outstanding. Never matches a reply to
    /// a request other than the one whose id it carries. Cost: a binary search over the
    /// outstanding requests, a shift of the entries after a matched one.
    pub fn on_reply<'p>(&mut self, payload: &'p [u8]) -> Reply<'p> {
        let (id, body) = match split_request_id(payload) {
            Ok(split) => split,
            Err(MissingRequestId { len }) => {
                self.stats.malformed += 1;
                return Reply::Malformed { len };
            }
        };
        if id.0 < self.first || id.0 >= self.next {
            self.stats.unknown += 1;
            return Reply::Unknown { id, body };
        }
        if let Ok(index) = self.find(id.0) {
            let request = self.outstanding.remove(index);
            self.stats.matched += 1;
            return Reply::Matched {
                id,
                token: request.token,
                body,
            };
        }
        if self.in_window(id.0) && !self.take_timed_out(id.0) {
            self.stats.duplicate += 1;
            Reply::Duplicate { id, body }
        } else {
            self.stats.late += 1;
            Reply::Late { id, body }
        }
    }

    /// The requests whose deadline is at or before `now`, earliest deadline first, each removed
    /// from the table as it is yielded (a reply to it is then [`Reply::Late`]). Requests the
    /// iterator is dropped before yielding stay outstanding. Cost: one comparison when nothing is
    /// due (the table tracks the earliest deadline; after a reply removed the request that had
    /// it, one pass finds the next); one pass over the outstanding requests per request yielded.
    pub fn expire(&mut self, now: u64) -> Expire<'_, N> {
        Expire {
            requests: self,
            now,
        }
    }

    fn find(&self, id: u64) -> Result<usize, usize> {
        self.outstanding
            .binary_search_by_key(&id, |request| request.id)
    }

    /// Whether `id` (issued) is among the last [`LATE_WINDOW`] issued.
    fn in_window(&self, id: u64) -> bool {
        self.next - id <= LATE_WINDOW
    }

    fn bit(id: u64) -> (usize, u64) {
        let at = id % LATE_WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn set_timed_out(&mut self, id: u64, value: bool) {
        let (word, mask) = Self::bit(id);
        if value {
            self.timed_out[word] |= mask;
        } else {
            self.timed_out[word] &= !mask;
        }
    }

    /// Clears `id`'s timed-out bit, returning whether it was set.
    fn take_timed_out(&mut self, id: u64) -> bool {
        let (word, mask) = Self::bit(id);
        let was = self.timed_out[word] & mask != 0;
        self.timed_out[word] &= !mask;
        was
    }

    /// Records the request of a pushed slot as outstanding.
    fn record(&mut self, deadline: u64, token: u64) -> RequestId {
        let id = self.next;
        let inserted = self.outstanding.push(Outstanding {
            id,
            deadline,
            token,
        });
        // `alloc` checked for room, and the slot has held the table borrowed since.
        debug_assert!(inserted.is_ok(), "room was checked by alloc");
        self.next += 1;
        // The bit is reused from the id that just left the window.
        self.set_timed_out(id, false);
        self.earliest = self.earliest.min(deadline);
        self.stats.sent += 1;
        RequestId(id)
    }
}

/// A request being written, from [`Requests::alloc`]: write the body, then
/// [`push`](Self::push); dropping it sends nothing and leaves the table unchanged.
pub struct RequestSlot<'a, Sl, const N: usize> {
    slot: IdSlot<Sl>,
    requests: &'a mut Requests<N>,
    deadline: u64,
    token: u64,
}

impl<Sl: SendSlot, const N: usize> RequestSlot<'_, Sl, N> {
    /// The id the request will have (already written into it).
    pub fn id(&self) -> RequestId {
        self.slot.id()
    }

    /// The message's type tag.
    pub fn tag(&self) -> u16 {
        self.slot.tag()
    }

    /// The body to fill, after the id: exactly the length asked for, 8-byte aligned. Its previous
    /// contents are unspecified: write all of it.
    pub fn body_mut(&mut self) -> &mut [u8] {
        self.slot.body_mut()
    }

    /// Sends the request and records it as outstanding; returns its id. Cost: the transport's
    /// push and an append to the table.
    pub fn push(self) -> RequestId {
        let id = self.requests.record(self.deadline, self.token);
        debug_assert_eq!(id, self.slot.id());
        self.slot.push();
        id
    }
}

impl<Sl: SendSlot, const N: usize> fmt::Debug for RequestSlot<'_, Sl, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSlot")
            .field("id", &self.slot.id())
            .field("tag", &self.slot.tag())
            .field("deadline", &self.deadline)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The iterator of [`Requests::expire`]: yields the requests due at its `now`, earliest deadline
/// first, removing each from the table.
#[derive(Debug)]
pub struct Expire<'a, const N: usize> {
    requests: &'a mut Requests<N>,
    now: u64,
}

impl<const N: usize> Iterator for Expire<'_, N> {
    type Item = Expired;

    fn next(&mut self) -> Option<Expired> {
        let requests = &mut *self.requests;
        if self.now < requests.earliest {
            return None;
        }
        // The earliest deadline (its first holder in id order) and the earliest of the others.
        let mut earliest: Option<(usize, u64)> = None;
        let mut rest = u64::MAX;
        for (index, request) in requests.outstanding.iter().enumerate() {
            match earliest {
                Some((_, deadline)) if request.deadline >= deadline => {
                    rest = rest.min(request.deadline);
                }
                _ => {
                    if let Some((_, deadline)) = earliest {
                        rest = rest.min(deadline);
                    }
                    earliest = Some((index, request.deadline));
                }
            }
        }
        match earliest {
            Some((index, deadline)) if deadline <= self.now => {
                let request = requests.outstanding.remove(index);
                requests.earliest = rest;
                if requests.in_window(request.id) {
                    requests.set_timed_out(request.id, true);
                }
                requests.stats.timed_out += 1;
                Some(Expired {
                    id: RequestId(request.id),
                    token: request.token,
                    deadline,
                })
            }
            Some((_, deadline)) => {
                requests.earliest = deadline;
                None
            }
            None => {
                requests.earliest = u64::MAX;
                None
            }
        }
    }
}

impl<const N: usize> FusedIterator for Expire<'_, N> {}
