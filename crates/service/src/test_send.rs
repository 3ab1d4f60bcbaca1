//! A test send: the campaign's message, rendered for given fields, sent to a few addresses
//! through the configured transport with a marked subject. It never touches the campaign's
//! state, its recipients or their counts.

use crate::{CampaignError, CampaignService};
use campaign::{CampaignId, EmailAddress, Problem, Recipient, RecipientId};
use serde::Serialize;
use std::sync::Arc;
use store::{QuotaWindow, TestSendReservation};

/// The most addresses one test send may name: enough for a team, too few to be a campaign.
pub const MAX_TEST_ADDRESSES: usize = 10;

/// Put before the rendered subject of every test message, so nobody takes it for the real one.
pub const TEST_SUBJECT_MARK: &str = "[TEST] ";

/// How test messages leave this process.
#[derive(Clone, Copy)]
pub struct TestSender<'a> {
    /// `None` in a process without a transport: a test send is refused (`NoTransport`).
    pub transport: Option<&'a Arc<dyn delivery::Transport>>,
    /// Signs the unsubscribe link of each test message.
    pub links: &'a tracking::Links,
    /// Signs test messages as the workers sign campaign mail (a From domain the key does not
    /// cover is sent unsigned).
    pub dkim: Option<&'a Arc<message::DkimSigner>>,
    /// Test messages per caller, counted across every process sharing the database.
    pub quota: &'a [QuotaWindow],
}

/// One test send: who asks (the quota is theirs), to whom, with which fields.
pub struct TestSend {
    pub caller: String,
    /// From [`parse_test_addresses`]: one per mailbox.
    pub addresses: Vec<EmailAddress>,
    /// Fields the templates print; the address is each recipient's email.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// What became of one address.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestSendResult {
    pub address: String,
    pub status: TestSendStatus,
    /// Whether the transport accepted the message (false when suppressed or failed).
    pub accepted: bool,
    /// The server's reply (or, for the outbox, where the file is).
    pub reply: Option<String>,
    /// Why it was not accepted.
    pub error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TestSendStatus {
    /// The transport accepted the message.
    Sent,
    /// The transport refused it or could not be reached.
    Failed,
    /// The address is on the suppression list: nothing was sent to it.
    Suppressed,
}

/// Reads 1 to [`MAX_TEST_ADDRESSES`] addresses; several spellings of one mailbox count once
/// (the first one given is used). Every bad address is one problem.
pub fn parse_test_addresses(raw: &[String]) -> Result<Vec<EmailAddress>, CampaignError> {
    let mut problems = Vec::new();
    if raw.is_empty() || raw.len() > MAX_TEST_ADDRESSES {
        problems.push(Problem {
            field: "addresses".into(),
            message: format!(
                "give 1 to {MAX_TEST_ADDRESSES} addresses (got {})",
                raw.len()
            ),
        });
    }
    let mut addresses: Vec<EmailAddress> = Vec::new();
    for (n, raw) in raw.iter().enumerate() {
        match EmailAddress::parse(raw) {
            Ok(address) if addresses.iter().any(|seen| seen.key() == address.key()) => {}
            Ok(address) => addresses.push(address),
            Err(err) => problems.push(Problem {
                field: format!("addresses[{n}]"),
                message: err.to_string(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(addresses)
    } else {
        Err(CampaignError::invalid(problems))
    }
}

fn template_problem(err: &message::TemplateError) -> CampaignError {
    CampaignError::invalid(vec![message::template_problem(err)])
}

impl CampaignService<'_> {
    /// Sends the campaign's message, subject marked [`TEST_SUBJECT_MARK`], to each address
    /// not on the suppression list, after counting them on the caller's quota (over it:
    /// nothing is sent). Every message is rendered before anything is counted or sent, so a
    /// template that fails for these fields costs no quota. One result per address, in order.
    pub async fn test_send(
        &self,
        id: CampaignId,
        request: TestSend,
        sender: TestSender<'_>,
    ) -> Result<Vec<TestSendResult>, CampaignError> {
        let campaign = self.find(id).await?;
        let transport = sender.transport.ok_or(CampaignError::NoTransport)?;
        let mut document = campaign.document.clone();
        document.templates.subject = format!("{TEST_SUBJECT_MARK}{}", document.templates.subject);
        let compiled = message::CompiledCampaign::compile(&document, self.message_settings)
            .map_err(|err| template_problem(&err))?;
        let build = |address: &EmailAddress, unsubscribe_url: String| {
            let recipient = Recipient {
                email: address.clone(),
                fields: request.fields.clone(),
            };
            // A test names no stored recipient (id 0); its unsubscribe link names the test send.
            let context = message::RecipientContext {
                campaign_id: campaign.id,
                recipient_id: RecipientId::new(0),
                unsubscribe_url,
                unsubscribe_mailto: None,
                // A test message records no opens or clicks: its links keep their original URLs.
                tracking: Default::default(),
            };
            let options = message::BuildOptions {
                envelope_from: None,
                date: time::OffsetDateTime::now_utc(),
            };
            compiled
                .message(&recipient, &context, &options, None)
                .map_err(|err| match err {
                    message::MessageError::Template(err) => template_problem(&err),
                    message::MessageError::Build(message::BuildError::Envelope(err)) => {
                        CampaignError::invalid(vec![Problem {
                            field: "addresses".into(),
                            message: format!("{}: {err}", recipient.email.as_str()),
                        }])
                    }
                    other => CampaignError::invalid(vec![Problem {
                        field: "fields".into(),
                        message: other.to_string(),
                    }]),
                })
        };

        let addresses = &request.addresses;
        let keys: Vec<String> = addresses.iter().map(|address| address.key()).collect();
        let suppressed = self.store.suppressed_among(&keys).await?;
        let to_send: Vec<EmailAddress> = addresses
            .iter()
            .filter(|address| !suppressed.contains(&address.key()))
            .cloned()
            .collect();
        for address in &to_send {
            build(address, sender.links.test_unsubscribe(campaign.id, 0))?;
        }
        let test_ids = if to_send.is_empty() {
            Vec::new()
        } else {
            self.reserve(&request.caller, campaign.id, &to_send, sender.quota)
                .await?
        };
        let mut test_ids = to_send.iter().zip(test_ids);

        let mut results = Vec::with_capacity(addresses.len());
        for address in addresses {
            let shown = address.as_str().to_string();
            if suppressed.contains(&address.key()) {
                results.push(TestSendResult {
                    address: shown,
                    status: TestSendStatus::Suppressed,
                    accepted: false,
                    reply: None,
                    error: Some("the address is on the suppression list".into()),
                });
                continue;
            }
            let Some((_, test_id)) = test_ids.next() else {
                return Err(CampaignError::Internal(
                    "fewer test sends recorded than addresses".into(),
                ));
            };
            let built = build(address, sender.links.test_unsubscribe(campaign.id, test_id))?;
            let content = match sender
                .dkim
                .cloned()
                .filter(|signer| signer.covers(document.from.email.domain()))
            {
                // Off the async threads, as the workers do: RSA signing takes over a millisecond.
                Some(signer) => {
                    let unsigned = built.content.clone();
                    tokio::task::spawn_blocking(move || {
                        signer
                            .sign_bytes(&unsigned, time::OffsetDateTime::now_utc().unix_timestamp())
                    })
                    .await
                    .map_err(|err| {
                        CampaignError::Internal(format!("DKIM signing did not finish: {err}"))
                    })?
                    .map_err(|err| CampaignError::Internal(format!("DKIM signing failed: {err}")))?
                }
                None => built.content.to_vec(),
            };
            let outgoing = message::OutgoingMessage {
                content: content.into(),
                ..built
            }
            .with_ids(campaign.id.to_string(), format!("test-{test_id}"));
            results.push(match transport.send(outgoing).await {
                Ok(accepted) => TestSendResult {
                    address: shown,
                    status: TestSendStatus::Sent,
                    accepted: true,
                    reply: Some(accepted.reply.to_string()),
                    error: None,
                },
                Err(err) => TestSendResult {
                    address: shown,
                    status: TestSendStatus::Failed,
                    accepted: false,
                    reply: None,
                    error: Some(err.to_string()),
                },
            });
        }
        tracing::info!(
            campaign = %campaign.id,
            sent = to_send.len(),
            suppressed = addresses.len() - to_send.len(),
            "test message sent"
        );
        Ok(results)
    }

    /// Counts `addresses` on the caller's test-send quota, or says why not (nothing is sent).
    async fn reserve(
        &self,
        caller: &str,
        campaign_id: CampaignId,
        addresses: &[EmailAddress],
        quota: &[QuotaWindow],
    ) -> Result<Vec<i64>, CampaignError> {
        let now = time::OffsetDateTime::now_utc();
        let reservation = self
            .store
            .reserve_test_sends(caller, campaign_id, addresses, now, quota)
            .await?;
        let (window, retry_at) = match reservation {
            TestSendReservation::Reserved(ids) => return Ok(ids),
            TestSendReservation::OverQuota { window, retry_at } => (window, retry_at),
        };
        let per = if window.window <= time::Duration::minutes(1) {
            "minute (TEST_SEND_PER_MINUTE)"
        } else {
            "day (TEST_SEND_PER_DAY)"
        };
        let Some(retry_at) = retry_at else {
            return Err(CampaignError::invalid(vec![Problem {
                field: "addresses".into(),
                message: format!(
                    "{} addresses to send to, but an API key may send at most {} test messages a {per}",
                    addresses.len(),
                    window.limit
                ),
            }]));
        };
        let seconds = (retry_at - now).as_seconds_f64().ceil().max(1.0) as u64;
        Err(CampaignError::QuotaExceeded {
            detail: format!(
                "API key {caller} has sent its {} test messages a {per}; {} more fit in {seconds} s",
                window.limit,
                addresses.len()
            ),
            retry_after_seconds: seconds,
        })
    }
}
