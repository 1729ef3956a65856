//! The message API over TCP with a persisted send queue (planned; see `shared/design.md`).
