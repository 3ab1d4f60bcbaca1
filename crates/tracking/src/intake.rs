//! Bounce and complaint intake: what a report means for the recipient it is about, whether it
//! came to `POST /api/v1/bounces` or from a mailbox poller. No HTTP here: the raw mail or the
//! JSON form in, one [`IntakeResult`] per reported recipient out.
//!
//! Each report is attributed to the recipient it is about, most reliable first: the signed
//! VERP token in the return path it came back to (`bounces+TOKEN@BOUNCE_VERP_DOMAIN`), then the
//! original's Message-ID (which names campaign and recipient, see
//! [`message::recipient_of_message_id`]), then, in the JSON form, campaign id and address.
//! An unattributed report still acts on the address it names: whoever hands it over is
//! trusted (the API checks BOUNCE_WEBHOOK_SECRET first).
//!
//! Then: a hard bounce (5.x.x) or a complaint suppresses the address at once; a soft bounce
//! (4.x.x, delayed, or a 4.x.x `failed` after the MTA's queue lifetime expired) suppresses it
//! once [`SoftBounceRule::limit`] soft bounces were recorded within [`SoftBounceRule::window`].
//! Every bounce and complaint is recorded with its status and diagnostic (the store keeps its
//! tracking event with it), counted in `tracking_events_total` and announced to the webhooks.

use campaign::{CampaignId, EmailAddress, RecipientId};
use serde::{Deserialize, Serialize};
use store::{CampaignStore, FeedbackKind, NewFeedbackEvent, StoredRecipient};
use time::OffsetDateTime;

use crate::feedback::{
    Action, BounceNotice, Feedback, FeedbackError, ReportKind, Severity, StatusCode as DsnStatus,
    parse_report,
};
use crate::links::VERP_PREFIX;
use crate::token::{Purpose, TokenKeys};

/// When soft bounces suppress an address: `limit` of them within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftBounceRule {
    /// SOFT_BOUNCE_LIMIT (below 1 counts as 1).
    pub limit: u32,
    /// SOFT_BOUNCE_WINDOW_HOURS.
    pub window: time::Duration,
}

impl Default for SoftBounceRule {
    fn default() -> Self {
        SoftBounceRule {
            limit: 3,
            window: time::Duration::hours(72),
        }
    }
}

/// The JSON form of one bounce.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BounceJson {
    /// The address that bounced.
    #[schema(value_type = String, example = "jane@example.com")]
    pub email: EmailAddress,
    /// RFC 3463 enhanced status code, e.g. `5.1.1` or `4.2.2`.
    #[schema(value_type = String, example = "5.1.1")]
    pub status: DsnStatus,
    /// RFC 3464 action: `failed`, `delayed`, `delivered`, `relayed` or `expanded`.
    #[schema(value_type = String, example = "failed")]
    pub action: Action,
    /// The remote server's answer, e.g. `smtp; 550 5.1.1 user unknown`.
    pub diagnostic: Option<String>,
    /// The bounced message's Message-ID, with or without angle brackets.
    pub message_id: Option<String>,
    /// The campaign the message belonged to (with `email`, finds the recipient).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub campaign_id: Option<CampaignId>,
}

/// What was done with one reported recipient.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntakeResult {
    pub email: String,
    /// `hard_bounce`, `soft_bounce` or `complaint`; absent for a success notice (delivered,
    /// relayed, expanded), which is not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FeedbackKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The recipient the report was attributed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub campaign_id: Option<CampaignId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<RecipientId>,
    /// How: `verp`, `message_id` or `campaign_and_email`; absent when unattributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributed_by: Option<&'static str>,
    /// Whether the address is on the suppression list after this report.
    pub suppressed: bool,
}

/// Why intake refused a report (the API answers 422, or 503 for an unavailable store).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Report(#[from] FeedbackError),
    #[error("{0}")]
    Unusable(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// The intake of bounce and complaint reports, for whoever receives them: the API's
/// `POST /api/v1/bounces`, or a poller reading the bounce mailbox.
pub struct Intake<'a> {
    pub store: &'a dyn CampaignStore,
    /// Verify the VERP tokens reports are attributed by.
    pub keys: &'a TokenKeys,
    pub soft_bounces: SoftBounceRule,
    /// Receives the `bounced` and `complained` webhook events.
    pub webhooks: &'a webhooks::EventSink,
}

/// A recipient a report was attributed to, and how.
struct Attribution {
    recipient: StoredRecipient,
    by: &'static str,
}

impl Intake<'_> {
    /// A raw DSN or ARF complaint, as received.
    pub async fn raw(&self, mail: &[u8]) -> Result<Vec<IntakeResult>, IntakeError> {
        let feedback = parse_report(mail)?;
        let attribution = self.attribute(&feedback).await?;
        match &feedback.kind {
            ReportKind::Bounce(_) => {
                let notices = feedback.bounce_notices();
                let single = notices.len() == 1;
                let mut results = Vec::with_capacity(notices.len());
                for notice in notices {
                    // The report's own address may be rewritten (forwarding, aliases); a lone
                    // recipient of an attributed report is the attributed one.
                    let matched = attribution.as_ref().filter(|found| {
                        single
                            || EmailAddress::parse(&notice.recipient).is_ok_and(|address| {
                                address.key() == found.recipient.recipient.email.key()
                            })
                    });
                    results.push(self.bounce(&notice, matched).await?);
                }
                Ok(results)
            }
            ReportKind::Complaint(complaint) => {
                let email = match &attribution {
                    Some(found) => found.recipient.recipient.email.clone(),
                    None => {
                        let named = complaint
                            .original_rcpt_to
                            .first()
                            .or_else(|| feedback.original.as_ref().and_then(|o| o.to.first()))
                            .ok_or_else(|| {
                                IntakeError::Unusable(
                                    "the complaint names no recipient (no VERP return path, known Message-ID, Original-Rcpt-To or To)".into(),
                                )
                            })?;
                        parse_address(named)?
                    }
                };
                let event = NewFeedbackEvent {
                    campaign_id: attribution.as_ref().map(|a| a.recipient.campaign_id),
                    recipient_id: attribution.as_ref().map(|a| a.recipient.id),
                    email: email.clone(),
                    kind: FeedbackKind::Complaint,
                    status: Some(complaint.feedback_type.to_string()),
                    action: None,
                    diagnostic: complaint.user_agent.clone(),
                    occurred_at: OffsetDateTime::now_utc(),
                };
                self.store.record_feedback(&event).await?;
                self.store.suppress(&email, "complaint").await?;
                tracing::info!(email = %email, attributed = attribution.is_some(), "complaint recorded; address suppressed");
                metrics::record_tracking_event("complaint");
                self.webhooks.recipient_event(
                    webhooks::EventKind::Complained,
                    event.campaign_id,
                    event.recipient_id,
                    Some(email.as_str()),
                    serde_json::json!({"feedback_type": event.status, "user_agent": event.diagnostic}),
                );
                Ok(vec![IntakeResult {
                    email: email.as_str().to_string(),
                    kind: Some(FeedbackKind::Complaint),
                    status: event.status,
                    action: None,
                    campaign_id: event.campaign_id,
                    recipient_id: event.recipient_id,
                    attributed_by: attribution.map(|a| a.by),
                    suppressed: true,
                }])
            }
        }
    }

    /// The JSON form.
    pub async fn json(&self, form: BounceJson) -> Result<Vec<IntakeResult>, IntakeError> {
        let mut attribution = match form.message_id.as_deref() {
            Some(message_id) => self.by_message_id(message_id).await?,
            None => None,
        };
        if attribution.is_none()
            && let Some(campaign_id) = form.campaign_id
        {
            attribution = self
                .store
                .recipient_by_email(campaign_id, &form.email)
                .await?
                .map(|recipient| Attribution {
                    recipient,
                    by: "campaign_and_email",
                });
        }
        let notice = BounceNotice {
            recipient: form.email.as_str().to_string(),
            status: form.status,
            action: form.action,
            diagnostic: form.diagnostic,
            message_id: form.message_id,
        };
        Ok(vec![self.bounce(&notice, attribution.as_ref()).await?])
    }

    async fn attribute(&self, feedback: &Feedback) -> Result<Option<Attribution>, IntakeError> {
        if let Some(token) = feedback.verp_token(VERP_PREFIX) {
            match self.keys.verify(Purpose::Bounce, token) {
                Ok(claims) => {
                    if let Some(recipient) = self
                        .store
                        .get_recipient(claims.campaign_id, claims.recipient_id)
                        .await?
                    {
                        return Ok(Some(Attribution {
                            recipient,
                            by: "verp",
                        }));
                    }
                }
                // Not ours, or altered: fall back to the Message-ID.
                Err(err) => tracing::debug!(error = %err, "VERP token in a report not accepted"),
            }
        }
        match feedback.message_id() {
            Some(message_id) => self.by_message_id(message_id).await,
            None => Ok(None),
        }
    }

    async fn by_message_id(&self, message_id: &str) -> Result<Option<Attribution>, IntakeError> {
        let Some((campaign_id, recipient_id)) = message::recipient_of_message_id(message_id) else {
            return Ok(None);
        };
        Ok(self
            .store
            .get_recipient(campaign_id, recipient_id)
            .await?
            .map(|recipient| Attribution {
                recipient,
                by: "message_id",
            }))
    }

    /// Records one bounce and applies the suppression rule.
    async fn bounce(
        &self,
        notice: &BounceNotice,
        attribution: Option<&Attribution>,
    ) -> Result<IntakeResult, IntakeError> {
        let email = match attribution {
            Some(found) => found.recipient.recipient.email.clone(),
            None => parse_address(&notice.recipient)?,
        };
        let kind = match notice.severity() {
            Severity::Hard => Some(FeedbackKind::HardBounce),
            Severity::Soft => Some(FeedbackKind::SoftBounce),
            Severity::None => None,
        };
        let mut result = IntakeResult {
            email: email.as_str().to_string(),
            kind,
            status: Some(notice.status.to_string()),
            action: Some(notice.action.to_string()),
            campaign_id: attribution.map(|a| a.recipient.campaign_id),
            recipient_id: attribution.map(|a| a.recipient.id),
            attributed_by: attribution.map(|a| a.by),
            suppressed: false,
        };
        let Some(kind) = kind else {
            // A success notice: nothing to record or suppress.
            return Ok(result);
        };
        let now = OffsetDateTime::now_utc();
        self.store
            .record_feedback(&NewFeedbackEvent {
                campaign_id: result.campaign_id,
                recipient_id: result.recipient_id,
                email: email.clone(),
                kind,
                status: result.status.clone(),
                action: result.action.clone(),
                diagnostic: notice.diagnostic.clone(),
                occurred_at: now,
            })
            .await?;
        let suppress = match kind {
            FeedbackKind::HardBounce => Some("hard_bounce"),
            FeedbackKind::SoftBounce => {
                let recent = self
                    .store
                    .soft_bounces_since(&email.key(), now - self.soft_bounces.window)
                    .await?;
                (recent >= i64::from(self.soft_bounces.limit.max(1))).then_some("soft_bounce_limit")
            }
            FeedbackKind::Complaint => Some("complaint"),
        };
        if let Some(reason) = suppress {
            self.store.suppress(&email, reason).await?;
            result.suppressed = true;
        } else {
            result.suppressed = !self
                .store
                .suppressed_among(&[email.key()])
                .await?
                .is_empty();
        }
        tracing::info!(email = %email, kind = kind.as_str(), status = %notice.status, suppressed = result.suppressed, attributed = attribution.is_some(), "bounce recorded");
        metrics::record_tracking_event("bounce");
        self.webhooks.recipient_event(
            webhooks::EventKind::Bounced,
            result.campaign_id,
            result.recipient_id,
            Some(email.as_str()),
            serde_json::json!({
                "severity": if kind == FeedbackKind::HardBounce { "hard" } else { "soft" },
                "status": result.status,
                "action": result.action,
                "diagnostic": notice.diagnostic,
                "suppressed": result.suppressed,
            }),
        );
        Ok(result)
    }
}

fn parse_address(raw: &str) -> Result<EmailAddress, IntakeError> {
    let bare = raw.trim().trim_start_matches('<').trim_end_matches('>');
    EmailAddress::parse(bare).map_err(|err| {
        IntakeError::Unusable(format!("the reported address {raw:?} is not usable: {err}"))
    })
}
