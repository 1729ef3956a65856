//! Shared-memory duplex channel between two processes (not yet implemented; see issue 3).
