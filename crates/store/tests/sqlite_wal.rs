//! The SQLite WAL is checkpointed and truncated once it passes a size, so a long send does not
//! leave every read searching a WAL of hundreds of megabytes (PostgreSQL has no such file).

use std::time::{Duration, Instant};
use store::Database;
use testkit::SqliteDatabase;

fn wal_len(db: &SqliteDatabase) -> u64 {
    let mut path = db.path.clone().into_os_string();
    path.push("-wal");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Writes `megabytes` of 1 MiB blobs in one transaction, so all of it lands in the WAL.
async fn write_blobs(database: &Database, megabytes: usize) {
    let Database::Sqlite(pool) = database else {
        panic!("a SQLite database")
    };
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS filler (payload BLOB NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for _ in 0..megabytes {
        sqlx::query("INSERT INTO filler (payload) VALUES (randomblob(1048576))")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn filler_rows(database: &Database) -> i64 {
    let Database::Sqlite(pool) = database else {
        panic!("a SQLite database")
    };
    sqlx::query_scalar("SELECT COUNT(*) FROM filler")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_wal_past_the_limit_is_checkpointed_and_truncated_and_nothing_is_lost() {
    let file = SqliteDatabase::create();
    let database = Database::open(&file.url).await.unwrap();
    write_blobs(&database, 3).await;
    let before = wal_len(&file);
    assert!(
        before > 3 << 20,
        "3 MiB written to the WAL, found {before} bytes"
    );

    assert_eq!(
        database.truncate_wal_if_larger(before).await.unwrap(),
        None,
        "a WAL at the limit is left alone"
    );
    assert_eq!(wal_len(&file), before);

    assert_eq!(
        database.truncate_wal_if_larger(1 << 20).await.unwrap(),
        Some(before),
        "past the limit it is checkpointed"
    );
    assert_eq!(wal_len(&file), 0, "and truncated");
    assert_eq!(
        filler_rows(&database).await,
        3,
        "every row is in the database file"
    );

    // Closed and opened again: the rows were checkpointed into the file itself.
    if let Database::Sqlite(pool) = &database {
        pool.close().await;
    }
    let reopened = Database::open(&file.url).await.unwrap();
    assert_eq!(filler_rows(&reopened).await, 3);
}

#[tokio::test]
async fn the_pool_truncates_its_wal_by_itself_past_the_limit() {
    let file = SqliteDatabase::create();
    let database = Database::open(&file.url).await.unwrap();
    let megabytes = usize::try_from(store::WAL_TRUNCATE_BYTES >> 20).unwrap() + 4;
    write_blobs(&database, megabytes).await;
    assert!(wal_len(&file) > store::WAL_TRUNCATE_BYTES);
    // The pool looks every few seconds; poll for the outcome with a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal_len(&file) > store::WAL_TRUNCATE_BYTES {
        assert!(
            Instant::now() < deadline,
            "the WAL is still {} bytes after 60 s",
            wal_len(&file)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        filler_rows(&database).await,
        i64::try_from(megabytes).unwrap()
    );
}
