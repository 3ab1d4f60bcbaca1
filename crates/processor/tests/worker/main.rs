//! The real [`processor::Worker`], in process, delivering campaigns to SMTP servers this
//! project did not write: postfix's `smtp-sink` (with its fault flags: 4xx, 5xx, a hard
//! close after the content, the server going away) and `aiosmtpd` (whose Maildir is read
//! back to check every recipient got exactly one message, by Message-ID). One suite, run on
//! both stores: each backend's tests live in a module named after it (`sqlite::…`,
//! `postgres::…`) so CI can count and filter them per backend. The campaign processor
//! (`scheduler`) is driven here too, on the same harness (`support`).
//!
//! Waiting is always for a condition (campaign status, delivery counts, a server's
//! counters), polled in a bounded loop.

mod delivery;
mod scheduler;
mod support;
