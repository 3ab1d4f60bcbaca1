//! One contract suite, run against every backend: the same story must hold on SQLite and on
//! PostgreSQL. Each backend's tests live in a module named after it (`sqlite::…`,
//! `postgres::…`) so CI can count and filter them per backend.
//! The cases are grouped by the store's aggregates, one module each.

use campaign::{CampaignDocument, EmailAddress, Limits, Recipient, RowError};

mod ab_tests;
mod admin;
mod campaigns;
mod deliveries;
mod import;
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

use ab_tests::*;
use admin::*;
use campaigns::*;
use deliveries::*;
use import::*;
use suppressions::*;
use tracking::*;

/// Opens the store on the test database and runs one case on it.
async fn with_store<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(std::sync::Arc<dyn store::CampaignStore>) -> Run,
    Run: std::future::Future<Output = ()>,
{
    let store = store::connect(database.url()).await.unwrap();
    case(store).await;
    drop(database);
}

/// As [`with_store`], for a case that also writes to the database behind the store's back.
async fn with_store_and_url<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(std::sync::Arc<dyn store::CampaignStore>, String) -> Run,
    Run: std::future::Future<Output = ()>,
{
    let store = store::connect(database.url()).await.unwrap();
    case(store, database.url().to_owned()).await;
    drop(database);
}

testkit::backend_suite! {
    #[tokio::test] with_store => [
        campaign_round_trips_with_its_recipients,
        the_status_alone_follows_the_campaigns_changes,
        duplicates_are_skipped_and_reported,
        a_campaign_under_a_chosen_id_is_stored_once,
        a_bad_row_stores_nothing,
        unknown_campaigns_are_reported,
        campaigns_page_newest_first,
        ping_answers,
        a_secret_is_created_once,
        a_campaign_finishes_when_every_recipient_is_final,
        schedule_and_cancel_follow_the_rules,
        api_keys_are_stored_listed_and_revoked,
        test_sends_are_recorded_within_their_quota,
        campaign_transitions_are_conditional,
        batches_cover_every_due_recipient_once,
        outcomes_decide_who_is_due_and_counts_add_up,
        rate_deferrals_are_no_attempts_and_show_what_they_wait_for,
        many_sent_outcomes_are_recorded_each_with_its_own_reply,
        local_send_time_zones_are_stored_held_and_released,
        suppressions_match_whatever_the_case,
        due_campaigns_are_queued_exactly_once,
        tracking_events_are_appended_in_batches_and_read_back,
        engagement_is_counted_per_kind_link_and_hour,
        a_json_array_is_stored_while_it_is_read,
        json_lines_are_stored_while_they_are_read,
        an_ab_test_holds_the_rest_and_is_decided_once,
        a_paused_ab_test_is_not_decided_by_results,
    ];
    #[tokio::test] with_store_and_url => [
        stored_keys_follow_the_current_rule,
        sent_outcomes_that_wait_for_a_cancel_are_all_recorded,
        ids_are_stored_as_plain_uuids_and_integers,
    ];
}
