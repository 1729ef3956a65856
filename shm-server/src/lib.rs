//! Busy-polling shared-memory server (planned; see `shared/design.md`).
