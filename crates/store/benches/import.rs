//! Recipient import throughput (rows/s) on both backends: streamed rows through the import
//! driver into a fresh database, 1,000 rows per statement, one transaction.
//!
//! `cargo bench -p store --bench import -- [ROWS]` (default 200,000). PostgreSQL comes from
//! TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test); it is skipped when absent.

use campaign::{CampaignDocument, EmailAddress, Limits, Recipient};
use std::time::Instant;
use store::recipient_stream;

fn document() -> CampaignDocument {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sample_campaign.json"
    ))
    .expect("examples/sample_campaign.json");
    CampaignDocument::from_json(&text, &Limits::default()).expect("valid sample")
}

fn rows(count: usize) -> impl Iterator<Item = Result<Recipient, campaign::RowError>> + Send {
    (0..count).map(|i| {
        let mut fields = serde_json::Map::new();
        fields.insert("first_name".into(), format!("Reader{i}").into());
        fields.insert("city".into(), "Bristol".into());
        Ok(Recipient {
            email: EmailAddress::parse(&format!("reader{i}@subscribers.example"))
                .expect("valid address"),
            fields,
        })
    })
}

async fn measure(label: &str, url: &str, count: usize) {
    let store = store::connect(url).await.expect("store opens");
    let document = document();
    let started = Instant::now();
    let (_, report) = store
        .create_campaign(&document, recipient_stream(rows(count)))
        .await
        .expect("import");
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.imported as usize, count);
    println!(
        "{label:<11} {count} rows in {elapsed:.2} s = {:.0} rows/s",
        count as f64 / elapsed
    );
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(200_000);
    let sqlite = testkit::SqliteDatabase::create();
    measure("sqlite", &sqlite.url, count).await;
    match testkit::PostgresDatabase::create().await {
        Some(postgres) => measure("postgres", &postgres.url, count).await,
        None => println!("postgres    skipped (no server)"),
    }
}
