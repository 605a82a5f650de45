//! Tests of the MySQL sink against a real `mariadbd` ([`MariaDb`]).

use std::time::{Duration, Instant};

use cdc_model::{ChangeEvent, ErrorReport};
use sqlx::Row as _;
use sqlx::mysql::MySqlPool;

use crate::testing::MariaDb;
use crate::{Error, MysqlSink, Sink, SinkConfig, SinkUri};

/// The sink of span `["/src/", "/src0")` of changefeed `cf` at `uri`.
async fn open(uri: &str) -> crate::Result<MysqlSink> {
    let SinkConfig::Mysql(config) = SinkUri::parse(uri).unwrap().config else {
        panic!("not a mysql sink: {uri}")
    };
    MysqlSink::open(&config, "cf", b"/src/", b"/src0").await
}

/// The rows of `table`: key, value, revision, changefeed, by key.
async fn rows(pool: &MySqlPool, table: &str) -> Vec<(String, Option<String>, u64, String)> {
    sqlx::query(&format!(
        "SELECT k, v, revision, changefeed FROM `{table}` ORDER BY k"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|row| {
        let key: Vec<u8> = row.get(0);
        let value: Option<Vec<u8>> = row.get(1);
        (
            String::from_utf8(key).unwrap(),
            value.map(|value| String::from_utf8(value).unwrap()),
            row.get(2),
            row.get(3),
        )
    })
    .collect()
}

fn row(key: &str, value: Option<&str>, revision: u64) -> (String, Option<String>, u64, String) {
    (
        key.to_owned(),
        value.map(str::to_owned),
        revision,
        "cf".to_owned(),
    )
}

#[tokio::test]
async fn mysql_sink_applies_only_newer_revisions_and_keeps_tombstones() {
    let server = MariaDb::start().await.unwrap();
    let pool = server.pool().await.unwrap();
    // Two rows per statement: one flush is several statements in one transaction.
    let uri = server.sink_uri("kv", "&batch-size=2");
    let mut sink = open(&uri).await.unwrap();
    sink.write(&[
        ChangeEvent::put("/src/a", "a1", 1),
        ChangeEvent::put("/src/b", "b2", 2),
        ChangeEvent::put("/src/a", "a3", 3),
    ])
    .await
    .unwrap();
    sink.write(&[
        ChangeEvent::delete("/src/b", 4),
        ChangeEvent::put("/src/c", "c5", 5),
        ChangeEvent::put("/src/d", "d6", 6),
        ChangeEvent::put("/src/e", "e7", 7),
    ])
    .await
    .unwrap();
    // Nothing reaches the table before the flush.
    assert!(rows(&pool, "kv").await.is_empty());
    sink.flush().await.unwrap();
    let expected = vec![
        row("/src/a", Some("a3"), 3),
        row("/src/b", None, 4),
        row("/src/c", Some("c5"), 5),
        row("/src/d", Some("d6"), 6),
        row("/src/e", Some("e7"), 7),
    ];
    assert_eq!(rows(&pool, "kv").await, expected);

    // A replay from an older checkpoint, by another sink as after a move: nothing goes back,
    // the deleted key stays deleted, and the newer changes after it apply.
    sink.close().await.unwrap();
    let mut sink = open(&uri).await.unwrap();
    sink.write(&[
        ChangeEvent::put("/src/a", "a1", 1),
        ChangeEvent::put("/src/b", "b2", 2),
        ChangeEvent::put("/src/a", "a3", 3),
        ChangeEvent::put("/src/c", "c5", 5),
        ChangeEvent::delete("/src/d", 8),
        ChangeEvent::put("/src/b", "b9", 9),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        rows(&pool, "kv").await,
        vec![
            row("/src/a", Some("a3"), 3),
            row("/src/b", Some("b9"), 9),
            row("/src/c", Some("c5"), 5),
            row("/src/d", None, 8),
            row("/src/e", Some("e7"), 7),
        ]
    );
    sink.close().await.unwrap();
}

#[tokio::test]
async fn mysql_sink_purges_the_tombstones_of_its_span_after_the_delay() {
    let server = MariaDb::start().await.unwrap();
    let pool = server.pool().await.unwrap();
    let uri = server.sink_uri("kv", "&tombstones=purge-after=1s");
    let mut sink = open(&uri).await.unwrap();
    // A tombstone of another span, which this sink must not purge.
    sqlx::query("INSERT INTO kv VALUES ('/other/x', NULL, 1, 'cf')")
        .execute(&pool)
        .await
        .unwrap();
    sink.write(&[
        ChangeEvent::put("/src/a", "a1", 2),
        ChangeEvent::put("/src/b", "b1", 3),
        ChangeEvent::delete("/src/b", 4),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(rows(&pool, "kv").await[2], row("/src/b", None, 4));
    // Flushes (empty ones too) purge once a second has passed since the tombstone's flush.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        sink.flush().await.unwrap();
        let now = rows(&pool, "kv").await;
        if now.len() == 2 {
            assert_eq!(
                now,
                vec![row("/other/x", None, 1), row("/src/a", Some("a1"), 2),]
            );
            break;
        }
        assert!(Instant::now() < deadline, "the tombstone stays: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.close().await.unwrap();
}

#[tokio::test]
async fn mysql_sink_tries_a_transaction_again_after_a_deadlock() {
    let server = MariaDb::start().await.unwrap();
    let pool = server.pool().await.unwrap();
    let mut sink = open(&server.sink_uri("kv", "")).await.unwrap();
    sink.write(&[
        ChangeEvent::put("/src/1", "one", 1),
        ChangeEvent::put("/src/2", "two", 2),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();

    // Another client locks /src/2 and makes its transaction the heavier one, so that InnoDB
    // rolls the sink's transaction back when they deadlock.
    sqlx::query("CREATE TABLE heavy (n INT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut other = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO heavy SELECT seq FROM seq_1_to_1000")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("UPDATE kv SET v = 'other' WHERE k = '/src/2'")
        .execute(&mut *other)
        .await
        .unwrap();
    // The sink locks /src/1, then waits for /src/2.
    sink.write(&[
        ChangeEvent::put("/src/1", "one-3", 3),
        ChangeEvent::put("/src/2", "two-4", 4),
    ])
    .await
    .unwrap();
    let flush = tokio::spawn(async move {
        let flushed = sink.flush().await;
        (sink, flushed)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !flush.is_finished(),
            "the flush ended without waiting for the lock"
        );
        assert!(
            Instant::now() < deadline,
            "the sink never waited for the lock"
        );
        // InnoDB refreshes what `INNODB_TRX` shows only when it was not read for 100 ms: a
        // faster poll reads the same stale snapshot for ever.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Closing the cycle: the sink's transaction is the victim, and the other goes on.
    sqlx::query("UPDATE kv SET v = 'other' WHERE k = '/src/1'")
        .execute(&mut *other)
        .await
        .unwrap();
    other.commit().await.unwrap();
    let (sink, flushed) = flush.await.unwrap();
    flushed.unwrap();
    assert!(sink.lock_retries() >= 1, "no retry");
    assert_eq!(
        rows(&pool, "kv").await,
        vec![
            row("/src/1", Some("one-3"), 3),
            row("/src/2", Some("two-4"), 4)
        ]
    );
    sink.close().await.unwrap();
}

/// The error's whole chain, as the changefeed shows it.
fn report(err: &Error) -> String {
    ErrorReport(err).to_string()
}

#[tokio::test]
async fn mysql_sink_errors_carry_the_servers_message() {
    let mut server = MariaDb::start().await.unwrap();
    let pool = server.pool().await.unwrap();

    // A wrong password.
    let uri = server
        .sink_uri("kv", "")
        .replace(&format!(":{}@", MariaDb::PASSWORD), ":wrong@");
    let err = open(&uri).await.unwrap_err();
    assert!(report(&err).contains("Access denied"), "{}", report(&err));
    assert!(err.is_retryable());

    // A database that does not exist.
    let uri = server
        .sink_uri("kv", "")
        .replace(&format!("/{}?", MariaDb::DATABASE), "/missing?");
    let err = open(&uri).await.unwrap_err();
    assert!(
        report(&err).contains("Unknown database"),
        "{}",
        report(&err)
    );

    // A row larger than the server takes in a packet.
    sqlx::query("SET GLOBAL max_allowed_packet = 1048576")
        .execute(&pool)
        .await
        .unwrap();
    let mut sink = open(&server.sink_uri("kv", "")).await.unwrap();
    sink.write(&[ChangeEvent::put("/src/big", vec![b'x'; 2 << 20], 1)])
        .await
        .unwrap();
    let err = sink.flush().await.unwrap_err();
    // The server answers the packet with its error and closes the connection; when the close
    // arrives while the client still writes the packet, the client sees the reset instead.
    let text = report(&err);
    assert!(
        text.contains("max_allowed_packet") || text.contains("Connection reset by peer"),
        "{text}"
    );
    assert!(err.is_retryable(), "{text}");
    sink.close().await.unwrap();
    sqlx::query("SET GLOBAL max_allowed_packet = 67108864")
        .execute(&pool)
        .await
        .unwrap();
    let mut sink = open(&server.sink_uri("kv", "")).await.unwrap();
    sink.write(&[ChangeEvent::put("/src/big", vec![b'x'; 2 << 20], 1)])
        .await
        .unwrap();
    sink.flush().await.unwrap();

    // A server that goes away, and comes back.
    pool.close().await;
    server.kill().unwrap();
    sink.write(&[ChangeEvent::put("/src/a", "a", 2)])
        .await
        .unwrap();
    let err = sink.flush().await.unwrap_err();
    assert!(err.is_retryable(), "{}", report(&err));
    sink.close().await.unwrap();
    server.restart().await.unwrap();
    let mut sink = open(&server.sink_uri("kv", "")).await.unwrap();
    sink.write(&[ChangeEvent::put("/src/a", "a", 2)])
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let pool = server.pool().await.unwrap();
    assert_eq!(rows(&pool, "kv").await[0], row("/src/a", Some("a"), 2));
    sink.close().await.unwrap();
}
