//! What the admin API keeps for itself: API keys, idempotency keys, service secrets, and
//! the test sends counted against a key's quota.

use crate::StoreError;
use async_trait::async_trait;
use campaign::{CampaignId, EmailAddress};
use serde::Serialize;
use time::OffsetDateTime;

/// API keys, idempotency keys, secrets and test sends.
#[async_trait]
pub trait AdminRepository: Send + Sync {
    /// The stored secret called `name`; when there is none yet, `candidate` is stored and
    /// returned. Concurrent first calls agree on one value.
    async fn secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;

    /// Stores a new API key (its secret already hashed by the caller).
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// The key with this public id, revoked or not.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Every key, newest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Marks a key revoked; false when no such key exists. Revoking twice keeps the first time.
    async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError>;

    /// Reserves an idempotency key for a request with this fingerprint, or returns what an
    /// earlier request with the key left (records older than `expires_before` are forgotten).
    async fn reserve_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        expires_before: OffsetDateTime,
    ) -> Result<IdempotencyReservation, StoreError>;

    /// Stores the response of the request that reserved the key.
    async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;

    /// Forgets a reservation whose request failed on our side, so it may be retried.
    async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Records test messages of `campaign_id` to `addresses` on API key `api_key_id`'s quota,
    /// all of them or none: when they would take the key's test sends within any of `quota`'s
    /// windows (ending at `now`) past that window's limit, nothing is recorded and the answer
    /// says which window and when the sends fit. Callers sharing the database are serialised
    /// per key, so together they never exceed the quota.
    async fn reserve_test_sends(
        &self,
        api_key_id: &str,
        campaign_id: CampaignId,
        addresses: &[EmailAddress],
        now: OffsetDateTime,
        quota: &[QuotaWindow],
    ) -> Result<TestSendReservation, StoreError>;

    /// The test message recorded under this id (its unsubscribe token names it).
    async fn test_send(&self, id: i64) -> Result<Option<TestSendRecord>, StoreError>;
}

/// One window of a quota: at most `limit` uses within any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaWindow {
    pub window: time::Duration,
    pub limit: u32,
}

/// What [`AdminRepository::reserve_test_sends`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestSendReservation {
    /// Recorded: the ids of the test sends, one per address, in the order given.
    Reserved(Vec<i64>),
    /// Nothing recorded: `window` is full. `retry_at` is when enough of its sends have aged
    /// out for this many addresses, `None` when there are more addresses than its limit.
    OverQuota {
        window: QuotaWindow,
        retry_at: Option<OffsetDateTime>,
    },
}

/// A recorded test message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSendRecord {
    pub id: i64,
    pub campaign_id: CampaignId,
    pub email: String,
    pub sent_at: OffsetDateTime,
}

/// Whether `wanted` more uses fit a quota, given the times of earlier uses (oldest first):
/// `None` when they fit every window, else the first full window and when they will fit.
pub fn quota_verdict(
    quota: &[QuotaWindow],
    earlier: &[OffsetDateTime],
    wanted: usize,
    now: OffsetDateTime,
) -> Option<(QuotaWindow, Option<OffsetDateTime>)> {
    quota.iter().find_map(|&window| {
        let limit = window.limit as usize;
        let start = now - window.window;
        let inside: Vec<OffsetDateTime> =
            earlier.iter().copied().filter(|&at| at > start).collect();
        if inside.len() + wanted <= limit {
            return None;
        }
        if wanted > limit {
            return Some((window, None));
        }
        // The oldest `inside.len() + wanted - limit` uses must leave the window first.
        let last_to_leave = inside[inside.len() + wanted - limit - 1];
        Some((window, Some(last_to_leave + window.window)))
    })
}

/// What reserving an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyReservation {
    /// The key is new: this request goes ahead and must complete or release it.
    Reserved,
    /// An earlier request used the key; `response` is `None` while it is still running.
    Existing {
        fingerprint: String,
        response: Option<(u16, String)>,
    },
}

/// An admin API key as stored: its public id, a name for people, and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_window_fills_and_says_when_it_has_room_again() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        let minute = QuotaWindow {
            window: time::Duration::minutes(1),
            limit: 3,
        };
        let day = QuotaWindow {
            window: time::Duration::days(1),
            limit: 5,
        };
        let ago = |seconds: i64| now - time::Duration::seconds(seconds);
        assert_eq!(quota_verdict(&[minute, day], &[], 3, now), None);
        assert_eq!(
            quota_verdict(&[minute, day], &[], 4, now),
            Some((minute, None))
        );
        // Two in the last minute: one more fits, two more wait for the older to leave.
        let earlier = [ago(50), ago(10)];
        assert_eq!(quota_verdict(&[minute, day], &earlier, 1, now), None);
        assert_eq!(
            quota_verdict(&[minute, day], &earlier, 2, now),
            Some((minute, Some(ago(50) + time::Duration::minutes(1))))
        );
        // Uses older than the minute count only for the day.
        let earlier = [ago(7200), ago(3600), ago(600), ago(120)];
        assert_eq!(quota_verdict(&[minute, day], &earlier, 1, now), None);
        assert_eq!(
            quota_verdict(&[minute, day], &earlier, 2, now),
            Some((day, Some(ago(7200) + time::Duration::days(1))))
        );
    }
}
