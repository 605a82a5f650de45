//! Tests of the NATS sink against a real `nats-server -js` ([`NatsServer`]).

use cdc_model::{ChangeEvent, ErrorReport};

use crate::testing::NatsServer;
use crate::{Error, NatsSink, Sink, SinkConfig, SinkUri, json_line, msg_id, subject_matches};

/// The sink of changefeed `cf` at `uri`.
async fn open(uri: &str) -> crate::Result<NatsSink> {
    let SinkConfig::Nats(config) = SinkUri::parse(uri).unwrap().config else {
        panic!("not a nats sink: {uri}")
    };
    let client = NatsSink::connect(&config).await?;
    NatsSink::open(client, &config, "cf").await
}

/// Every message of `stream`: subject, `Nats-Msg-Id` and payload, in stream order.
async fn messages(server: &NatsServer, stream: &str) -> Vec<(String, String, String)> {
    let jetstream = async_nats::jetstream::new(server.client().await.unwrap());
    let mut stream = jetstream.get_stream(stream).await.unwrap();
    let n_messages = stream.info().await.unwrap().state.messages;
    let mut all = Vec::new();
    for sequence in 1..=n_messages {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|value| value.to_string())
            .unwrap_or_default();
        all.push((
            message.subject.to_string(),
            id,
            String::from_utf8(message.payload.to_vec()).unwrap(),
        ));
    }
    all
}

#[test]
fn subjects_and_message_ids() {
    assert!(subject_matches("cdc.>", "cdc.cf"));
    assert!(subject_matches("cdc.>", "cdc.ns.cf"));
    assert!(subject_matches("cdc.*", "cdc.cf"));
    assert!(!subject_matches("cdc.*", "cdc.ns.cf"));
    assert!(!subject_matches("cdc.>", "cdc"));
    assert!(subject_matches("cdc.cf", "cdc.cf"));
    assert!(!subject_matches("other.>", "cdc.cf"));
    assert_eq!(
        msg_id("cf", &ChangeEvent::put("/a b%", "v", 7)),
        "cf:7:/a%20b%25"
    );
    assert_eq!(msg_id("cf", &ChangeEvent::delete("/k", 9)), "cf:9:/k");
}

#[tokio::test]
async fn nats_sink_publishes_json_lines_and_a_replay_is_dropped_as_duplicates() {
    let server = NatsServer::start().await.unwrap();
    let uri = server.sink_uri("cdc", "CHANGES", "&create-stream=true");
    let mut sink = open(&uri).await.unwrap();
    assert_eq!(sink.subject(), "cdc.cf");
    let events = [
        ChangeEvent::put("/src/a", "a1", 1),
        ChangeEvent::put("/src/b", "b2", 2),
        ChangeEvent::delete("/src/a", 3),
    ];
    sink.write(&events).await.unwrap();
    sink.flush().await.unwrap();
    let expected: Vec<_> = events
        .iter()
        .map(|event| ("cdc.cf".to_owned(), msg_id("cf", event), json_line(event)))
        .collect();
    assert_eq!(messages(&server, "CHANGES").await, expected);

    // A replay by another sink (as after a move) and one more change: only the new one is kept.
    sink.close().await.unwrap();
    let mut sink = open(&uri).await.unwrap();
    sink.write(&events).await.unwrap();
    sink.write(&[ChangeEvent::put("/src/c", "c4", 4)])
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let all = messages(&server, "CHANGES").await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3].1, "cf:4:/src/c");
    sink.close().await.unwrap();
}

#[tokio::test]
async fn nats_sink_names_a_missing_or_mismatched_stream_and_a_server_gone() {
    let mut server = NatsServer::start().await.unwrap();
    let err = open(&server.sink_uri("cdc", "MISSING", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NatsStreamMissing { .. }), "{err:?}");
    let report = ErrorReport(&err).to_string();
    assert!(
        report.contains("\"MISSING\"") && report.contains("create-stream=true"),
        "{report}"
    );

    // A stream over other subjects.
    let jetstream = async_nats::jetstream::new(server.client().await.unwrap());
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".to_owned(),
            subjects: vec!["other.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = open(&server.sink_uri("cdc", "OTHER", ""))
        .await
        .unwrap_err();
    let report = ErrorReport(&err).to_string();
    assert!(
        matches!(err, Error::NatsStreamMismatch { .. })
            && report.contains("\"OTHER\"")
            && report.contains("cdc.cf"),
        "{report}"
    );

    // The server goes away: a flush fails; it comes back with its store and a new sink goes on.
    let uri = server.sink_uri("cdc", "CHANGES", "&create-stream=true");
    let mut sink = open(&uri).await.unwrap();
    sink.write(&[ChangeEvent::put("/src/a", "a1", 1)])
        .await
        .unwrap();
    sink.flush().await.unwrap();
    server.kill().unwrap();
    sink.write(&[ChangeEvent::put("/src/b", "b2", 2)])
        .await
        .unwrap();
    let err = sink.flush().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    sink.close().await.unwrap();
    server.restart().await.unwrap();
    let mut sink = open(&uri).await.unwrap();
    sink.write(&[
        ChangeEvent::put("/src/a", "a1", 1),
        ChangeEvent::put("/src/b", "b2", 2),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    let ids: Vec<String> = messages(&server, "CHANGES")
        .await
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(ids, ["cf:1:/src/a", "cf:2:/src/b"]);
    sink.close().await.unwrap();
}

#[test]
fn a_flush_is_published_in_waves_of_one_change_per_key() {
    let events = [
        ChangeEvent::put("/a", "1", 1),
        ChangeEvent::put("/b", "2", 2),
        ChangeEvent::put("/a", "3", 3),
        ChangeEvent::put("/a", "4", 4),
        ChangeEvent::delete("/b", 5),
        ChangeEvent::put("/c", "6", 6),
    ];
    let revisions: Vec<Vec<u64>> = super::waves(&events)
        .iter()
        .map(|wave| wave.iter().map(|event| event.revision).collect())
        .collect();
    // Every change once; no key twice in a wave; each key's changes in order across waves.
    assert_eq!(revisions, vec![vec![1, 2, 6], vec![3, 5], vec![4]]);
    assert!(super::waves(&[]).is_empty());
}
