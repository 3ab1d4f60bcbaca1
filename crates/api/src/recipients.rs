//! Adding recipients to a campaign: a JSON array, or CSV streamed row by row so that a
//! million-row file never sits in memory.

use crate::campaigns::{campaign_id, media_type};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use campaign::document::parse_json;
use campaign::{CsvRecipients, Recipient, RowError};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use store::{ImportReport, RecipientStream, recipient_stream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::{StreamReader, SyncIoBridge};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(add_recipients))
}

/// Rows parsed ahead of the database: enough to keep both busy, small enough to stay flat.
const ROWS_IN_FLIGHT: usize = 2048;

/// Add recipients to a campaign.
///
/// Add recipients to a draft or scheduled campaign: a JSON array, or CSV with an `email`
/// column (streamed). All or nothing; duplicates are skipped and reported.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/recipients",
    tag = "recipients",
    operation_id = "add_recipients",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content(
        (Vec<Recipient> = "application/json"),
        (String = "text/csv", example = "email,first_name\nann@example.com,Ann\n")
    )),
    responses((status = 200, description = "Imported", body = ImportReport), AdminProblems),
    security(("api_key" = []))
)]
async fn add_recipients(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Json<ImportReport>, ApiError> {
    let id = campaign_id(&id)?;
    let report = match media_type(request.headers()).as_deref() {
        Some("text/csv") => import_csv(&state, id, request.into_body()).await?,
        None | Some("application/json") => {
            let limit = state.settings.max_body_bytes;
            let bytes = axum::body::to_bytes(request.into_body(), limit)
                .await
                .map_err(|_| {
                    ApiError::TooLarge(format!(
                        "a JSON recipient list may be at most {limit} bytes; send larger lists as text/csv"
                    ))
                })?;
            let recipients: Vec<Recipient> = parse_json(&bytes)?;
            service::check_recipient_count(
                recipients.len() as u64,
                state.settings.max_recipients_per_request,
            )?;
            state
                .campaigns()
                .add_recipients(id, recipient_stream(recipients.into_iter().map(Ok)))
                .await?
        }
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "recipients are read from application/json (an array) or text/csv, not {other}"
            )));
        }
    };
    Ok(Json(report))
}

pub(crate) fn too_many_recipients(limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "one request may add at most {limit} recipients (MAX_RECIPIENTS_PER_REQUEST); split the list into several uploads; nothing was imported"
    ))
}

async fn import_csv(
    state: &AppState,
    id: campaign::CampaignId,
    body: Body,
) -> Result<ImportReport, ApiError> {
    let limit = state.settings.max_import_bytes;
    let max_rows = state.settings.max_recipients_per_request;
    let too_large = Arc::new(AtomicBool::new(false));
    let too_many = Arc::new(AtomicBool::new(false));
    let (rows, header) = csv_rows(body, limit, max_rows, too_large.clone(), too_many.clone());
    // The header is read before anything is stored, so a file without an `email` column
    // is refused without touching the campaign.
    header
        .await
        .map_err(|_| ApiError::Internal("the CSV reader stopped unexpectedly".into()))?
        .map_err(|err| {
            if too_large.load(Ordering::Relaxed) {
                ApiError::TooLarge(format!("a recipient upload may be at most {limit} bytes"))
            } else {
                ApiError::invalid(vec![campaign::Problem {
                    field: "csv".into(),
                    message: err,
                }])
            }
        })?;
    let result = state.campaigns().add_recipients(id, rows).await;
    if too_large.load(Ordering::Relaxed) {
        return Err(ApiError::TooLarge(format!(
            "a recipient upload may be at most {limit} bytes; nothing was imported"
        )));
    }
    if too_many.load(Ordering::Relaxed) {
        return Err(too_many_recipients(max_rows));
    }
    Ok(result?)
}

/// Parses CSV on a blocking thread (the csv crate reads synchronously) and hands rows over a
/// bounded channel, so parsing and inserting overlap and memory stays bounded. The oneshot
/// answers once the header row has been read. A file with more than `max_rows` rows ends in
/// an error row after the limit, so the import rolls back and `too_many` says why.
fn csv_rows(
    body: Body,
    limit: u64,
    max_rows: u64,
    too_large: Arc<AtomicBool>,
    too_many: Arc<AtomicBool>,
) -> (
    RecipientStream<'static>,
    oneshot::Receiver<Result<(), String>>,
) {
    let (row_sender, mut row_receiver) =
        mpsc::channel::<Result<Recipient, RowError>>(ROWS_IN_FLIGHT);
    let (header_sender, header_receiver) = oneshot::channel();
    let mut seen: u64 = 0;
    let bytes = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            too_large.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("the upload exceeds the size limit"));
        }
        Ok(chunk)
    });
    let reader = SyncIoBridge::new(StreamReader::new(bytes));
    tokio::task::spawn_blocking(move || {
        let rows = match CsvRecipients::new(reader) {
            Ok(rows) => {
                let _ = header_sender.send(Ok(()));
                rows
            }
            Err(err) => {
                let _ = header_sender.send(Err(err.to_string()));
                return;
            }
        };
        for (count, row) in (1u64..).zip(rows) {
            let row = if count > max_rows {
                too_many.store(true, Ordering::Relaxed);
                Err(campaign::RowError {
                    row: count,
                    // Never shown: the request answers 413 from `too_many`.
                    line: count + 1,
                    column: None,
                    message: format!("more than {max_rows} recipients in one request"),
                })
            } else {
                row
            };
            let stop = count > max_rows;
            if row_sender.blocking_send(row).is_err() || stop {
                // The importer gave up (the request failed); stop reading.
                return;
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| row_receiver.poll_recv(cx)).boxed();
    (stream, header_receiver)
}
