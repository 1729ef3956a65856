//! `shm_tcp::handshake::Handshake`, client and acceptor side, with and without a pre-shared
//! key, fed fuzzer-chosen frames: hellos built with `Hello::encode` from fuzzer-chosen fields
//! and then mutated byte by byte, arbitrary hello payloads, this side's own hello sent back,
//! authentication codes (the right one, mutated ones, one under another key, this side's own
//! code reflected, arbitrary bytes), data, ack and reject frames, and frames handed over without
//! the frame decoder. Every frame goes through `frame::decode` first, as the connection does;
//! one the decoder refuses is not fed.
//!
//! Checked, on every input:
//! - no panic;
//! - `Hello::decode` of arbitrary bytes, and of every hello payload fed, either fails or yields a
//!   hello that `encode`s back to exactly the same bytes, and a hello built from fields decodes
//!   to those fields;
//! - the handshake only completes after the peer's hello was accepted (with the flag for a key
//!   exactly when this side has one) and, with a key, after an auth frame carrying exactly the
//!   code the peer computes (HMAC-SHA256 as documented in `hello.rs`, computed here with the
//!   `hmac` crate); an auth frame with any other payload is refused at every stage; a hello is
//!   accepted at most once; completion is never undone; a reject frame is always `Rejected`
//!   with its reason;
//! - until the first error (after which the documented contract is that the handshake cannot
//!   continue, so only the points above are checked), every step is exactly what the protocol
//!   in `handshake.rs` prescribes: `NeedAnswer` / `Wait` / `Done` after the peer's hello,
//!   `SendAuth` with the right code from `answer`, `SendAuthAndDone` with the right code after
//!   the acceptor's code, `Unexpected` for a frame out of turn, `peer()` and `own_hello()` as
//!   they should be;
//! - an honest client and acceptor (fuzzer-chosen hellos, keys and auth flags) talking through
//!   the frame codec both complete exactly when the flags match the keys and the keys are the
//!   same HMAC key, and then each knows the other's hello.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use shm_channel::{SegmentName, MAX_NAME_LEN};
use shm_tcp::frame::{self, FrameInfo, Kind, FRAME_OVERHEAD, PROTOCOL_VERSION};
use shm_tcp::handshake::{Handshake, HandshakeError, Step};
use shm_tcp::hello::{Hello, MAC_LEN, MAX_HELLO_PAYLOAD};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The label of the authentication code (`hello.rs`).
const AUTH_LABEL: &[u8] = b"shm-tcp hello authentication v1";
/// The block size of SHA-256, which decides how HMAC pads or hashes a key.
const HMAC_BLOCK: usize = 64;
const MAX_ACTIONS: usize = 24;
const MAX_MUTATIONS: usize = 8;
const MAX_KEY: usize = 160;

/// The code a side sends: over the label, its own hello's length and payload, the peer's.
fn code(key: &[u8], own_hello: &[u8], peer_hello: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap();
    mac.update(AUTH_LABEL);
    mac.update(&(own_hello.len() as u32).to_le_bytes());
    mac.update(own_hello);
    mac.update(peer_hello);
    mac.finalize().into_bytes().into()
}

/// The key HMAC actually uses: hashed when longer than a block, then zero-padded to a block.
/// Two keys with the same block are the same key to HMAC ("k" and "k\0", for instance).
fn hmac_block(key: &[u8]) -> [u8; HMAC_BLOCK] {
    use sha2::Digest;
    let mut block = [0u8; HMAC_BLOCK];
    if key.len() > HMAC_BLOCK {
        let hash: [u8; 32] = sha2::Sha256::digest(key).into();
        block[..32].copy_from_slice(&hash);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    block
}

/// A valid segment name from fuzzer bytes: each byte picks an allowed character.
#[derive(Arbitrary, Debug)]
struct Name {
    bytes: Vec<u8>,
    /// Repeat the characters up to the longest name.
    longest: bool,
}

impl Name {
    fn build(&self) -> SegmentName {
        const ALLOWED: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
        let mut text: Vec<u8> = self
            .bytes
            .iter()
            .take(MAX_NAME_LEN)
            .map(|&b| ALLOWED[usize::from(b) % ALLOWED.len()])
            .collect();
        if text.is_empty() {
            text.push(b'n');
        }
        if self.longest {
            let seed = text.clone();
            text = seed.iter().copied().cycle().take(MAX_NAME_LEN).collect();
        }
        if text[0] == b'.' {
            text[0] = b'x';
        }
        SegmentName::new(core::str::from_utf8(&text).unwrap()).unwrap()
    }
}

/// The fields of a valid hello.
#[derive(Arbitrary, Debug)]
struct Fields {
    /// Set the key flag opposite to what the receiving side expects.
    flip_auth: bool,
    max_payload: u32,
    first_unacked: u64,
    /// `next_seq` is `first_unacked + span` (saturating), so the pair is never inverted.
    span: u64,
    popped: u64,
    nonce: [u8; 16],
    name: Name,
    peer_name: Name,
    session: Option<Name>,
}

impl Fields {
    fn build(&self, keyed: bool) -> Hello {
        Hello {
            authenticated: keyed != self.flip_auth,
            max_payload: self.max_payload,
            first_unacked: self.first_unacked,
            next_seq: self.first_unacked.saturating_add(self.span),
            popped: self.popped,
            nonce: self.nonce,
            name: self.name.build(),
            peer_name: self.peer_name.build(),
            session: self.session.as_ref().map(Name::build),
        }
    }
}

fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = vec![0u8; MAX_HELLO_PAYLOAD];
    let len = hello.encode(&mut out);
    out.truncate(len);
    out
}

/// `decode` either fails or yields a hello that encodes back to the same bytes.
fn check_hello_round_trip(payload: &[u8]) -> Option<Hello> {
    let hello = Hello::decode(payload).ok()?;
    assert_eq!(
        encode_hello(&hello),
        payload,
        "{hello:?} does not re-encode to the bytes it was decoded from"
    );
    Some(hello)
}

/// A valid hello encodes and decodes to itself.
fn hello_bytes(hello: &Hello) -> Vec<u8> {
    let bytes = encode_hello(hello);
    assert!(bytes.len() <= MAX_HELLO_PAYLOAD);
    assert_eq!(Hello::decode(&bytes).as_ref(), Ok(hello));
    bytes
}

#[derive(Arbitrary, Debug)]
enum MutOp {
    Xor(u8),
    Set(u8),
    SetU16(u16),
    Insert(u8),
    Remove,
    Truncate,
}

/// Where a mutation applies.
#[derive(Arbitrary, Debug)]
enum At {
    /// In the first 64 bytes: a hello's fixed part, or all of an auth code.
    Fixed(u8),
    /// Anywhere, the end included.
    Any(u16),
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    at: At,
    op: MutOp,
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations.iter().take(MAX_MUTATIONS) {
        let at = match m.at {
            At::Fixed(at) => usize::from(at) % 64,
            At::Any(at) => usize::from(at),
        } % (bytes.len() + 1);
        match m.op {
            MutOp::Xor(x) if at < bytes.len() => bytes[at] ^= x,
            MutOp::Set(x) if at < bytes.len() => bytes[at] = x,
            MutOp::SetU16(x) if at + 1 < bytes.len() => {
                bytes[at..at + 2].copy_from_slice(&x.to_le_bytes());
            }
            MutOp::Insert(x) => bytes.insert(at, x),
            MutOp::Remove if at < bytes.len() => {
                bytes.remove(at);
            }
            MutOp::Truncate => bytes.truncate(at),
            _ => {}
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OtherKind {
    Data,
    Ack,
    Reject,
}

#[derive(Arbitrary, Debug)]
enum Action {
    /// A valid hello from fields, then mutated. Before the mutations, each byte of its fixed
    /// part in turn is xored with `sweep` (0 counts as 0x80) and the result decoded, for the
    /// round trip.
    Hello {
        fields: Fields,
        sweep: u8,
        mutations: Vec<Mutation>,
    },
    /// This side's own hello sent back (empty for an acceptor that has not answered).
    OwnHello,
    /// Any payload in a hello frame.
    RawHello(Vec<u8>),
    /// The code the peer would send for the hellos exchanged so far.
    AuthRight,
    /// The right code, mutated.
    AuthMutated(Vec<Mutation>),
    /// The peer's code, computed under another key.
    AuthOtherKey(Vec<u8>),
    /// The code this side sends (or would), sent back.
    AuthReflected,
    /// Any payload in an auth frame.
    AuthRaw(Vec<u8>),
    Other {
        kind: OtherKind,
        tag: u16,
        seq: u64,
        payload: Vec<u8>,
    },
    /// A frame handed to `on_frame` without the frame codec: any kind byte mapped to a kind,
    /// any payload length (the payload length in the info is the payload's).
    Unframed { kind: u8, payload: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum AcceptorKey {
    Same,
    Other(Option<Vec<u8>>),
}

#[derive(Arbitrary, Debug)]
struct Pair {
    client_key: Option<Vec<u8>>,
    acceptor_key: AcceptorKey,
    client: Fields,
    acceptor: Fields,
}

#[derive(Arbitrary, Debug)]
struct Input {
    acceptor: bool,
    key: Option<Vec<u8>>,
    /// This side's hello (the client's first, or the acceptor's answer).
    own: Fields,
    /// Bytes for `Hello::decode` alone.
    raw_hello: Vec<u8>,
    pair: Option<Pair>,
    actions: Vec<Action>,
}

/// A whole frame, per the wire format in `frame.rs`.
fn encode_frame(kind: Kind, tag: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len() as u32;
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + payload.len() + 8);
    out.extend_from_slice(&(1 | (u32::from(tag) << 16)).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[kind as u8, PROTOCOL_VERSION, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out.resize(8 + (len as usize).next_multiple_of(8), 0);
    out
}

/// The frame through the codec, as the connection would see it: `None` if refused.
fn through_codec(kind: Kind, tag: u16, seq: u64, payload: &[u8]) -> Option<(FrameInfo, Vec<u8>)> {
    let wire = encode_frame(kind, tag, seq, payload);
    match frame::decode(&wire, u32::MAX) {
        Ok(Some(info)) => {
            assert_eq!((info.kind, info.seq, info.size), (kind, seq, wire.len()));
            assert_eq!(info.payload_len as usize, payload.len());
            let got = wire[FRAME_OVERHEAD..][..payload.len()].to_vec();
            assert_eq!(got, payload);
            Some((info, got))
        }
        Ok(None) => panic!(
            "a whole {kind:?} frame of {} bytes is incomplete",
            wire.len()
        ),
        Err(_) => None,
    }
}

fn kind_from(byte: u8) -> Kind {
    match byte % 5 {
        0 => Kind::Data,
        1 => Kind::Ack,
        2 => Kind::Hello,
        3 => Kind::Auth,
        _ => Kind::Reject,
    }
}

fn is_done_step(step: &Step) -> bool {
    matches!(step, Step::Done | Step::SendAuthAndDone(_))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    AwaitHello,
    AwaitAuth,
    Done,
}

/// One side of the handshake and what the harness knows of it.
struct Tested<'a> {
    hs: Handshake,
    acceptor: bool,
    key: Option<&'a [u8]>,
    own: Hello,
    own_bytes: Vec<u8>,
    /// The model's stage; meaningful while `strict`.
    stage: Stage,
    /// No error yet: every step must be exactly the model's.
    strict: bool,
    /// The peer's hello payload, once the handshake accepted one.
    accepted: Option<Vec<u8>>,
    /// (Acceptor) `answer` was called.
    answered: bool,
    /// The code this side sent (an acceptor with a key, from `answer`).
    sent_code: Option<[u8; MAC_LEN]>,
}

impl Tested<'_> {
    fn keyed(&self) -> bool {
        self.key.is_some()
    }

    /// The code the peer sends: over its hello, then this side's.
    fn peer_code(&self) -> [u8; MAC_LEN] {
        let peer = self.accepted.as_deref().unwrap_or_default();
        code(self.key.unwrap_or_default(), peer, self.hs.own_hello())
    }

    /// The code this side sends.
    fn own_code(&self) -> [u8; MAC_LEN] {
        let peer = self.accepted.as_deref().unwrap_or_default();
        code(self.key.unwrap_or_default(), self.hs.own_hello(), peer)
    }

    fn check_accessors(&self) {
        if self.strict {
            assert_eq!(self.hs.is_done(), self.stage == Stage::Done);
            if !self.acceptor || self.answered {
                assert_eq!(self.hs.own_hello(), &self.own_bytes[..]);
            } else {
                assert!(self.hs.own_hello().is_empty());
            }
        }
        if !self.acceptor {
            assert_eq!(self.hs.own_hello(), &self.own_bytes[..]);
        }
        match &self.accepted {
            Some(bytes) => assert_eq!(self.hs.peer(), Hello::decode(bytes).ok().as_ref()),
            None => assert!(self.hs.peer().is_none()),
        }
        if self.hs.is_done() {
            assert!(self.hs.peer().is_some(), "done without the peer's hello");
        }
    }

    fn feed(&mut self, info: &FrameInfo, payload: &[u8]) {
        let was_done = self.hs.is_done();
        let right_code = info.kind == Kind::Auth && payload == self.peer_code();
        let result = self.hs.on_frame(info, payload);

        // The rules that hold whatever came before.
        match info.kind {
            Kind::Reject => assert_eq!(
                result,
                Err(HandshakeError::Rejected(
                    String::from_utf8_lossy(payload).into_owned()
                ))
            ),
            Kind::Auth if !right_code => assert!(
                result.is_err(),
                "an auth frame with a wrong code gave {result:?} (key {:?})",
                self.key
            ),
            Kind::Hello if self.accepted.is_some() => {
                assert!(result.is_err(), "a second hello gave {result:?}")
            }
            _ => {}
        }
        if let Ok(step) = &result {
            match info.kind {
                Kind::Hello => {
                    let hello =
                        check_hello_round_trip(payload).expect("a malformed hello was accepted");
                    assert_eq!(hello.authenticated, self.keyed(), "key flag not checked");
                    self.accepted = Some(payload.to_vec());
                    let expected = match (self.acceptor, self.keyed()) {
                        (true, _) => Step::NeedAnswer,
                        (false, true) => Step::Wait,
                        (false, false) => Step::Done,
                    };
                    assert_eq!(*step, expected);
                }
                Kind::Auth => {
                    assert!(self.keyed(), "an auth frame accepted without a key");
                    assert!(right_code);
                    assert!(self.accepted.is_some(), "an auth frame before the hello");
                    assert!(
                        !self.hs.own_hello().is_empty(),
                        "auth before this side's hello"
                    );
                    if self.acceptor {
                        assert_eq!(*step, Step::Done);
                    } else {
                        assert_eq!(*step, Step::SendAuthAndDone(self.own_code()));
                    }
                }
                kind => panic!("a {kind:?} frame in the handshake gave {step:?}"),
            }
            if is_done_step(step) {
                assert!(!was_done, "completed twice");
            }
            assert_eq!(self.hs.is_done(), is_done_step(step));
        } else {
            assert_eq!(self.hs.is_done(), was_done, "an error changed completion");
        }
        if was_done {
            assert!(self.hs.is_done(), "completion was undone");
        }

        // Exactly the protocol, until the first error.
        if self.strict {
            let expected: Result<Step, ()> = match (self.stage, info.kind) {
                (_, Kind::Reject) => Err(()),
                (Stage::AwaitHello, Kind::Hello) => match Hello::decode(payload) {
                    Err(err) => {
                        assert_eq!(result, Err(HandshakeError::Hello(err)));
                        Err(())
                    }
                    Ok(hello) if hello.authenticated != self.keyed() => {
                        assert!(matches!(result, Err(HandshakeError::Authentication(_))));
                        Err(())
                    }
                    Ok(_) if self.acceptor => Ok(Step::NeedAnswer),
                    Ok(_) if self.keyed() => Ok(Step::Wait),
                    Ok(_) => Ok(Step::Done),
                },
                (Stage::AwaitAuth, Kind::Auth) if right_code => Ok(if self.acceptor {
                    Step::Done
                } else {
                    Step::SendAuthAndDone(self.own_code())
                }),
                (Stage::AwaitAuth, Kind::Auth) => {
                    assert!(matches!(result, Err(HandshakeError::Authentication(_))));
                    Err(())
                }
                (_, kind) => {
                    assert!(
                        matches!(result, Err(HandshakeError::Unexpected { kind: k, waiting_for })
                            if k == kind && !waiting_for.is_empty()),
                        "{kind:?} at {:?} gave {result:?}",
                        self.stage
                    );
                    Err(())
                }
            };
            match expected {
                Ok(step) => {
                    assert_eq!(result.as_ref().ok(), Some(&step), "at {:?}", self.stage);
                    self.stage = match step {
                        Step::Wait => Stage::AwaitAuth,
                        // The acceptor answers below.
                        Step::NeedAnswer => Stage::AwaitHello,
                        _ => Stage::Done,
                    };
                }
                Err(()) => {
                    assert!(result.is_err());
                    self.strict = false;
                }
            }
        }

        if result == Ok(Step::NeedAnswer) {
            self.answer();
        }
        self.check_accessors();
    }

    fn answer(&mut self) {
        assert!(self.acceptor && !self.answered);
        self.answered = true;
        let step = self.hs.answer(&self.own).expect("answered in turn");
        assert_eq!(self.hs.own_hello(), &self.own_bytes[..]);
        match self.key {
            Some(_) => {
                let code = self.own_code();
                assert_eq!(step, Step::SendAuth(code), "the acceptor's code");
                self.sent_code = Some(code);
                self.stage = Stage::AwaitAuth;
            }
            None => {
                assert_eq!(step, Step::Done);
                assert!(self.hs.is_done());
                self.stage = Stage::Done;
            }
        }
    }
}

/// An honest client and acceptor, frames through the codec.
fn run_pair(pair: &Pair) {
    let client_key = pair
        .client_key
        .as_deref()
        .map(|k| &k[..k.len().min(MAX_KEY)]);
    let acceptor_key = match &pair.acceptor_key {
        AcceptorKey::Same => client_key,
        AcceptorKey::Other(key) => key.as_deref().map(|k| &k[..k.len().min(MAX_KEY)]),
    };
    let client_hello = pair.client.build(acceptor_key.is_some());
    let acceptor_hello = pair.acceptor.build(client_key.is_some());
    let client_flag_ok = client_hello.authenticated == acceptor_key.is_some();
    let acceptor_flag_ok = acceptor_hello.authenticated == client_key.is_some();
    let same_key = match (client_key, acceptor_key) {
        (Some(a), Some(b)) => hmac_block(a) == hmac_block(b),
        (None, None) => true,
        _ => false,
    };
    let completes = client_flag_ok && acceptor_flag_ok && same_key;

    let mut client = Handshake::client(&client_hello, client_key);
    let mut acceptor = Handshake::acceptor(acceptor_key);
    let outcome = (|| -> Result<(), HandshakeError> {
        let (info, payload) = through_codec(Kind::Hello, 0, 0, client.own_hello()).unwrap();
        assert_eq!(acceptor.on_frame(&info, &payload)?, Step::NeedAnswer);
        let acceptor_code = match acceptor.answer(&acceptor_hello)? {
            Step::Done => None,
            Step::SendAuth(code) => Some(code),
            other => panic!("answer gave {other:?}"),
        };
        let (info, payload) = through_codec(Kind::Hello, 0, 0, acceptor.own_hello()).unwrap();
        match (client.on_frame(&info, &payload)?, acceptor_code) {
            (Step::Done, None) => {}
            (Step::Wait, Some(code)) => {
                let (info, payload) = through_codec(Kind::Auth, 0, 0, &code).unwrap();
                let Step::SendAuthAndDone(code) = client.on_frame(&info, &payload)? else {
                    panic!("the client did not answer the acceptor's code");
                };
                let (info, payload) = through_codec(Kind::Auth, 0, 0, &code).unwrap();
                assert_eq!(acceptor.on_frame(&info, &payload)?, Step::Done);
            }
            // One side has a key, the other none, and the hellos' flags were set to pass: one
            // side waits for a code the other never sends (the next frame it gets, a data or
            // ack frame, is then `Unexpected`).
            (Step::Wait, None) => assert!(acceptor.is_done() && !client.is_done()),
            (Step::Done, Some(_)) => assert!(client.is_done() && !acceptor.is_done()),
            (step, _) => panic!("the client answered the acceptor's hello with {step:?}"),
        }
        Ok(())
    })();
    let both_done = client.is_done() && acceptor.is_done();
    assert_eq!(
        both_done, completes,
        "{outcome:?}: flags ok {client_flag_ok}/{acceptor_flag_ok}, same key {same_key}"
    );
    if let Err(err) = &outcome {
        assert!(
            matches!(err, HandshakeError::Authentication(_)),
            "honest peers failed with {err:?}"
        );
    }
    if completes {
        assert_eq!(client.peer(), Some(&acceptor_hello));
        assert_eq!(acceptor.peer(), Some(&client_hello));
    }
}

fuzz_target!(|input: Input| {
    check_hello_round_trip(&input.raw_hello);
    if let Some(pair) = &input.pair {
        run_pair(pair);
    }

    let key = input.key.as_deref().map(|k| &k[..k.len().min(MAX_KEY)]);
    let own = input.own.build(key.is_some());
    let own_bytes = hello_bytes(&own);
    let hs = if input.acceptor {
        Handshake::acceptor(key)
    } else {
        Handshake::client(&own, key)
    };
    let mut t = Tested {
        hs,
        acceptor: input.acceptor,
        key,
        own,
        own_bytes,
        stage: Stage::AwaitHello,
        strict: true,
        accepted: None,
        answered: false,
        sent_code: None,
    };
    t.check_accessors();

    for action in input.actions.iter().take(MAX_ACTIONS) {
        let (kind, tag, seq, payload): (Kind, u16, u64, Vec<u8>) = match action {
            Action::Hello {
                fields,
                sweep,
                mutations,
            } => {
                let hello = fields.build(t.keyed());
                let mut bytes = hello_bytes(&hello);
                let xor = if *sweep == 0 { 0x80 } else { *sweep };
                for at in 0..64 {
                    let mut flipped = bytes.clone();
                    flipped[at] ^= xor;
                    check_hello_round_trip(&flipped);
                }
                mutate(&mut bytes, mutations);
                (Kind::Hello, 0, 0, bytes)
            }
            Action::OwnHello => (Kind::Hello, 0, 0, t.hs.own_hello().to_vec()),
            Action::RawHello(bytes) => (Kind::Hello, 0, 0, bytes.clone()),
            Action::AuthRight => (Kind::Auth, 0, 0, t.peer_code().to_vec()),
            Action::AuthMutated(mutations) => {
                let mut bytes = t.peer_code().to_vec();
                mutate(&mut bytes, mutations);
                (Kind::Auth, 0, 0, bytes)
            }
            Action::AuthOtherKey(other) => {
                let peer = t.accepted.clone().unwrap_or_default();
                (
                    Kind::Auth,
                    0,
                    0,
                    code(other, &peer, t.hs.own_hello()).to_vec(),
                )
            }
            Action::AuthReflected => (
                Kind::Auth,
                0,
                0,
                t.sent_code.unwrap_or_else(|| t.own_code()).to_vec(),
            ),
            Action::AuthRaw(bytes) => (Kind::Auth, 0, 0, bytes.clone()),
            Action::Other {
                kind,
                tag,
                seq,
                payload,
            } => {
                let kind = match kind {
                    OtherKind::Data => Kind::Data,
                    OtherKind::Ack => Kind::Ack,
                    OtherKind::Reject => Kind::Reject,
                };
                (kind, *tag, *seq, payload.clone())
            }
            Action::Unframed { kind, payload } => {
                let kind = kind_from(*kind);
                check_hello_round_trip(payload);
                let info = FrameInfo {
                    kind,
                    tag: 0,
                    seq: 0,
                    payload_len: payload.len() as u32,
                    size: frame::frame_size(payload.len() as u32),
                };
                t.feed(&info, payload);
                continue;
            }
        };
        if kind == Kind::Hello {
            check_hello_round_trip(&payload);
        }
        // Data frames may carry a tag; control frames with one are refused by the codec.
        let Some((info, payload)) = through_codec(kind, tag, seq, &payload) else {
            continue;
        };
        t.feed(&info, &payload);
    }
    let _ = format!("{:?}", t.hs);
});
