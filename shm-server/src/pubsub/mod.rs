//! Publish/subscribe on journals: a topic is a [`shm_channel::journal`] journal, so a publish
//! appends once whatever the number of subscribers, and a slow subscriber only falls behind.
//!
//! - **Publishing.** The process holding a topic's writer publishes: the server
//!   ([`PubSubConfig::publisher`]) or any process of the server's user it lets (the journal's
//!   single-writer lock admits one publisher per topic at a time).
//! - **Shared-memory subscribers** read the topic's journal directly, read-only, at their own pace
//!   ([`TopicReader`]): nothing is copied per subscriber, and a `SIGSTOP`ped one holds nobody
//!   back. One that falls behind past the topic's retention gets
//!   [`SubscriptionError::Lagged`] ("N frames missed, resuming at seq S") or its subscription
//!   ends ([`LagPolicy`]): never a silent loss, never a stall.
//! - **Subscribing goes through the server**: a client sends a subscribe request over its
//!   connection ([`Subscriptions::subscribe`]); the group's [`TopicHub`] checks it with the
//!   application's [`SubscribeCheck`] (after the login's own uid and name checks) and answers with
//!   the topic's folder, or refuses with a reason.
//! - **Remote subscribers** (over `shm-tcp`, or any connection) ask for forwarding: the hub
//!   reads the topic for them and pushes each frame into their connection
//!   ([`TopicHub::forward`]). A forwarded subscription belongs to the client's session: after a
//!   reconnect it goes on where it was, and the connection's persisted queue delivers what was
//!   forwarded before exactly once. After a server restart (or a long absence),
//!   [`Subscriptions::resubscribe`] asks again from the frame after the last one handed out, and
//!   frames seen before are reported as duplicates: nothing lost or repeated within the topic's
//!   retention.
//!
//! The messages are in [`wire`], under tags from [`wire::FIRST_RESERVED_TAG`] up, which
//! applications leave to this module.

mod hub;
mod subscriber;
pub mod wire;

use std::path::{Path, PathBuf};

use shm_channel::journal::{JournalError, JournalOptions, JournalWriter, Retention};

pub use hub::{HubStats, SubscribeCheck, SubscribeRequest, TopicHub};
pub use subscriber::{SubscriptionError, Subscriptions, TopicEvent, TopicReader};

/// What happens to a subscriber that retention overtakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LagPolicy {
    /// Tell it what it missed and go on from the oldest frame kept. The default.
    #[default]
    Report,
    /// Tell it, and end the subscription.
    Unsubscribe,
}

/// Where topics live and how they are kept.
#[derive(Clone, Debug)]
pub struct PubSubConfig {
    pub(crate) dir: PathBuf,
    pub(crate) journal: JournalOptions,
    pub(crate) max_forwarded: usize,
    pub(crate) lag: LagPolicy,
    pub(crate) absent_timeout_ns: u64,
}

impl PubSubConfig {
    /// Topics in `dir` (each `<dir>/<topic>/`), 16 MiB pages, keeping 64 pages, up to 256
    /// forwarded subscriptions per hub, lag reported.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            journal: JournalOptions::new()
                .dir(&dir)
                .retention(Retention::KeepPages(64)),
            dir,
            max_forwarded: 256,
            lag: LagPolicy::Report,
            absent_timeout_ns: 60_000_000_000,
        }
    }

    /// The journals' options (page size, retention, durability, mode...); their folder is
    /// always this configuration's.
    pub fn journal(mut self, options: JournalOptions) -> Self {
        self.journal = options.dir(&self.dir);
        self
    }

    /// Forwarded subscriptions a hub holds at most (its table is allocated at the start).
    pub fn max_forwarded(mut self, count: usize) -> Self {
        self.max_forwarded = count;
        self
    }

    /// What happens to a forwarded subscription that lags.
    pub fn lag_policy(mut self, lag: LagPolicy) -> Self {
        self.lag = lag;
        self
    }

    /// How long a forwarded subscription waits for its session to log in again after its
    /// connection was lost (60 s by default); past it the subscription is dropped, and the
    /// client's [`Subscriptions::resubscribe`] starts a new one from its own position.
    pub fn absent_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.absent_timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The topics folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens topic `topic`'s writer (creating the topic): publish with
    /// [`JournalWriter::alloc`] / [`append`](JournalWriter::append), and call
    /// [`maintain`](JournalWriter::maintain) off the hot path (next page, retention).
    ///
    /// # Errors
    /// As [`JournalWriter::open`]: `WriterActive` while another process publishes the topic.
    pub fn publisher(&self, topic: &str) -> Result<JournalWriter, JournalError> {
        JournalWriter::open(topic, &self.journal)
    }
}
