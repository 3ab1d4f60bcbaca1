//! The API over real HTTP, on both stores: the app is started on port 0 exactly as the
//! binary starts it, and driven with an HTTP client. One module per route group; what they
//! share is in `support`.

mod ab_tests;
mod access;
mod bounces;
mod campaigns;
mod control;
mod engagement;
mod idempotency;
mod recipient_uploads;
mod recipients;
mod support;
mod suppressions;
mod test_sends;
