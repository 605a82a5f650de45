//! Tests of the etcd mirror's revision fence against a real etcd: a stale sink of the same
//! span never rolls a key back nor resurrects a deleted one.

use std::time::Duration;

use cdc_etcd::testing::EtcdServer;
use cdc_etcd::{EtcdClient, GetOptions};
use cdc_model::ChangeEvent;

use super::{EtcdSink, REVISION_RECORD_PREFIX, parse_revision_record, revision_record_value};
use crate::{DEFAULT_FLUSH_INTERVAL, EtcdSinkConfig, Sink};

/// A sink of the span cut from `/src/` into `server` under `/dst/`.
fn sink(server: &EtcdServer, client: &EtcdClient, batch_size: usize) -> EtcdSink {
    let config = EtcdSinkConfig {
        endpoints: vec![server.endpoint().trim_start_matches("http://").to_owned()],
        prefix: b"/dst/".to_vec(),
        batch_size,
        flush_interval: DEFAULT_FLUSH_INTERVAL,
        tls: None,
    };
    EtcdSink::new(client.clone(), config, b"/src/".to_vec())
}

/// The mirror's keys (without `/dst/`) and values, as text.
async fn mirror(client: &EtcdClient) -> Vec<(String, String)> {
    client
        .get("/dst/", GetOptions::prefix())
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key[b"/dst/".len()..].to_vec()).unwrap(),
                String::from_utf8(kv.value).unwrap(),
            )
        })
        .collect()
}

/// The revision the record of mirror key `/dst/<key>` holds.
async fn record(client: &EtcdClient, key: &str) -> Option<u64> {
    let record = EtcdSink::record_key(format!("/dst/{key}").as_bytes());
    let kvs = client.get(record, GetOptions::default()).await.unwrap().kvs;
    kvs.first()
        .map(|kv| parse_revision_record(&kv.value).unwrap())
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn records_order_as_their_revisions() {
    assert_eq!(revision_record_value(42), b"00000000000000000042");
    assert_eq!(
        revision_record_value(u64::MAX),
        b"18446744073709551615".to_vec()
    );
    assert!(revision_record_value(9) < revision_record_value(10));
    assert_eq!(parse_revision_record(&revision_record_value(77)), Some(77));
    assert_eq!(parse_revision_record(b"77"), None);
    assert_eq!(parse_revision_record(b"0000000000000000007x"), None);
    // Records live outside every mirror prefix (they start with `/`).
    assert_eq!(
        EtcdSink::record_key(b"/dst/k"),
        b"cdc-mirror-revision/dst/k".to_vec()
    );
    assert_ne!(REVISION_RECORD_PREFIX.first(), Some(&b'/'));
}

// The span's new capture writes revisions 100 to 104; the former one, resuming from a freeze,
// then flushes what it held from before (older revisions: puts, a delete, a put of a key the
// new one deleted) plus one change newer than the new one's and one of a key the new one never
// wrote. The mirror keeps every key at its newest change.
#[tokio::test]
async fn a_stale_sink_never_rolls_a_mirrored_key_back() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let mut newer = sink(&server, &client, 128);
    let mut stale = sink(&server, &client, 128);

    newer
        .write(&[
            ChangeEvent::put("/src/a", "a100", 100),
            ChangeEvent::put("/src/b", "b101", 101),
            ChangeEvent::put("/src/c", "c102", 102),
            ChangeEvent::delete("/src/d", 103),
            ChangeEvent::put("/src/e", "e104", 104),
        ])
        .await
        .unwrap();
    newer.flush().await.unwrap();

    stale
        .write(&[
            ChangeEvent::put("/src/a", "a50", 50),
            ChangeEvent::delete("/src/b", 60),
            ChangeEvent::put("/src/c", "c102-again", 102),
            ChangeEvent::put("/src/d", "d70", 70),
            ChangeEvent::put("/src/e", "e200", 200),
            ChangeEvent::put("/src/f", "f40", 40),
        ])
        .await
        .unwrap();
    stale.flush().await.unwrap();

    assert_eq!(
        mirror(&client).await,
        pairs(&[
            ("a", "a100"),
            ("b", "b101"),
            ("c", "c102"),
            ("e", "e200"),
            ("f", "f40"),
        ])
    );
    // The delete left a tombstone with its revision.
    assert_eq!(record(&client, "d").await, Some(103));
    assert_eq!(record(&client, "e").await, Some(200));
    assert_eq!(record(&client, "f").await, Some(40));

    // A newer change of a deleted key brings it back.
    newer
        .write(&[ChangeEvent::put("/src/d", "d300", 300)])
        .await
        .unwrap();
    newer.flush().await.unwrap();
    assert!(
        mirror(&client)
            .await
            .contains(&("d".to_owned(), "d300".to_owned()))
    );
}

// One transaction whose first guard fails (records absent, newer and older in the same batch):
// the failure branch reads the records, the changes that are not newer are dropped, and the rest
// are committed on the next attempt; with `batch-size=4` the flush takes several transactions.
#[tokio::test]
async fn a_refused_transaction_drops_what_is_not_newer_and_commits_the_rest() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let mut newer = sink(&server, &client, 4);
    let mut stale = sink(&server, &client, 4);
    // Keys 0..10 at revisions 1000 + i from the newer sink.
    let events: Vec<ChangeEvent> = (0..10)
        .map(|i| ChangeEvent::put(format!("/src/k{i:02}"), format!("new{i}"), 1000 + i))
        .collect();
    newer.write(&events).await.unwrap();
    newer.flush().await.unwrap();
    // The stale sink: even keys older, odd keys newer, and keys 10..20 never mirrored, mixed
    // in every transaction.
    let events: Vec<ChangeEvent> = (0..20)
        .map(|i| {
            let revision = if i < 10 && i % 2 == 0 {
                500 + i
            } else {
                2000 + i
            };
            ChangeEvent::put(format!("/src/k{i:02}"), format!("stale{i}"), revision)
        })
        .collect();
    stale.write(&events).await.unwrap();
    stale.flush().await.unwrap();

    let expected: Vec<(String, String)> = (0..20)
        .map(|i| {
            let value = if i < 10 && i % 2 == 0 {
                format!("new{i}")
            } else {
                format!("stale{i}")
            };
            (format!("k{i:02}"), value)
        })
        .collect();
    assert_eq!(mirror(&client).await, expected);
    for i in 0..20 {
        let revision = if i < 10 && i % 2 == 0 {
            1000 + i
        } else {
            2000 + i
        };
        assert_eq!(record(&client, &format!("k{i:02}")).await, Some(revision));
    }
}

// Two sinks flush the same keys at once, round after round, with interleaved revisions, so
// guards fail because the other sink wrote a record between a read and the next attempt: per key
// the highest revision wins every round.
#[tokio::test]
async fn concurrent_sinks_leave_each_key_at_its_highest_revision() {
    let server = EtcdServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let mut first = sink(&server, &client, 6);
    let mut second = sink(&server, &client, 6);
    for round in 0..10u64 {
        let base = 1000 * (round + 1);
        // Keys 0..12: the first sink is newer on even keys, the second on odd ones, and every
        // third key is a delete in one of them.
        let changes = |newer_on_even: bool| -> Vec<ChangeEvent> {
            (0..12u64)
                .map(|i| {
                    let newer = (i % 2 == 0) == newer_on_even;
                    let revision = base + 2 * i + u64::from(newer);
                    let key = format!("/src/k{i:02}");
                    if i % 3 == 0 && !newer {
                        ChangeEvent::delete(key, revision)
                    } else {
                        ChangeEvent::put(key, format!("{revision}"), revision)
                    }
                })
                .collect()
        };
        first.write(&changes(true)).await.unwrap();
        second.write(&changes(false)).await.unwrap();
        let (first_flushed, second_flushed) =
            tokio::time::timeout(Duration::from_secs(60), async {
                tokio::join!(first.flush(), second.flush())
            })
            .await
            .unwrap();
        first_flushed.unwrap();
        second_flushed.unwrap();
        let expected: Vec<(String, String)> = (0..12u64)
            .map(|i| (format!("k{i:02}"), format!("{}", base + 2 * i + 1)))
            .collect();
        assert_eq!(mirror(&client).await, expected, "round {round}");
    }
}
