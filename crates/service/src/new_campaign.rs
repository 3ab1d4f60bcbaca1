//! A new campaign: read and checked the same way whoever creates it, then stored; and
//! recipients added to a stored one.

use crate::{CampaignError, CampaignService};
use campaign::{CampaignDocument, CampaignId, Limits, Recipient};
use std::collections::HashSet;
use store::{CampaignRecord, ImportReport, RecipientStream};
use time::OffsetDateTime;

/// Reads a campaign document about to be created: malformed JSON is told from a document of
/// the wrong shape ([`CampaignDocument::from_json`]), and a `scheduled_at` must lie in the
/// future (at `now`) and within 5 years.
pub fn read_new_campaign(
    bytes: &[u8],
    limits: &Limits,
    now: OffsetDateTime,
) -> Result<CampaignDocument, CampaignError> {
    let document = CampaignDocument::from_json(bytes, limits)?;
    document.check_schedule(now)?;
    Ok(document)
}

/// The checks every new campaign passes ([`message::check_new_campaign`]): at most
/// `max_recipients` given with it, every template compiles, and in strict mode every printed
/// variable is a field of `recipients`. Returns the compiled templates.
pub fn check_new_campaign(
    document: &CampaignDocument,
    recipients: &[Recipient],
    settings: &message::MessageSettings,
    max_recipients: u64,
) -> Result<message::CompiledCampaign, CampaignError> {
    Ok(message::check_new_campaign(
        document,
        recipients,
        settings,
        max_recipients,
    )?)
}

/// The strict-variable check for recipients too many to hold at once (a file streamed into
/// the store): every variable a template prints must be among `fields`, the field names the
/// recipients have. Lenient campaigns pass. Each unknown variable is one problem, named by
/// its template and line, as [`check_new_campaign`] names it.
pub fn check_variables(
    compiled: &message::CompiledCampaign,
    document: &CampaignDocument,
    fields: &HashSet<String>,
) -> Result<(), CampaignError> {
    let problems = message::unknown_variable_problems(compiled, document, fields);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CampaignError::invalid(problems))
    }
}

impl CampaignService<'_> {
    /// Stores a checked campaign with its recipients in one transaction: all of it, or on
    /// any bad recipient row nothing.
    pub async fn create(
        &self,
        document: &CampaignDocument,
        recipients: RecipientStream<'_>,
    ) -> Result<(CampaignRecord, ImportReport), CampaignError> {
        let (campaign, report) = self.store.create_campaign(document, recipients).await?;
        tracing::info!(campaign = %campaign.id, name = %campaign.name, recipients = report.imported, "campaign created");
        Ok((campaign, report))
    }

    /// As [`CampaignService::create`], under a caller-chosen id and once: a campaign that
    /// exists under `id` comes back without a report and nothing is stored.
    pub async fn create_once(
        &self,
        id: CampaignId,
        document: &CampaignDocument,
        recipients: RecipientStream<'_>,
    ) -> Result<(CampaignRecord, Option<ImportReport>), CampaignError> {
        Ok(self
            .store
            .create_campaign_once(id, document, recipients)
            .await?)
    }

    /// Adds recipients to a draft or scheduled campaign, all or nothing; addresses already
    /// present are reported as duplicates.
    pub async fn add_recipients(
        &self,
        id: CampaignId,
        recipients: RecipientStream<'_>,
    ) -> Result<ImportReport, CampaignError> {
        let report = self.store.import_recipients(id, recipients).await?;
        tracing::info!(campaign = %id, imported = report.imported, duplicates = report.duplicates, "recipients imported");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict_campaign() -> CampaignDocument {
        let json = serde_json::json!({
            "name": "n",
            "from": {"email": "news@example.com"},
            "templates": {"subject": "Hi {{ first_name }}", "text": "{{ plan }}", "undefined_variables": "strict"}
        });
        CampaignDocument::from_json(json.to_string().as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn a_variable_no_recipient_has_is_named_with_its_template_and_line() {
        let document = strict_campaign();
        let compiled = message::CompiledCampaign::compile(&document, &Default::default()).unwrap();
        let fields: HashSet<String> = ["first_name".to_string()].into();
        let CampaignError::Invalid(campaign::ValidationError::Invalid(problems)) =
            check_variables(&compiled, &document, &fields).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "templates.text");
        assert!(
            problems[0].message.contains("`plan`"),
            "{}",
            problems[0].message
        );
        let all: HashSet<String> = ["first_name".to_string(), "plan".to_string()].into();
        assert!(check_variables(&compiled, &document, &all).is_ok());
    }

    #[test]
    fn a_schedule_in_the_past_is_refused_when_read() {
        let now = time::macros::datetime!(2026-11-28 12:00 UTC);
        let mut json = serde_json::json!({
            "name": "n",
            "from": {"email": "news@example.com"},
            "templates": {"subject": "Hi", "text": "t"},
            "scheduled_at": "2026-11-28T11:00:00Z"
        });
        let err =
            read_new_campaign(json.to_string().as_bytes(), &Limits::default(), now).unwrap_err();
        assert!(err.to_string().contains("scheduled_at"), "{err}");
        json["scheduled_at"] = "2026-11-29T11:00:00Z".into();
        assert!(read_new_campaign(json.to_string().as_bytes(), &Limits::default(), now).is_ok());
        assert!(matches!(
            read_new_campaign(b"{", &Limits::default(), now),
            Err(CampaignError::Invalid(
                campaign::ValidationError::Malformed { .. }
            ))
        ));
    }
}
