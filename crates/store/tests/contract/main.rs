//! One contract suite, run against every backend: the same story must hold on SQLite and on
//! PostgreSQL. Each backend's tests live in a module named after it (`sqlite::…`,
//! `postgres::…`) so CI can count and filter them per backend.
//! The cases are grouped by the store's aggregates, one module each.

use campaign::{CampaignDocument, EmailAddress, Limits, Recipient, RowError};

mod admin;
mod campaigns;
mod deliveries;
mod suppressions;
mod tracking;

pub(crate) fn document(name: &str) -> CampaignDocument {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sample_campaign.json"
    ))
    .unwrap();
    let mut document = CampaignDocument::from_json(&text, &Limits::default()).unwrap();
    document.name = name.to_string();
    document
}

pub(crate) fn recipient(email: &str, first_name: &str) -> Recipient {
    let mut fields = serde_json::Map::new();
    fields.insert("first_name".into(), first_name.into());
    Recipient {
        email: EmailAddress::parse(email).unwrap(),
        fields,
    }
}

pub(crate) fn rows(recipients: Vec<Recipient>) -> Vec<Result<Recipient, RowError>> {
    recipients.into_iter().map(Ok).collect()
}

macro_rules! contract_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {

            macro_rules! case {
                ($aggregate:ident :: $name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        #[allow(clippy::redundant_closure_call)]
                        let Some((store, _guard)) = ($open)().await else {
                            return;
                        };
                        super::$aggregate::$name(store).await;
                    }
                };
            }

            #[tokio::test]
            async fn stored_keys_follow_the_current_rule() {
                #[allow(clippy::redundant_closure_call)]
                let Some((store, guard)) = ($open)().await else {
                    return;
                };
                let url = guard
                    .downcast_ref::<testkit::SqliteDatabase>()
                    .map(|database| database.url.clone())
                    .or_else(|| {
                        guard
                            .downcast_ref::<testkit::PostgresDatabase>()
                            .map(|database| database.url.clone())
                    })
                    .expect("a test database");
                super::suppressions::stored_keys_follow_the_current_rule(store, url).await;
            }

            case!(campaigns::campaign_round_trips_with_its_recipients);
            case!(campaigns::duplicates_are_skipped_and_reported);
            case!(campaigns::a_campaign_under_a_chosen_id_is_stored_once);
            case!(campaigns::a_bad_row_stores_nothing);
            case!(campaigns::unknown_campaigns_are_reported);
            case!(campaigns::campaigns_page_newest_first);
            case!(admin::ping_answers);
            case!(admin::a_secret_is_created_once);
            case!(deliveries::a_campaign_finishes_when_every_recipient_is_final);
            case!(campaigns::schedule_and_cancel_follow_the_rules);
            case!(admin::api_keys_are_stored_listed_and_revoked);
            case!(admin::test_sends_are_recorded_within_their_quota);
            case!(campaigns::campaign_transitions_are_conditional);
            case!(deliveries::batches_cover_every_due_recipient_once);
            case!(deliveries::outcomes_decide_who_is_due_and_counts_add_up);
            case!(deliveries::many_sent_outcomes_are_recorded_each_with_its_own_reply);
            case!(deliveries::local_send_time_zones_are_stored_held_and_released);
            case!(suppressions::suppressions_match_whatever_the_case);
            case!(campaigns::due_campaigns_are_queued_exactly_once);
            case!(tracking::tracking_events_are_appended_in_batches_and_read_back);
            case!(tracking::engagement_is_counted_per_kind_link_and_hour);
        }
    };
}

contract_suite!(sqlite, || async {
    let database = testkit::SqliteDatabase::create();
    let store = store::connect(&database.url).await.unwrap();
    Some((store, Box::new(database) as Box<dyn std::any::Any + Send>))
});

contract_suite!(postgres, || async {
    let database = testkit::PostgresDatabase::create().await?;
    let store = store::connect(&database.url).await.unwrap();
    Some((store, Box::new(database) as Box<dyn std::any::Any + Send>))
});
