//! The MySQL sink end to end, against a real `mariadbd`: three captures replicate 50,000 puts
//! and deletes of 1,000 keys into a table while a capture and the owner are killed (SIGKILL) and
//! the database restarts, and the table ends equal to the upstream's final state; and each error
//! the sink meets (a refused login, a missing database, a row larger than the server takes, a
//! server gone) shows as the changefeed's error with the server's message, and the changefeed
//! resumes once its cause is gone; and a sink over TLS (`ssl-ca`) whose CA file is missing at
//! first (docs/security.md, "TLS to the sinks").

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cdc_etcd::{EtcdClient, GetOptions};
use cdc_sink::testing::MariaDb;
use serde_json::{Value, json};
use sqlx::Row as _;
use sqlx::mysql::MySqlPool;

use super::{Cluster, Faults, SETTLE, checkpoint, store_revision};
use crate::support::wait_for;

const PREFIX: &str = "/my/";
const KEYS: usize = 1_000;
const CHANGES: usize = 50_000;
/// Writers running at once, each on its own share of the keys (so each key's changes are
/// written by one writer, in order).
const WRITERS: usize = 8;

fn key(i: usize) -> String {
    format!("{PREFIX}{i:04}")
}

/// Keys with their values and revisions.
type State = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// Writes `CHANGES` puts and deletes over `KEYS` keys: writer `w` owns the keys `i` with
/// `i % WRITERS == w` and changes them in a reproducible pseudo-random order, one delete for
/// every five changes.
async fn write_changes(client: &EtcdClient) -> Result<()> {
    let writers = (0..WRITERS).map(|w| {
        let client = client.clone();
        async move {
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1);
            for n in 0..CHANGES / WRITERS {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = w + WRITERS * usize::try_from(state % (KEYS / WRITERS) as u64)?;
                if n % 5 == 4 {
                    client.delete(key(i), false).await?;
                } else {
                    client.put(key(i), format!("w{w}-n{n}"), 0).await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(writers).await?;
    Ok(())
}

/// The keys under `prefix` upstream, with their values and mod revisions.
async fn upstream(client: &EtcdClient, prefix: &str) -> Result<State> {
    let response = client.get(prefix, GetOptions::prefix()).await?;
    response
        .kvs
        .into_iter()
        .map(|kv| Ok((kv.key, (kv.value, u64::try_from(kv.mod_revision)?))))
        .collect()
}

/// The rows of `table` that hold a value, and the keys of its tombstones.
async fn table(pool: &MySqlPool, table: &str) -> Result<(State, Vec<Vec<u8>>)> {
    let rows = sqlx::query(&format!("SELECT k, v, revision FROM `{table}`"))
        .fetch_all(pool)
        .await?;
    let mut state = State::new();
    let mut tombstones = Vec::new();
    for row in rows {
        let key: Vec<u8> = row.try_get(0)?;
        match row.try_get::<Option<Vec<u8>>, _>(1)? {
            Some(value) => {
                state.insert(key, (value, row.try_get(2)?));
            }
            None => tombstones.push(key),
        }
    }
    Ok((state, tombstones))
}

/// A changefeed from `from` over `prefix` into `sink_uri`, in `n_spans` spans.
fn changefeed(id: &str, prefix: &str, from: u64, sink_uri: &str, n_spans: usize) -> Value {
    json!({
        "changefeed_id": id,
        "start_ts": from,
        "sink_uri": sink_uri,
        "replica_config": {
            "filter": {"rules": [prefix]},
            "scheduler": {"spans_per_prefix": n_spans},
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_mysql_table_through_kills_and_a_database_restart() -> Result<()> {
    let mut cluster = Cluster::start(3, "mysql-dataplane").await?;
    let mut database = MariaDb::start().await?;
    // A sample of the keys, so that the prefix splits into three spans.
    for i in (0..KEYS).step_by(10) {
        cluster.client.put(key(i), "sample", 0).await?;
    }
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let from = store_revision(&cluster.client).await?;
    let sink_uri = database.sink_uri("kv", "&flush-interval=200ms&batch-size=128");
    cluster
        .create(owner, &changefeed("to-mysql", PREFIX, from, &sink_uri, 3))
        .await?;
    cluster.wait_replicating("to-mysql", 3, SETTLE).await?;

    // The writes run while a capture, the owner and the database fail in turn.
    let faults = Faults::start(&cluster, from, |client| async move {
        write_changes(&client).await
    });
    faults
        .kill_a_capture_then_the_owner(&mut cluster, 8_000, 18_000)
        .await?;
    faults.reach(28_000).await?;
    database.kill()?;
    faults.reach(32_000).await?;
    database.restart().await?;
    let last = faults.finish().await?;

    wait_for(Duration::from_secs(300), || async {
        (checkpoint(&cluster, "to-mysql").await? >= last).then_some(())
    })
    .await
    .with_context(|| format!("to-mysql reaches revision {last}{}", cluster.diagnostics()))?;

    let expected = upstream(&cluster.client, PREFIX).await?;
    let pool = database.pool().await?;
    let (rows, tombstones) = table(&pool, "kv").await?;
    ensure!(
        expected.len() > KEYS / 2,
        "the upstream holds {} keys",
        expected.len()
    );
    let differing: Vec<_> = expected
        .iter()
        .filter(|(key, held)| rows.get(*key) != Some(held))
        .map(|(key, held)| (String::from_utf8_lossy(key), held, rows.get(key)))
        .take(5)
        .collect();
    ensure!(
        differing.is_empty() && rows.len() == expected.len(),
        "the table ({} rows) differs from the upstream ({} keys): {differing:?}",
        rows.len(),
        expected.len()
    );
    ensure!(
        tombstones.iter().all(|key| !expected.contains_key(key)),
        "a tombstone of a key that exists"
    );
    ensure!(!tombstones.is_empty(), "deleted keys leave tombstones");
    Ok(())
}

/// Waits until changefeed `id` shows an error whose message contains `needle`; returns it.
pub(super) async fn wait_error(cluster: &Cluster, id: &str, needle: &str) -> Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    wait_for(Duration::from_secs(120), || async {
        let detail = cluster.changefeed(id).await?;
        *last.lock().ok()? = detail.clone();
        let message = detail["error"]["message"].as_str()?;
        message.contains(needle).then(|| detail["error"].clone())
    })
    .await
    .with_context(|| {
        format!(
            "changefeed {id} shows an error with {needle:?}; last {}{}",
            last.lock().map(|last| last.to_string()).unwrap_or_default(),
            cluster.diagnostics()
        )
    })
}

/// Waits until changefeed `id` has replicated up to the upstream's current revision.
pub(super) async fn wait_caught_up(cluster: &Cluster, id: &str) -> Result<()> {
    let last = store_revision(&cluster.client).await?;
    wait_for(Duration::from_secs(180), || async {
        (checkpoint(cluster, id).await? >= last).then_some(())
    })
    .await
    .with_context(|| format!("{id} reaches revision {last}{}", cluster.diagnostics()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_errors_show_on_the_changefeed_which_resumes_once_they_are_fixed() -> Result<()> {
    let cluster = Cluster::start(1, "mysql-errors").await?;
    let mut database = MariaDb::start().await?;
    let admin = database.pool().await?;
    let address = database.address();
    // Rows up to 256 KiB in a packet.
    sqlx::query("SET GLOBAL max_allowed_packet = 262144")
        .execute(&admin)
        .await?;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let from = store_revision(&cluster.client).await?;
    let cases = [
        // A user that does not exist yet.
        (
            "login",
            "/login/",
            format!("mysql://writer:secret@{address}/cdc?table=login_kv&flush-interval=200ms"),
            "Access denied",
        ),
        // A database that does not exist yet.
        (
            "database",
            "/database/",
            format!("mysql://cdc:cdc@{address}/later?table=kv&flush-interval=200ms"),
            "Unknown database",
        ),
        // A value larger than the server's packets.
        (
            "large",
            "/large/",
            database.sink_uri("large_kv", "&flush-interval=200ms"),
            "max_allowed_packet",
        ),
    ];
    for (id, prefix, sink_uri, _) in &cases {
        cluster
            .create(owner, &changefeed(id, prefix, from, sink_uri, 1))
            .await?;
    }
    cluster.client.put("/login/a", "a", 0).await?;
    cluster.client.put("/database/a", "a", 0).await?;
    cluster
        .client
        .put("/large/a", vec![b'x'; 600 << 10], 0)
        .await?;
    for (id, _, _, needle) in &cases {
        let error = wait_error(&cluster, id, needle).await?;
        ensure!(
            error["code"] == "CDC:ErrMySQLTxnError",
            "{id}: the code of {error}"
        );
    }

    // The causes go away: the changefeeds resume and catch up.
    sqlx::query("CREATE USER 'writer'@'%' IDENTIFIED BY 'secret'")
        .execute(&admin)
        .await?;
    sqlx::query("GRANT ALL PRIVILEGES ON cdc.* TO 'writer'@'%'")
        .execute(&admin)
        .await?;
    sqlx::query("CREATE DATABASE later").execute(&admin).await?;
    sqlx::query("SET GLOBAL max_allowed_packet = 67108864")
        .execute(&admin)
        .await?;
    for (id, _, _, _) in &cases {
        wait_caught_up(&cluster, id).await?;
    }
    let (login, _) = table(&admin, "login_kv").await?;
    ensure!(login.contains_key(&b"/login/a"[..]), "{login:?}");
    let (large, _) = table(&admin, "large_kv").await?;
    ensure!(
        large.get(&b"/large/a"[..]).map(|(value, _)| value.len()) == Some(600 << 10),
        "the large value"
    );
    let later: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM later.kv WHERE v IS NOT NULL")
        .fetch_one(&admin)
        .await?;
    ensure!(later == 1, "later.kv holds {later} rows");

    // The server goes away: the error names it; it comes back and the changefeed catches up.
    wait_for(SETTLE, || async {
        let detail = cluster.changefeed("login").await?;
        detail["error"].is_null().then_some(())
    })
    .await
    .context("the login error clears once the changefeed made progress")?;
    admin.close().await;
    database.kill()?;
    cluster.client.put("/login/b", "b", 0).await?;
    let error = wait_error(&cluster, "login", &address).await?;
    ensure!(
        error["code"] == "CDC:ErrMySQLTxnError",
        "the code of {error}"
    );
    database.restart().await?;
    wait_caught_up(&cluster, "login").await?;
    let admin = database.pool().await?;
    let (login, _) = table(&admin, "login_kv").await?;
    ensure!(
        login
            .get(&b"/login/b"[..])
            .map(|(value, _)| value.as_slice())
            == Some(&b"b"[..]),
        "{login:?}"
    );
    Ok(())
}

/// A throwaway CA (PEM) and a server certificate for 127.0.0.1 signed by it, with its key.
fn tls_files(dir: &std::path::Path) -> Result<cdc_sink::testing::TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    let files = cdc_sink::testing::TlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server-key.pem"),
        client: None,
    };
    std::fs::write(&files.ca_file, ca.pem())?;
    std::fs::write(&files.cert_file, cert.pem())?;
    std::fs::write(&files.key_file, key.serialize_pem())?;
    Ok(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tls_file_shows_on_the_changefeed_which_resumes_once_it_is_there() -> Result<()> {
    let cluster = Cluster::start(1, "mysql-tls").await?;
    let dir = tempfile::tempdir()?;
    let files = tls_files(dir.path())?;
    let database = MariaDb::start_tls(files.clone()).await?;
    let (owner, _) = cluster.wait_owner(SETTLE).await?;
    let from = store_revision(&cluster.client).await?;
    // The CA is not there yet.
    let ca = dir.path().join("sink-ca.pem");
    let sink_uri = database.sink_uri(
        "tls_kv",
        &format!("&flush-interval=200ms&ssl-ca={}", ca.display()),
    );
    cluster
        .create(owner, &changefeed("tls", "/tls/", from, &sink_uri, 1))
        .await?;
    cluster.client.put("/tls/a", "a", 0).await?;
    let error = wait_error(&cluster, "tls", &ca.display().to_string()).await?;
    ensure!(
        error["code"] == "CDC:ErrSinkURIInvalid"
            && error["message"]
                .as_str()
                .is_some_and(|message| message.contains("\"ssl-ca\"")),
        "the error of {error}"
    );

    // The file appears: the changefeed resumes over TLS (the server takes nothing else).
    std::fs::copy(&files.ca_file, &ca)?;
    wait_caught_up(&cluster, "tls").await?;
    let admin = database.pool().await?;
    let (rows, _) = table(&admin, "tls_kv").await?;
    ensure!(
        rows.get(&b"/tls/a"[..]).map(|(value, _)| value.as_slice()) == Some(&b"a"[..]),
        "{rows:?}"
    );
    Ok(())
}
