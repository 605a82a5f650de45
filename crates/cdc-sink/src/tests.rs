//! Unit tests of the sink URI parser (its TLS parameters too), the blackhole sink and the file
//! sink.

use std::time::Duration;

use cdc_model::ChangeEvent;

use crate::{
    BlackholeSink, Error, EtcdSinkConfig, FileSink, FileSinkConfig, MYSQL_TLS_PARAMETERS,
    MysqlSinkConfig, Sink, SinkConfig, SinkKind, SinkTls, SinkUri, TLS_PARAMETERS, Tombstones,
    file_name, json_line,
};

#[test]
fn unknown_scheme_is_named() {
    let err = SinkUri::parse("kafka://127.0.0.1:9092/topic").unwrap_err();
    assert!(matches!(&err, Error::UnknownScheme { scheme } if scheme == "kafka"));
    assert!(err.to_string().contains("\"kafka\""), "{err}");
    assert!(!err.is_retryable());
    assert!(matches!(
        SinkUri::parse("no-scheme").unwrap_err(),
        Error::MissingScheme { .. }
    ));
}

#[test]
fn unknown_parameter_is_named() {
    let err = SinkUri::parse("file:///tmp/out?max-file-size=1MiB&bogus=1").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownParameter { scheme, parameter } if scheme == "file" && parameter == "bogus"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"bogus\""), "{err}");
    // A parameter of another scheme is unknown too.
    let err = SinkUri::parse("blackhole://?batch-size=10").unwrap_err();
    assert!(matches!(&err, Error::UnknownParameter { parameter, .. } if parameter == "batch-size"));
    let err = SinkUri::parse("etcd://h:1/p?max-file-size=1").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownParameter { parameter, .. } if parameter == "max-file-size")
    );
}

#[test]
fn parameters_are_parsed() {
    let uri = SinkUri::parse("blackhole://").unwrap();
    assert_eq!(uri.kind(), SinkKind::Blackhole);
    assert_eq!(uri.config, SinkConfig::Blackhole);

    let uri =
        SinkUri::parse("file:///var/cdc%20out?max-file-size=2MiB&flush-interval=250ms").unwrap();
    assert_eq!(uri.kind(), SinkKind::File);
    assert_eq!(
        uri.config,
        SinkConfig::File(FileSinkConfig {
            dir: "/var/cdc out".into(),
            max_file_size: 2 << 20,
            flush_interval: Duration::from_millis(250),
        })
    );
    let SinkConfig::File(file) = SinkUri::parse("file:///d").unwrap().config else {
        panic!("not a file sink")
    };
    assert_eq!(file.max_file_size, 64 << 20);
    assert_eq!(file.flush_interval, Duration::from_secs(1));

    let uri = SinkUri::parse(
        "etcd://10.0.0.1:2379,10.0.0.2:2379/mirror/?batch-size=64&flush-interval=2s",
    )
    .unwrap();
    assert_eq!(uri.kind(), SinkKind::Etcd);
    assert_eq!(uri.flush_interval(), Duration::from_secs(2));
    assert_eq!(
        uri.config,
        SinkConfig::Etcd(EtcdSinkConfig {
            endpoints: vec!["10.0.0.1:2379".to_owned(), "10.0.0.2:2379".to_owned()],
            prefix: b"/mirror/".to_vec(),
            batch_size: 64,
            flush_interval: Duration::from_secs(2),
            tls: None,
        })
    );
}

#[test]
fn bad_values_are_named() {
    for (uri, parameter) in [
        ("file:///d?max-file-size=lots", "max-file-size"),
        ("file:///d?max-file-size=0", "max-file-size"),
        ("file:///d?max-file-size=1PB", "max-file-size"),
        ("file:///d?flush-interval=5", "flush-interval"),
        ("etcd://h:1/p?batch-size=129", "batch-size"),
        ("etcd://h:1/p?batch-size=0", "batch-size"),
        ("etcd://h:1/p?batch-size=1&batch-size=2", "batch-size"),
    ] {
        let err = SinkUri::parse(uri).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidParameter { parameter: named, .. } if named == parameter),
            "{uri}: {err:?}"
        );
    }
    for uri in [
        "file://host/dir",
        "file:///",
        "etcd://h/p",
        "etcd://h:1",
        "etcd://h:1,:2/p",
    ] {
        assert!(
            matches!(SinkUri::parse(uri), Err(Error::InvalidUri { .. })),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn blackhole_counts_and_drops() {
    let mut sink = BlackholeSink::new();
    let stats = sink.stats().clone();
    sink.write(&[ChangeEvent::put("k", "vv", 2), ChangeEvent::delete("k", 3)])
        .await
        .unwrap();
    sink.flush().await.unwrap();
    sink.close().await.unwrap();
    assert_eq!((stats.events(), stats.bytes(), stats.flushes()), (2, 4, 1));
}

#[test]
fn json_lines_shape() {
    assert_eq!(
        json_line(&ChangeEvent::put("/a", "x\"y", 7)),
        r#"{"key":"/a","value":"x\"y","revision":7,"op":"put"}"#
    );
    assert_eq!(
        json_line(&ChangeEvent::delete("/a", 8)),
        r#"{"key":"/a","value":null,"revision":8,"op":"delete"}"#
    );
    assert_eq!(
        json_line(&ChangeEvent::put(vec![0xff, 0x00, 0x61], vec![0xc3], 9)),
        r#"{"key_base64":"/wBh","value_base64":"ww==","revision":9,"op":"put"}"#
    );
}

#[tokio::test]
async fn file_sink_rolls_in_name_order_and_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileSinkConfig {
        dir: dir.path().to_owned(),
        max_file_size: 120,
        flush_interval: Duration::from_secs(1),
    };
    let events: Vec<ChangeEvent> = (1..=10)
        .map(|revision| ChangeEvent::put(format!("/k{revision}"), "v", revision))
        .collect();
    let mut sink = FileSink::open(&config, "cf", "span-0").await.unwrap();
    sink.write(&events[..4]).await.unwrap();
    sink.write(&events[4..7]).await.unwrap();
    sink.flush().await.unwrap();
    sink.close().await.unwrap();
    // Reopened, as after a restart: the next file sorts after the previous ones.
    let mut sink = FileSink::open(&config, "cf", "span-0").await.unwrap();
    sink.write(&events[7..]).await.unwrap();
    sink.flush().await.unwrap();
    sink.close().await.unwrap();

    let cf_dir = dir.path().join("cf");
    let mut names: Vec<String> = std::fs::read_dir(&cf_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    assert_eq!(names[0], file_name("span-0", 0));
    let mut revisions = Vec::new();
    for name in &names {
        let text = std::fs::read_to_string(cf_dir.join(name)).unwrap();
        assert!(text.len() <= 120, "{name} has {} bytes", text.len());
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            revisions.push(value["revision"].as_u64().unwrap());
        }
    }
    assert_eq!(revisions, (1..=10).collect::<Vec<u64>>());
}

fn target(span: &str) -> crate::SpanTarget<'_> {
    crate::SpanTarget {
        changefeed: "cf",
        span,
        source_prefix: b"/src/",
        start_key: b"/src/",
        end_key: b"/src0",
    }
}

#[tokio::test]
async fn any_sink_opens_what_the_uri_names() {
    let shared = crate::SharedSinks::default();
    let uri = SinkUri::parse("blackhole://").unwrap();
    let mut sink = crate::AnySink::open(&uri, target("span-0"), &shared)
        .await
        .unwrap();
    sink.write(&[ChangeEvent::put("k", "v", 2)]).await.unwrap();
    sink.flush().await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(shared.blackhole_stats().events(), 1);

    let dir = tempfile::tempdir().unwrap();
    let uri = SinkUri::parse(&format!("file://{}", dir.path().display())).unwrap();
    let mut sink = crate::AnySink::open(&uri, target("span-0"), &shared)
        .await
        .unwrap();
    sink.write(&[ChangeEvent::put("k", "v", 2)]).await.unwrap();
    sink.flush().await.unwrap();
    sink.close().await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("cf").join(file_name("span-0", 0))).unwrap();
    assert_eq!(
        text,
        "{\"key\":\"k\",\"value\":\"v\",\"revision\":2,\"op\":\"put\"}\n"
    );
}

/// Every key under `prefix` in `client`, with its value.
async fn dump(client: &cdc_etcd::EtcdClient, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let response = client
        .get(prefix.to_vec(), cdc_etcd::GetOptions::prefix())
        .await
        .unwrap();
    response
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// The etcd sink of span `span-0` into `server`, at `path_and_query` (`/dst/?batch-size=3`).
async fn open_etcd_sink(
    server: &cdc_etcd::testing::EtcdServer,
    path_and_query: &str,
) -> crate::AnySink {
    let uri = SinkUri::parse(&format!(
        "etcd://{}{path_and_query}",
        server.endpoint().trim_start_matches("http://")
    ))
    .unwrap();
    let shared = crate::SharedSinks::default();
    crate::AnySink::open(&uri, target("span-0"), &shared)
        .await
        .unwrap()
}

#[tokio::test]
async fn etcd_sink_mirrors_puts_and_deletes_under_its_prefix() {
    let server = cdc_etcd::testing::EtcdServer::start().await.unwrap();
    let mut sink = open_etcd_sink(&server, "/dst/?batch-size=3").await;
    // Ten keys, each put twice, three deleted: more operations than one transaction takes, and
    // keys that repeat within one flush.
    let mut revision = 1;
    let mut events = Vec::new();
    for round in 0..2 {
        for i in 0..10 {
            revision += 1;
            events.push(ChangeEvent::put(
                format!("/src/k{i}"),
                format!("v{round}"),
                revision,
            ));
        }
    }
    for i in [1, 4, 7] {
        revision += 1;
        events.push(ChangeEvent::delete(format!("/src/k{i}"), revision));
    }
    sink.write(&events[..15]).await.unwrap();
    sink.write(&events[15..]).await.unwrap();
    sink.flush().await.unwrap();
    let client = server.client().await.unwrap();
    let expected: Vec<(Vec<u8>, Vec<u8>)> = [0, 2, 3, 5, 6, 8, 9]
        .iter()
        .map(|i| (format!("/dst/k{i}").into_bytes(), b"v1".to_vec()))
        .collect();
    assert_eq!(dump(&client, b"/dst/").await, expected);

    // A later flush wins over an earlier one, and a deleted key comes back.
    sink.write(&[
        ChangeEvent::put("/src/k1", "back", revision + 1),
        ChangeEvent::delete("/src/k0", revision + 2),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    let mirrored = dump(&client, b"/dst/").await;
    assert!(mirrored.contains(&(b"/dst/k1".to_vec(), b"back".to_vec())));
    assert!(!mirrored.iter().any(|(key, _)| key == b"/dst/k0"));
    assert_eq!(mirrored.len(), 7);
    sink.close().await.unwrap();
}

#[tokio::test]
async fn etcd_sink_reports_a_downstream_that_is_down() {
    let mut server = cdc_etcd::testing::EtcdServer::start().await.unwrap();
    let mut sink = open_etcd_sink(&server, "/dst/").await;
    server.kill().unwrap();
    sink.write(&[ChangeEvent::put("/src/k", "v", 2)])
        .await
        .unwrap();
    let err = sink.flush().await.unwrap_err();
    assert!(matches!(err, Error::Etcd { op: "txn", .. }), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
}

// 128 changes of 16 KiB make a 2 MiB transaction, more than etcd takes by default (1.5 MiB):
// the sink cuts transactions by size as well as by count.
#[tokio::test]
async fn etcd_sink_cuts_transactions_by_size() {
    let server = cdc_etcd::testing::EtcdServer::start().await.unwrap();
    let uri = SinkUri::parse(&format!(
        "etcd://{}/dst/",
        server.endpoint().trim_start_matches("http://")
    ))
    .unwrap();
    let shared = crate::SharedSinks::default();
    let mut sink = crate::AnySink::open(&uri, target("span-0"), &shared)
        .await
        .unwrap();
    let events: Vec<ChangeEvent> = (0..300)
        .map(|i| ChangeEvent::put(format!("/src/{i:03}"), vec![b'x'; 16 << 10], i + 2))
        .collect();
    sink.write(&events).await.unwrap();
    sink.flush().await.unwrap();
    let client = server.client().await.unwrap();
    assert_eq!(dump(&client, b"/dst/").await.len(), 300);
    sink.close().await.unwrap();
}

#[test]
fn mysql_uri_is_parsed() {
    let uri = SinkUri::parse(
        "mysql://writer:p%40ss@127.0.0.1:3306/cdc?table=kv&batch-size=100&tombstones=purge-after=1h&flush-interval=200ms",
    )
    .unwrap();
    assert_eq!(uri.kind(), SinkKind::Mysql);
    assert_eq!(uri.flush_interval(), Duration::from_millis(200));
    assert_eq!(
        uri.config,
        SinkConfig::Mysql(MysqlSinkConfig {
            host: "127.0.0.1".to_owned(),
            port: 3306,
            user: "writer".to_owned(),
            password: "p@ss".to_owned(),
            database: "cdc".to_owned(),
            table: "kv".to_owned(),
            batch_size: 100,
            tombstones: Tombstones::PurgeAfter(Duration::from_secs(3600)),
            flush_interval: Duration::from_millis(200),
            tls: None,
        })
    );
    let SinkConfig::Mysql(config) = SinkUri::parse("mysql://u@h:1/d?table=t").unwrap().config
    else {
        panic!("not a mysql sink")
    };
    assert_eq!(config.tombstones, Tombstones::Keep);
    assert_eq!(config.batch_size, crate::DEFAULT_MYSQL_BATCH_SIZE);
    assert!(!format!("{config:?}").contains("p@ss"));
    let SinkConfig::Mysql(config) = SinkUri::parse("mysql://u:secret@h:1/d?table=t")
        .unwrap()
        .config
    else {
        panic!("not a mysql sink")
    };
    assert!(!format!("{config:?}").contains("secret"));

    for (bad, named) in [
        ("mysql://u@h:1/d", "table"),
        ("mysql://u@h:1/d?table=a-b", "table"),
        ("mysql://u@h:1/?table=t", "database"),
        ("mysql://u@h/d?table=t", "host:port"),
        ("mysql://u@h:1/d?table=t&batch-size=0", "batch-size"),
        ("mysql://u@h:1/d?table=t&tombstones=never", "tombstones"),
        (
            "mysql://u@h:1/d?table=t&tombstones=purge-after=1",
            "tombstones",
        ),
        ("mysql://u@h:1/d?table=t&prefix=x", "prefix"),
    ] {
        let err = SinkUri::parse(bad).unwrap_err();
        assert!(err.to_string().contains(named), "{bad}: {err}");
        assert!(!err.is_retryable());
    }
}

#[test]
fn nats_uri_is_parsed() {
    let uri = SinkUri::parse("nats://127.0.0.1:4222/cdc.changes?stream=CHANGES&create-stream=true")
        .unwrap();
    assert_eq!(uri.kind(), SinkKind::Nats);
    assert_eq!(
        uri.config,
        SinkConfig::Nats(crate::NatsSinkConfig {
            address: "127.0.0.1:4222".to_owned(),
            subject: "cdc.changes".to_owned(),
            stream: "CHANGES".to_owned(),
            create_stream: true,
            flush_interval: Duration::from_secs(1),
            tls: None,
        })
    );
    for (bad, named) in [
        ("nats://h:1/cdc", "stream"),
        ("nats://h:1/?stream=S", "subject"),
        ("nats://h:1/cdc.*?stream=S", "subject"),
        ("nats://h/cdc?stream=S", "host:port"),
        ("nats://h:1/cdc?stream=S&create-stream=yes", "create-stream"),
        ("nats://h:1/cdc?stream=S&table=t", "table"),
    ] {
        let err = SinkUri::parse(bad).unwrap_err();
        assert!(err.to_string().contains(named), "{bad}: {err}");
    }
}

#[test]
fn tls_parameters_are_parsed() {
    let SinkConfig::Etcd(etcd) = SinkUri::parse("etcd://h:1,h:2/dst/?ca=/pki/ca.pem&batch-size=8")
        .unwrap()
        .config
    else {
        panic!("not an etcd sink")
    };
    assert_eq!(
        etcd.tls,
        Some(SinkTls {
            ca: "/pki/ca.pem".into(),
            identity: None,
            parameters: TLS_PARAMETERS,
        })
    );
    let SinkConfig::Etcd(etcd) =
        SinkUri::parse("etcd://h:1/dst/?ca=/pki/ca.pem&cert=/pki/c.pem&key=/pki/c-key.pem")
            .unwrap()
            .config
    else {
        panic!("not an etcd sink")
    };
    assert_eq!(
        etcd.tls.unwrap().identity,
        Some(("/pki/c.pem".into(), "/pki/c-key.pem".into()))
    );

    let SinkConfig::Mysql(mysql) = SinkUri::parse(
        "mysql://u:p@h:1/d?table=t&ssl-ca=/pki/ca.pem&ssl-cert=/pki/c.pem&ssl-key=/pki/c-key.pem",
    )
    .unwrap()
    .config
    else {
        panic!("not a mysql sink")
    };
    assert_eq!(
        mysql.tls,
        Some(SinkTls {
            ca: "/pki/ca.pem".into(),
            identity: Some(("/pki/c.pem".into(), "/pki/c-key.pem".into())),
            parameters: MYSQL_TLS_PARAMETERS,
        })
    );
    let SinkConfig::Mysql(mysql) = SinkUri::parse("mysql://u@h:1/d?table=t").unwrap().config else {
        panic!("not a mysql sink")
    };
    assert_eq!(mysql.tls, None);

    let SinkConfig::Nats(nats) = SinkUri::parse("nats://h:1/cdc?stream=S&ca=/pki/ca%20dir/ca.pem")
        .unwrap()
        .config
    else {
        panic!("not a nats sink")
    };
    assert_eq!(
        nats.tls,
        Some(SinkTls {
            ca: "/pki/ca dir/ca.pem".into(),
            identity: None,
            parameters: TLS_PARAMETERS,
        })
    );
}

#[test]
fn tls_parameters_without_what_they_need_are_named() {
    for (uri, parameter, needs) in [
        ("etcd://h:1/p?cert=/c.pem&key=/k.pem", "cert", "ca"),
        ("etcd://h:1/p?key=/k.pem", "key", "ca"),
        ("etcd://h:1/p?ca=/ca.pem&cert=/c.pem", "cert", "key"),
        ("etcd://h:1/p?ca=/ca.pem&key=/k.pem", "key", "cert"),
        ("nats://h:1/s?stream=S&cert=/c.pem&key=/k.pem", "cert", "ca"),
        (
            "nats://h:1/s?stream=S&ca=/ca.pem&cert=/c.pem",
            "cert",
            "key",
        ),
        (
            "mysql://u@h:1/d?table=t&ssl-cert=/c.pem&ssl-key=/k.pem",
            "ssl-cert",
            "ssl-ca",
        ),
        (
            "mysql://u@h:1/d?table=t&ssl-key=/k.pem",
            "ssl-key",
            "ssl-ca",
        ),
        (
            "mysql://u@h:1/d?table=t&ssl-ca=/ca.pem&ssl-key=/k.pem",
            "ssl-key",
            "ssl-cert",
        ),
    ] {
        let err = SinkUri::parse(uri).unwrap_err();
        assert!(
            matches!(&err, Error::TlsParameterMissing { parameter: p, needs: n, .. } if *p == parameter && *n == needs),
            "{uri}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("{parameter:?}")) && message.contains(&format!("{needs:?}")),
            "{uri}: {message}"
        );
        assert!(!err.is_retryable());
    }
    for (uri, parameter) in [
        ("etcd://h:1/p?ca=", "ca"),
        ("mysql://u@h:1/d?table=t&ssl-ca=", "ssl-ca"),
        ("nats://h:1/s?stream=S&ca=/ca.pem&cert=&key=/k.pem", "cert"),
    ] {
        let err = SinkUri::parse(uri).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidParameter { parameter: named, .. } if named == parameter),
            "{uri}: {err:?}"
        );
    }
}

#[test]
fn tls_parameters_of_another_scheme_are_unknown() {
    for (uri, scheme, parameter) in [
        ("mysql://u@h:1/d?table=t&ca=/ca.pem", "mysql", "ca"),
        ("mysql://u@h:1/d?table=t&cert=/c.pem", "mysql", "cert"),
        ("etcd://h:1/p?ssl-ca=/ca.pem", "etcd", "ssl-ca"),
        ("nats://h:1/s?stream=S&ssl-key=/k.pem", "nats", "ssl-key"),
        ("file:///d?ca=/ca.pem", "file", "ca"),
        ("blackhole://?cert=/c.pem", "blackhole", "cert"),
    ] {
        let err = SinkUri::parse(uri).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownParameter { scheme: s, parameter: p } if s == scheme && p == parameter),
            "{uri}: {err:?}"
        );
    }
}
