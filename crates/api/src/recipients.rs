//! Adding recipients to a campaign: CSV, a JSON array or JSON Lines, each parsed row by row
//! as the body arrives, so a million-row upload never sits in memory.

use crate::campaigns::{campaign_id, media_type};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use campaign::{Recipient, RecipientFormat, RowError};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use store::{ImportReport, RecipientStream};
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
/// Add recipients to a draft or scheduled campaign: a JSON array of objects, JSON Lines (one
/// object per line) or CSV with an `email` column; every format is streamed. All or nothing;
/// duplicates are skipped and reported.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/recipients",
    tag = "recipients",
    operation_id = "add_recipients",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content(
        (Vec<Recipient> = "application/json"),
        (String = "application/x-ndjson", example = "{\"email\": \"ann@example.com\", \"first_name\": \"Ann\"}\n{\"email\": \"bob@example.org\"}\n"),
        (String = "application/jsonl", example = "{\"email\": \"ann@example.com\", \"first_name\": \"Ann\"}\n"),
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
    let format = match media_type(request.headers()).as_deref() {
        None => RecipientFormat::JsonArray,
        Some(media_type) => RecipientFormat::from_media_type(media_type).ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "recipients are read from application/json (an array), {} (JSON Lines) or text/csv, not {media_type}",
                RecipientFormat::JSON_LINES_MEDIA_TYPES.join(" or ")
            ))
        })?,
    };
    let report = import_streamed(&state, id, format, request.into_body()).await?;
    tracing::info!(campaign = %id, imported = report.imported, duplicates = report.duplicates, "recipients imported");
    Ok(Json(report))
}

pub(crate) fn too_many_recipients(limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "one request may add at most {limit} recipients (MAX_RECIPIENTS_PER_REQUEST); split the list into several uploads; nothing was imported"
    ))
}

async fn import_streamed(
    state: &AppState,
    id: campaign::CampaignId,
    format: RecipientFormat,
    body: Body,
) -> Result<ImportReport, ApiError> {
    let limit = state.settings.max_import_bytes;
    let max_rows = state.settings.max_recipients_per_request;
    let too_large = Arc::new(AtomicBool::new(false));
    let too_many = Arc::new(AtomicBool::new(false));
    let (rows, start) = parsed_rows(
        format,
        body,
        limit,
        max_rows,
        too_large.clone(),
        too_many.clone(),
    );
    // What precedes the first row (the CSV header, the array's `[`) is read before anything is
    // stored, so a file without an `email` column or a body that is no array is refused
    // without touching the campaign.
    start
        .await
        .map_err(|_| ApiError::Internal("the recipient reader stopped unexpectedly".into()))?
        .map_err(|err| {
            if too_large.load(Ordering::Relaxed) {
                ApiError::TooLarge(format!("a recipient upload may be at most {limit} bytes"))
            } else {
                ApiError::invalid(vec![campaign::Problem {
                    field: match format {
                        RecipientFormat::Csv => "csv",
                        RecipientFormat::JsonArray => "json",
                        RecipientFormat::JsonLines => "jsonl",
                    }
                    .into(),
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

/// Parses the body on a blocking thread (the readers read synchronously) and hands rows over a
/// bounded channel, so parsing and inserting overlap and memory stays bounded. The oneshot
/// answers once what precedes the first row has been read. A body with more than `max_rows`
/// rows ends in an error row after the limit, so the import rolls back and `too_many` says why.
fn parsed_rows(
    format: RecipientFormat,
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
    let (start_sender, start_receiver) = oneshot::channel();
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
        let rows = match format.read(reader) {
            Ok(rows) => {
                let _ = start_sender.send(Ok(()));
                rows
            }
            Err(err) => {
                let _ = start_sender.send(Err(err.to_string()));
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
    let stream = RecipientStream::new(futures::stream::poll_fn(move |cx| {
        row_receiver.poll_recv(cx)
    }));
    (stream, start_receiver)
}
