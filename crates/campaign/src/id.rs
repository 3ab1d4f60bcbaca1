//! The ids of campaigns and recipients, as types of their own, so one cannot be passed where
//! the other (or a task id, or a count) is expected.
//!
//! Both serialise, print and parse exactly as the value they wrap (`serde(transparent)`,
//! `Display`, `FromStr`, and `Debug` too, so logs and test failures read as before): the API,
//! task payloads, tracking tokens and the OpenAPI document are unchanged by them.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use uuid::Uuid;

/// A campaign's id: a UUID, v7 for the campaigns this service creates, so they sort by
/// creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CampaignId(Uuid);

impl CampaignId {
    /// A new id for a campaign created now (UUID v7).
    pub fn now_v7() -> CampaignId {
        CampaignId(Uuid::now_v7())
    }

    /// The campaign with this UUID; `const`, for fixed ids (fixtures, examples).
    pub const fn from_uuid(uuid: Uuid) -> CampaignId {
        CampaignId(uuid)
    }

    /// The UUID, for the boundaries that store or encode it as one (database columns, the
    /// bytes of a tracking token, the local part of a Message-ID).
    pub const fn as_uuid(self) -> Uuid {
        self.0
    }
}

/// For the boundaries that read a UUID back (a database column, a tracking token, a task's
/// id that names the campaign it created).
impl From<Uuid> for CampaignId {
    fn from(uuid: Uuid) -> CampaignId {
        CampaignId(uuid)
    }
}

impl From<CampaignId> for Uuid {
    fn from(id: CampaignId) -> Uuid {
        id.0
    }
}

impl fmt::Display for CampaignId {
    /// Hyphenated lower case, as a UUID prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for CampaignId {
    type Err = uuid::Error;

    /// Any form a UUID parses from, with the same errors.
    fn from_str(text: &str) -> Result<CampaignId, uuid::Error> {
        Uuid::from_str(text).map(CampaignId)
    }
}

impl utoipa::PartialSchema for CampaignId {
    /// A UUID string, as the fields that carry campaign ids have always been described.
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .into()
    }
}

impl utoipa::ToSchema for CampaignId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CampaignId")
    }
}

/// A recipient's id: assigned by the database, an integer so it stays compact in tracking
/// tokens and batch payloads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
pub struct RecipientId(i64);

impl RecipientId {
    /// The recipient with this database id.
    pub const fn new(id: i64) -> RecipientId {
        RecipientId(id)
    }

    /// The integer, for the boundaries that encode it as one (the bytes of a tracking token).
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for RecipientId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<RecipientId, std::num::ParseIntError> {
        text.parse().map(RecipientId)
    }
}

impl utoipa::PartialSchema for RecipientId {
    fn schema() -> RefOr<Schema> {
        <i64 as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for RecipientId {
    /// The component the OpenAPI document has always referred to for recipient ids (from the
    /// time they were a plain `i64`), so clients generated from it are unchanged.
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("i64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialise_print_and_parse_as_the_values_they_wrap() {
        let uuid = Uuid::now_v7();
        let campaign = CampaignId::from(uuid);
        assert_eq!(
            serde_json::to_string(&campaign).unwrap(),
            serde_json::to_string(&uuid).unwrap()
        );
        assert_eq!(campaign.to_string(), uuid.to_string());
        assert_eq!(format!("{campaign:?}"), format!("{uuid:?}"));
        assert_eq!(
            campaign.to_string().parse::<CampaignId>().unwrap(),
            campaign
        );
        assert_eq!(
            serde_json::from_str::<CampaignId>(&format!("\"{uuid}\"")).unwrap(),
            campaign
        );
        assert_eq!(
            "not-a-uuid".parse::<CampaignId>().unwrap_err().to_string(),
            "not-a-uuid".parse::<Uuid>().unwrap_err().to_string()
        );

        let recipient = RecipientId::new(-42);
        assert_eq!(serde_json::to_string(&recipient).unwrap(), "-42");
        assert_eq!(serde_json::from_str::<RecipientId>("7").unwrap().get(), 7);
        assert_eq!(recipient.to_string(), "-42");
        assert_eq!(format!("{recipient:?}"), "-42");
        assert_eq!("-42".parse::<RecipientId>().unwrap(), recipient);
        assert!("4.2".parse::<RecipientId>().is_err());
    }

    #[test]
    fn new_campaign_ids_sort_by_creation() {
        let first = CampaignId::now_v7();
        let second = CampaignId::now_v7();
        assert!(first < second);
        assert_eq!(first.as_uuid().get_version_num(), 7);
    }
}
