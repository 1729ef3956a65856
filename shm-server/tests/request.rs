//! Tests of `shm_server::request`: correlation of replies to requests, timeouts and late
//! replies, ids across a restart, the server's pop-before-push order, and a model test.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use proptest::prelude::*;
use shm_server::request::{
    alloc_reply, request_id, serve_one, split_request_id, Expired, Handled, MissingRequestId,
    Reply, Request, RequestError, RequestId, Requests, Served, LATE_WINDOW, REQUEST_ID_LEN,
};
use spsc_core::{MessageReceiver, MessageRing, MessageSender, RecvError, SendError};

const CLIENT: NonZeroU32 = NonZeroU32::MIN;
const SERVER: NonZeroU32 = NonZeroU32::new(2).unwrap();

/// A reply payload: `id` then `body`, as a server would write it.
fn reply_payload(id: RequestId, body: &[u8]) -> Vec<u8> {
    let mut payload = id.get().to_le_bytes().to_vec();
    payload.extend_from_slice(body);
    payload
}

/// Pops every request queued on `rx`: (id, body).
fn drain_requests(rx: &mut impl MessageReceiver) -> Vec<(RequestId, Vec<u8>)> {
    let mut requests = Vec::new();
    while let Ok(message) = rx.front() {
        let request = Request::parse(message).unwrap();
        requests.push((request.id(), request.body().to_vec()));
        rx.pop().unwrap();
    }
    requests
}

/// Feeds every queued reply to `requests`; returns what each turned out to be, bodies copied.
fn drain_replies<const N: usize>(
    rx: &mut impl MessageReceiver,
    requests: &mut Requests<N>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    while let Ok(message) = rx.front() {
        outcomes.push(Outcome::from(requests.on_reply(message.payload())));
        rx.pop().unwrap();
    }
    outcomes
}

/// A [`Reply`] with its body copied, to compare after the message is popped.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Matched(RequestId, u64, Vec<u8>),
    Late(RequestId),
    Duplicate(RequestId),
    Unknown(RequestId),
    Malformed(usize),
}

impl From<Reply<'_>> for Outcome {
    fn from(reply: Reply<'_>) -> Self {
        match reply {
            Reply::Matched { id, token, body } => Self::Matched(id, token, body.to_vec()),
            Reply::Late { id, .. } => Self::Late(id),
            Reply::Duplicate { id, .. } => Self::Duplicate(id),
            Reply::Unknown { id, .. } => Self::Unknown(id),
            Reply::Malformed { len } => Self::Malformed(len),
        }
    }
}

#[test]
fn wire_helpers() {
    assert_eq!(REQUEST_ID_LEN, 8);
    let payload = reply_payload(RequestId(0x0102_0304_0506_0708), b"body");
    assert_eq!(&payload[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(request_id(&payload), Ok(RequestId(0x0102_0304_0506_0708)));
    assert_eq!(
        split_request_id(&payload),
        Ok((RequestId(0x0102_0304_0506_0708), &b"body"[..]))
    );
    assert_eq!(
        split_request_id(&payload[..8]),
        Ok((RequestId(0x0102_0304_0506_0708), &b""[..]))
    );
    assert_eq!(request_id(&payload[..7]), Err(MissingRequestId { len: 7 }));
    assert_eq!(request_id(&[]), Err(MissingRequestId { len: 0 }));
}

#[test]
fn several_outstanding_requests_answered_out_of_order() {
    let mut requests_ring = MessageRing::<4096>::new();
    let mut replies_ring = MessageRing::<4096>::new();
    let (mut request_tx, mut request_rx) = requests_ring.split();
    let (mut reply_tx, mut reply_rx) = replies_ring.split();
    let mut requests = Requests::<4>::new(RequestId(100));

    let mut ids = Vec::new();
    for (token, body) in [(10, b"aaaa"), (11, b"bbbb"), (12, b"cccc")] {
        let mut slot = requests.alloc(&mut request_tx, 4, 9, 1_000, token).unwrap();
        assert_eq!(slot.tag(), 9);
        slot.body_mut().copy_from_slice(body);
        ids.push(slot.push());
    }
    assert_eq!(ids, [RequestId(100), RequestId(101), RequestId(102)]);
    assert_eq!(requests.len(), 3);
    assert_eq!(requests.next_id(), RequestId(103));

    // The server reads all three, then answers the last first.
    let received = drain_requests(&mut request_rx);
    assert_eq!(received.len(), 3);
    for index in [2, 0, 1] {
        let (id, body) = &received[index];
        let mut reply = alloc_reply(&mut reply_tx, *id, 5, 3).unwrap();
        assert_eq!(reply.id(), *id);
        reply.body_mut()[..4].copy_from_slice(body);
        reply.body_mut()[4] = b'!';
        reply.push();
    }

    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [
            Outcome::Matched(RequestId(102), 12, b"cccc!".to_vec()),
            Outcome::Matched(RequestId(100), 10, b"aaaa!".to_vec()),
            Outcome::Matched(RequestId(101), 11, b"bbbb!".to_vec()),
        ]
    );
    assert!(requests.is_empty());
    assert_eq!(requests.expire(u64::MAX).count(), 0);
    let stats = requests.stats();
    assert_eq!((stats.sent, stats.matched, stats.timed_out), (3, 3, 0));
}

#[test]
fn a_late_reply_is_reported_late_and_never_matched_to_a_later_request() {
    let mut requests_ring = MessageRing::<4096>::new();
    let mut replies_ring = MessageRing::<4096>::new();
    let (mut request_tx, mut request_rx) = requests_ring.split();
    let (mut reply_tx, mut reply_rx) = replies_ring.split();
    // One entry: the second request reuses the slot the timed-out first one had.
    let mut requests = Requests::<1>::new(RequestId(7));

    let first = requests.send(&mut request_tx, 0, b"first", 100, 1).unwrap();
    assert_eq!(
        requests.send(&mut request_tx, 0, b"no room", 100, 2),
        Err(RequestError::Full)
    );
    assert_eq!(requests.expire(99).count(), 0);
    assert_eq!(
        requests.expire(100).collect::<Vec<_>>(),
        [Expired {
            id: first,
            token: 1,
            deadline: 100
        }]
    );
    let second = requests
        .send(&mut request_tx, 0, b"second", 200, 2)
        .unwrap();
    assert_ne!(first, second);

    // The server answers both, the first one only now (late), and the first one twice.
    for (id, body) in drain_requests(&mut request_rx) {
        let mut reply = alloc_reply(&mut reply_tx, id, body.len() as u32, 0).unwrap();
        reply.body_mut().copy_from_slice(&body);
        reply.push();
    }
    alloc_reply(&mut reply_tx, first, 0, 0).unwrap().push();

    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [
            Outcome::Late(first),
            Outcome::Matched(second, 2, b"second".to_vec()),
            Outcome::Duplicate(first),
        ]
    );
    let stats = requests.stats();
    assert_eq!(
        (
            stats.sent,
            stats.matched,
            stats.timed_out,
            stats.late,
            stats.duplicate
        ),
        (2, 1, 1, 1, 1)
    );
}

#[test]
fn the_late_window_is_exact_and_older_ids_are_late() {
    let mut ring = MessageRing::<4096>::new();
    let (mut tx, mut rx) = ring.split();
    let mut requests = Requests::<2>::new(RequestId(1_000));

    // Four requests that end: timed out (oldest, then at the window's edge), answered.
    let old_timed_out = requests.send(&mut tx, 0, b"", 0, 0).unwrap();
    assert_eq!(requests.expire(0).count(), 1);
    let old_answered = requests.send(&mut tx, 0, b"", 0, 0).unwrap();
    assert!(matches!(
        requests.on_reply(&reply_payload(old_answered, b"")),
        Reply::Matched { .. }
    ));
    let edge_timed_out = requests.send(&mut tx, 0, b"", 0, 0).unwrap();
    assert_eq!(requests.expire(0).count(), 1);
    let edge_answered = requests.send(&mut tx, 0, b"", 0, 0).unwrap();
    assert!(matches!(
        requests.on_reply(&reply_payload(edge_answered, b"")),
        Reply::Matched { .. }
    ));
    drain_requests(&mut rx);

    // An outstanding request older than the window still matches.
    let long_lived = requests.send(&mut tx, 0, b"", u64::MAX, 42).unwrap();
    // Then enough answered requests that `edge_*` are the oldest ids of the window.
    while requests.next_id().get() - edge_timed_out.get() < LATE_WINDOW {
        let id = requests.send(&mut tx, 0, b"", 1, 0).unwrap();
        assert!(matches!(
            requests.on_reply(&reply_payload(id, b"")),
            Reply::Matched { .. }
        ));
        drain_requests(&mut rx);
    }
    assert_eq!(requests.next_id().get() - edge_timed_out.get(), LATE_WINDOW);

    let outcome =
        |requests: &mut Requests<2>, id| Outcome::from(requests.on_reply(&reply_payload(id, b"")));
    // Inside the window the split is exact.
    assert_eq!(
        outcome(&mut requests, edge_timed_out),
        Outcome::Late(edge_timed_out)
    );
    assert_eq!(
        outcome(&mut requests, edge_timed_out),
        Outcome::Duplicate(edge_timed_out)
    );
    assert_eq!(
        outcome(&mut requests, edge_answered),
        Outcome::Duplicate(edge_answered)
    );
    // Beyond it, a request that is over is late, whether it timed out or was answered.
    assert_eq!(
        outcome(&mut requests, old_timed_out),
        Outcome::Late(old_timed_out)
    );
    assert_eq!(
        outcome(&mut requests, old_answered),
        Outcome::Late(old_answered)
    );
    assert_eq!(
        outcome(&mut requests, long_lived),
        Outcome::Matched(long_lived, 42, Vec::new())
    );
    // One more id pushes `edge_timed_out` out of the window: its bit is reused, not inherited.
    let newest = requests.send(&mut tx, 0, b"", 0, 0).unwrap();
    assert_eq!(
        newest.get() % LATE_WINDOW,
        edge_timed_out.get() % LATE_WINDOW
    );
    assert_eq!(
        outcome(&mut requests, edge_timed_out),
        Outcome::Late(edge_timed_out)
    );
    assert_eq!(
        outcome(&mut requests, newest),
        Outcome::Matched(newest, 0, Vec::new())
    );
    let stats = requests.stats();
    assert_eq!(
        stats.sent,
        stats.matched + stats.timed_out + requests.len() as u64
    );
}

#[test]
fn a_window_bit_is_not_inherited_by_the_id_that_reuses_it() {
    let mut ring = MessageRing::<4096>::new();
    let (mut tx, mut rx) = ring.split();
    let mut requests = Requests::<1>::new(RequestId(3));
    // Times out, and its late reply never comes.
    let silent = requests.send(&mut tx, 0, b"", 0, 0).unwrap();
    assert_eq!(requests.expire(0).count(), 1);
    let mut id = silent;
    while id.get() - silent.get() < LATE_WINDOW {
        id = requests.send(&mut tx, 0, b"", 10, 1).unwrap();
        drain_requests(&mut rx);
        assert!(matches!(
            requests.on_reply(&reply_payload(id, b"")),
            Reply::Matched { .. }
        ));
    }
    // `id` took over `silent`'s bit: answered once, a second reply is a duplicate, not late.
    assert_eq!(id.get() % LATE_WINDOW, silent.get() % LATE_WINDOW);
    assert_eq!(
        Outcome::from(requests.on_reply(&reply_payload(id, b""))),
        Outcome::Duplicate(id)
    );
    assert_eq!(
        Outcome::from(requests.on_reply(&reply_payload(silent, b""))),
        Outcome::Late(silent)
    );
}

#[test]
fn replies_to_a_previous_incarnation_are_unknown() {
    let requests_ring = MessageRing::<4096>::new();
    let mut replies_ring = MessageRing::<4096>::new();
    let (mut reply_tx, mut reply_rx) = replies_ring.split();

    // The first incarnation sends ids 5, 6, 7, then dies before reading the replies.
    {
        let mut request_tx = requests_ring.claim_producer(CLIENT).unwrap();
        let mut requests = Requests::<4>::new(RequestId(5));
        for token in 0..3 {
            requests
                .send(&mut request_tx, 0, b"old", 1_000, token)
                .unwrap();
        }
    }
    let mut request_rx = requests_ring.claim_consumer(SERVER).unwrap();
    for (id, _) in drain_requests(&mut request_rx) {
        let mut reply = alloc_reply(&mut reply_tx, id, 3, 0).unwrap();
        reply.body_mut().copy_from_slice(b"old");
        reply.push();
    }

    // Had the new incarnation started at 5 again, the stale reply to 5 would match its request.
    let mut naive_ring = MessageRing::<256>::new();
    let mut naive = Requests::<4>::new(RequestId(5));
    let naive_id = naive.send(&mut naive_ring.split().0, 0, b"new", 1_000, 99);
    assert_eq!(naive_id, Ok(RequestId(5)));
    assert!(matches!(
        naive.on_reply(&reply_payload(RequestId(5), b"old")),
        Reply::Matched { token: 99, .. }
    ));

    // The new incarnation starts above every id the old one issued, and sends before reading.
    let mut request_tx = requests_ring.claim_producer(CLIENT).unwrap();
    let mut requests = Requests::<4>::new(RequestId(1_000));
    let new = requests
        .send(&mut request_tx, 0, b"new", 1_000, 50)
        .unwrap();
    for (id, body) in drain_requests(&mut request_rx) {
        let mut reply = alloc_reply(&mut reply_tx, id, body.len() as u32, 0).unwrap();
        reply.body_mut().copy_from_slice(&body);
        reply.push();
    }
    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [
            Outcome::Unknown(RequestId(5)),
            Outcome::Unknown(RequestId(6)),
            Outcome::Unknown(RequestId(7)),
            Outcome::Matched(new, 50, b"new".to_vec()),
        ]
    );
    // An id not issued yet is unknown too, and does not disturb the next request.
    assert_eq!(
        Outcome::from(requests.on_reply(&reply_payload(requests.next_id(), b""))),
        Outcome::Unknown(RequestId(1_001))
    );
    let stats = requests.stats();
    assert_eq!((stats.unknown, stats.matched), (4, 1));
}

#[test]
fn first_id_from_the_clock() {
    // 2020-01-01 in nanoseconds since the epoch: any sane clock is past it.
    const JAN_2020: u64 = 1_577_836_800_000_000_000;
    let earlier = Requests::<1>::from_clock();
    let later = RequestId::from_clock();
    assert!(earlier.first_id().get() > JAN_2020);
    assert!(later >= earlier.first_id());
    assert_eq!(earlier.next_id(), earlier.first_id());
}

#[test]
fn malformed_replies_and_requests() {
    let mut requests = Requests::<1>::new(RequestId(1));
    assert_eq!(requests.on_reply(&[1, 2, 3]), Reply::Malformed { len: 3 });
    assert_eq!(requests.on_reply(&[]), Reply::Malformed { len: 0 });
    assert_eq!(requests.stats().malformed, 2);

    // A server pops a request too short for an id without calling its handler.
    let mut requests_ring = MessageRing::<256>::new();
    let mut replies_ring = MessageRing::<256>::new();
    let (mut request_tx, mut request_rx) = requests_ring.split();
    let (mut reply_tx, mut reply_rx) = replies_ring.split();
    request_tx.send(0, &[1, 2, 3, 4]).unwrap();
    let served = serve_one(&mut request_rx, &mut reply_tx, |_, _| -> Handled<_> {
        panic!("no handler for a malformed request")
    });
    assert_eq!(served, Ok(Served::Malformed { len: 4 }));
    assert_eq!(request_rx.front(), Err(RecvError::Empty));
    assert_eq!(reply_rx.front(), Err(RecvError::Empty));
}

#[test]
fn full_table_and_refused_sends_leave_everything_unchanged() {
    let mut ring = MessageRing::<256>::new();
    let (mut tx, mut rx) = ring.split();
    let mut requests = Requests::<2>::new(RequestId(10));
    assert_eq!(requests.capacity(), 2);
    let a = requests.send(&mut tx, 0, b"a", 50, 0).unwrap();
    let b = requests.send(&mut tx, 0, b"b", 60, 1).unwrap();
    assert!(requests.is_full());
    assert_eq!(
        requests.alloc(&mut tx, 1, 0, 70, 2).map(|slot| slot.id()),
        Err(RequestError::Full)
    );
    assert_eq!(requests.next_id(), RequestId(12));
    assert_eq!(
        drain_requests(&mut rx).len(),
        2,
        "the full table sent nothing"
    );

    // A reply frees an entry.
    assert!(matches!(
        requests.on_reply(&reply_payload(b, b"")),
        Reply::Matched { token: 1, .. }
    ));
    assert!(requests.is_outstanding(a) && !requests.is_outstanding(b));

    // A dropped slot sends nothing and uses no id.
    let _ = requests.alloc(&mut tx, 1, 0, 70, 2).unwrap();
    assert_eq!(requests.next_id(), RequestId(12));
    assert_eq!(rx.front(), Err(RecvError::Empty));

    // The sender's errors come back typed, with nothing recorded.
    let max = tx.max_payload();
    assert_eq!(
        requests.send(&mut tx, 0, &vec![0; max as usize], 70, 2),
        Err(RequestError::Send(SendError::TooLarge {
            len: u64::from(max) + 8,
            max
        }))
    );
    assert!(matches!(
        requests
            .alloc(&mut tx, u32::MAX, 0, 70, 2)
            .map(|slot| slot.id()),
        Err(RequestError::Send(SendError::TooLarge { .. }))
    ));
    let mut other = Requests::<64>::new(RequestId(500));
    let refused = loop {
        match other.send(&mut tx, 0, &[0; 16], 70, 2) {
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert_eq!(refused, RequestError::Send(SendError::Full));
    let sent = other.stats().sent;
    assert_eq!(other.len() as u64, sent);
    assert_eq!(other.next_id(), RequestId(500 + sent));
    assert_eq!(drain_requests(&mut rx).len() as u64, sent);
    assert_eq!(requests.stats().sent, 2);
}

#[test]
fn expire_yields_due_requests_earliest_deadline_first() {
    let mut ring = MessageRing::<4096>::new();
    let (mut tx, _rx) = ring.split();
    let mut requests = Requests::<8>::new(RequestId(0));
    let ids: Vec<_> = [30, 10, 20, 10]
        .into_iter()
        .enumerate()
        .map(|(token, deadline)| {
            requests
                .send(&mut tx, 0, b"", deadline, token as u64)
                .unwrap()
        })
        .collect();
    assert_eq!(requests.expire(9).next(), None);
    // Stopping early leaves the rest outstanding.
    let first = requests.expire(25).next().unwrap();
    assert_eq!((first.id, first.deadline), (ids[1], 10));
    let rest: Vec<_> = requests.expire(25).map(|expired| expired.token).collect();
    assert_eq!(rest, [3, 2]);
    // A reply removes the request that held the earliest deadline; expiring is still exact.
    assert!(matches!(
        requests.on_reply(&reply_payload(ids[0], b"")),
        Reply::Matched { .. }
    ));
    assert_eq!(requests.expire(u64::MAX).count(), 0);
    assert!(requests.is_empty());
    assert_eq!(requests.stats().timed_out, 3);
}

/// The server's work, counted: doubles a number.
fn double(work_done: &mut u32, body: &[u8]) -> [u8; 8] {
    *work_done += 1;
    (2 * u64::from_le_bytes(body.try_into().unwrap())).to_le_bytes()
}

#[test]
fn pop_before_push_a_crash_between_loses_the_reply_never_repeats_the_work() {
    let requests_ring = MessageRing::<4096>::new();
    let replies_ring = MessageRing::<4096>::new();
    let mut request_tx = requests_ring.claim_producer(CLIENT).unwrap();
    let mut reply_rx = replies_ring.claim_consumer(CLIENT).unwrap();
    let mut requests = Requests::<4>::new(RequestId(1));
    let mut work_done = 0;

    let id = requests
        .send(&mut request_tx, 0, &21u64.to_le_bytes(), 100, 0)
        .unwrap();

    // The server reads the request, does the work, writes the reply in place, pops the
    // request, and dies before pushing the reply.
    {
        let mut request_rx = requests_ring.claim_consumer(SERVER).unwrap();
        let mut reply_tx = replies_ring.claim_producer(SERVER).unwrap();
        let request = Request::parse(request_rx.front().unwrap()).unwrap();
        let mut reply = alloc_reply(&mut reply_tx, request.id(), 8, 0).unwrap();
        reply
            .body_mut()
            .copy_from_slice(&double(&mut work_done, request.body()));
        request_rx.pop().unwrap();
        // The crash: `reply` is never pushed, and goes with the server.
    }

    // The restarted server finds no request to do again.
    let mut request_rx = requests_ring.claim_consumer(SERVER).unwrap();
    let mut reply_tx = replies_ring.claim_producer(SERVER).unwrap();
    assert_eq!(
        serve_one(&mut request_rx, &mut reply_tx, |_, _| -> Handled<_> {
            panic!("the popped request is never delivered again")
        }),
        Err(RecvError::Empty)
    );
    assert_eq!(work_done, 1);

    // The client gets no reply, and times out.
    assert_eq!(drain_replies(&mut reply_rx, &mut requests), []);
    assert_eq!(
        requests
            .expire(100)
            .map(|expired| expired.id)
            .collect::<Vec<_>>(),
        [id]
    );

    // The next request is served in that order by `serve_one`, and answered.
    let next = requests
        .send(&mut request_tx, 0, &5u64.to_le_bytes(), 200, 1)
        .unwrap();
    let served = serve_one(
        &mut request_rx,
        &mut reply_tx,
        |request, replier| match replier.alloc(8, 0) {
            Ok(mut reply) => {
                reply
                    .body_mut()
                    .copy_from_slice(&double(&mut work_done, request.body()));
                Handled::Reply(reply)
            }
            Err(_) => Handled::Keep,
        },
    );
    assert_eq!(served, Ok(Served::Replied(next)));
    assert_eq!(work_done, 2);
    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [Outcome::Matched(next, 1, 10u64.to_le_bytes().to_vec())]
    );
}

#[test]
fn push_before_pop_a_crash_between_repeats_the_work() {
    // The other order, for contrast: the request is delivered again after the crash.
    let requests_ring = MessageRing::<4096>::new();
    let replies_ring = MessageRing::<4096>::new();
    let mut request_tx = requests_ring.claim_producer(CLIENT).unwrap();
    let mut reply_rx = replies_ring.claim_consumer(CLIENT).unwrap();
    let mut requests = Requests::<4>::new(RequestId(1));
    let mut work_done = 0;

    let id = requests
        .send(&mut request_tx, 0, &21u64.to_le_bytes(), 100, 0)
        .unwrap();
    {
        let mut request_rx = requests_ring.claim_consumer(SERVER).unwrap();
        let mut reply_tx = replies_ring.claim_producer(SERVER).unwrap();
        let request = Request::parse(request_rx.front().unwrap()).unwrap();
        let mut reply = alloc_reply(&mut reply_tx, request.id(), 8, 0).unwrap();
        reply
            .body_mut()
            .copy_from_slice(&double(&mut work_done, request.body()));
        reply.push();
        // The crash: the request is never popped.
    }
    let mut request_rx = requests_ring.claim_consumer(SERVER).unwrap();
    let mut reply_tx = replies_ring.claim_producer(SERVER).unwrap();
    let served = serve_one(&mut request_rx, &mut reply_tx, |request, replier| {
        let mut reply = replier.alloc(8, 0).unwrap();
        reply
            .body_mut()
            .copy_from_slice(&double(&mut work_done, request.body()));
        Handled::Reply(reply)
    });
    assert_eq!(served, Ok(Served::Replied(id)));
    assert_eq!(work_done, 2, "the work was done twice");
    // The client matches the first reply and recognises the second as a duplicate.
    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [
            Outcome::Matched(id, 0, 42u64.to_le_bytes().to_vec()),
            Outcome::Duplicate(id),
        ]
    );
}

/// A 16-byte reply body: `answer`, then zeros.
fn padded(answer: u64) -> Vec<u8> {
    let mut body = answer.to_le_bytes().to_vec();
    body.resize(16, 0);
    body
}

#[test]
fn serve_one_keeps_a_request_it_cannot_answer_yet() {
    let mut requests_ring = MessageRing::<4096>::new();
    // Room for one reply of 24 bytes (8 of id, 16 of body) at a time.
    let mut replies_ring = MessageRing::<64>::new();
    let (mut request_tx, mut request_rx) = requests_ring.split();
    let (mut reply_tx, mut reply_rx) = replies_ring.split();
    let mut requests = Requests::<4>::new(RequestId(1));
    let mut work_done = 0;
    let a = requests
        .send(&mut request_tx, 0, &1u64.to_le_bytes(), 100, 0)
        .unwrap();
    let b = requests
        .send(&mut request_tx, 0, &2u64.to_le_bytes(), 100, 1)
        .unwrap();
    let c = requests.send(&mut request_tx, 0, b"", 100, 2).unwrap();

    let mut serve = |request_rx: &mut _, reply_tx: &mut _| {
        serve_one(request_rx, reply_tx, |request: Request<'_>, replier| {
            if request.body().is_empty() {
                return Handled::NoReply;
            }
            // Allocate first: no work is done for a request that stays queued.
            match replier.alloc(16, 0) {
                Ok(mut reply) => {
                    let (answer, padding) = reply.body_mut().split_at_mut(8);
                    answer.copy_from_slice(&double(&mut work_done, request.body()));
                    padding.fill(0);
                    Handled::Reply(reply)
                }
                Err(SendError::Full) => Handled::Keep,
                Err(error) => panic!("{error}"),
            }
        })
    };
    assert_eq!(
        serve(&mut request_rx, &mut reply_tx),
        Ok(Served::Replied(a))
    );
    assert_eq!(serve(&mut request_rx, &mut reply_tx), Ok(Served::Kept(b)));
    assert_eq!(serve(&mut request_rx, &mut reply_tx), Ok(Served::Kept(b)));
    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [Outcome::Matched(a, 0, padded(2))]
    );
    assert_eq!(
        serve(&mut request_rx, &mut reply_tx),
        Ok(Served::Replied(b))
    );
    assert_eq!(
        serve(&mut request_rx, &mut reply_tx),
        Ok(Served::NoReply(c))
    );
    assert_eq!(serve(&mut request_rx, &mut reply_tx), Err(RecvError::Empty));
    assert_eq!(work_done, 2);
    assert_eq!(
        drain_replies(&mut reply_rx, &mut requests),
        [Outcome::Matched(b, 1, padded(4))]
    );
    assert!(requests.is_outstanding(c));
}

// ---- Model test -------------------------------------------------------------------------------

const CAPACITY: usize = 4;
const FIRST: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Op {
    /// Send a request due `timeout` after now.
    Send { timeout: u64 },
    /// Advance the clock.
    Tick { by: u64 },
    /// Expire what is due now, taking at most `take` of them.
    Expire { take: usize },
    /// A reply to the `pick`th id issued so far (modulo their number).
    Reply { pick: usize },
    /// A reply to an id below the first one.
    Stale { below: u64 },
    /// A reply to an id not issued yet.
    Future { ahead: u64 },
    /// A payload too short for an id.
    Malformed { len: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..50).prop_map(|timeout| Op::Send { timeout }),
        2 => (0u64..30).prop_map(|by| Op::Tick { by }),
        2 => (0usize..4).prop_map(|take| Op::Expire { take }),
        5 => any::<usize>().prop_map(|pick| Op::Reply { pick }),
        1 => (1u64..10).prop_map(|below| Op::Stale { below }),
        1 => (0u64..10).prop_map(|ahead| Op::Future { ahead }),
        1 => (0usize..8).prop_map(|len| Op::Malformed { len }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Outstanding { deadline: u64, token: u64 },
    TimedOut,
    Answered,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut ring = MessageRing::<1024>::new();
        let (mut tx, mut rx) = ring.split();
        let mut requests = Requests::<CAPACITY>::new(RequestId(FIRST));
        let mut model: BTreeMap<u64, State> = BTreeMap::new();
        let mut next = FIRST;
        let mut now = 0u64;
        let mut tokens = 0u64;

        for op in ops {
            match op {
                Op::Send { timeout } => {
                    tokens += 1;
                    let outstanding = model
                        .values()
                        .filter(|state| matches!(state, State::Outstanding { .. }))
                        .count();
                    let sent = requests.send(&mut tx, 1, &tokens.to_le_bytes(), now + timeout, tokens);
                    if outstanding == CAPACITY {
                        prop_assert_eq!(sent, Err(RequestError::Full));
                    } else {
                        prop_assert_eq!(sent, Ok(RequestId(next)));
                        model.insert(next, State::Outstanding { deadline: now + timeout, token: tokens });
                        next += 1;
                    }
                    // The request on the wire carries the id and the body.
                    for (id, body) in drain_requests(&mut rx) {
                        prop_assert_eq!(id, RequestId(next - 1));
                        prop_assert_eq!(body, tokens.to_le_bytes().to_vec());
                    }
                }
                Op::Tick { by } => now += by,
                Op::Expire { take } => {
                    let mut due: Vec<(u64, u64, u64)> = model
                        .iter()
                        .filter_map(|(&id, state)| match *state {
                            State::Outstanding { deadline, token } if deadline <= now => {
                                Some((deadline, id, token))
                            }
                            _ => None,
                        })
                        .collect();
                    due.sort_unstable();
                    due.truncate(take);
                    let expired: Vec<_> = requests.expire(now).take(take).collect();
                    let expected: Vec<_> = due
                        .iter()
                        .map(|&(deadline, id, token)| Expired { id: RequestId(id), token, deadline })
                        .collect();
                    prop_assert_eq!(expired, expected);
                    for (_, id, _) in due {
                        model.insert(id, State::TimedOut);
                    }
                }
                Op::Reply { pick } => {
                    if next == FIRST {
                        continue;
                    }
                    let id = FIRST + (pick as u64) % (next - FIRST);
                    let body = pick.to_le_bytes();
                    let got = Outcome::from(requests.on_reply(&reply_payload(RequestId(id), &body)));
                    // Ids never leave the window here (fewer than LATE_WINDOW of them).
                    let expected = match model[&id] {
                        State::Outstanding { token, .. } => {
                            Outcome::Matched(RequestId(id), token, body.to_vec())
                        }
                        State::TimedOut => Outcome::Late(RequestId(id)),
                        State::Answered => Outcome::Duplicate(RequestId(id)),
                    };
                    prop_assert_eq!(got, expected);
                    model.insert(id, State::Answered);
                }
                Op::Stale { below } => {
                    let id = RequestId(FIRST - below);
                    prop_assert_eq!(
                        Outcome::from(requests.on_reply(&reply_payload(id, b"x"))),
                        Outcome::Unknown(id)
                    );
                }
                Op::Future { ahead } => {
                    let id = RequestId(next + ahead);
                    prop_assert_eq!(
                        Outcome::from(requests.on_reply(&reply_payload(id, b""))),
                        Outcome::Unknown(id)
                    );
                }
                Op::Malformed { len } => {
                    prop_assert_eq!(requests.on_reply(&[0; 7][..len.min(7)]), Reply::Malformed { len: len.min(7) });
                }
            }

            // The table agrees with the model after every step.
            let outstanding: Vec<u64> = model
                .iter()
                .filter(|(_, state)| matches!(state, State::Outstanding { .. }))
                .map(|(&id, _)| id)
                .collect();
            prop_assert_eq!(requests.len(), outstanding.len());
            for &id in &outstanding {
                prop_assert!(requests.is_outstanding(RequestId(id)));
            }
            prop_assert_eq!(requests.next_id(), RequestId(next));
            let stats = requests.stats();
            prop_assert_eq!(stats.sent, next - FIRST);
            prop_assert_eq!(stats.sent, stats.matched + stats.timed_out + requests.len() as u64);
        }

        // Everything left is due at the end of time, earliest deadline first.
        let mut left: Vec<(u64, u64)> = model
            .iter()
            .filter_map(|(&id, state)| match *state {
                State::Outstanding { deadline, .. } => Some((deadline, id)),
                _ => None,
            })
            .collect();
        left.sort_unstable();
        let expired: Vec<_> = requests.expire(u64::MAX).map(|e| (e.deadline, e.id.get())).collect();
        prop_assert_eq!(expired, left);
        prop_assert!(requests.is_empty());
    }
}
