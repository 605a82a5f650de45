//! `cdc-server cli`: TiCDC's `cdc cli` verbs (`pkg/cmd/cli` in pingcap/tiflow) over the HTTP
//! API of any capture (`--server`), printing what TiCDC prints: indented JSON, and the server's
//! `error_msg` with a non-zero exit status on an error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `cdc-server cli [--server URL] VERB ...`.
#[derive(Debug, Args)]
pub(crate) struct CliArgs {
    /// The HTTP address of any capture of the cluster.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8300")]
    server: String,
    /// The CA (PEM) that signed the captures' certificates, for an `https://` server.
    #[arg(long, global = true, default_value = "")]
    ca: String,
    /// The client certificate (PEM) presented to the captures.
    #[arg(long, global = true, default_value = "")]
    cert: String,
    /// The key (PEM) of `--cert`.
    #[arg(long, global = true, default_value = "")]
    key: String,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Manage captures.
    #[command(subcommand)]
    Capture(CaptureCommand),
    /// Manage changefeeds.
    #[command(subcommand)]
    Changefeed(ChangefeedCommand),
    /// Manage processors.
    #[command(subcommand)]
    Processor(ProcessorCommand),
}

#[derive(Debug, Subcommand)]
enum CaptureCommand {
    /// List the captures of the cluster.
    List,
}

#[derive(Debug, Subcommand)]
enum ProcessorCommand {
    /// List the processors of the cluster.
    List,
}

#[derive(Debug, Args)]
struct ChangefeedId {
    /// The changefeed.
    #[arg(short = 'c', long = "changefeed-id")]
    id: String,
    /// The changefeed's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
}

#[derive(Debug, Subcommand)]
enum ChangefeedCommand {
    /// Create a changefeed.
    Create(Box<CreateArgs>),
    /// List the changefeeds.
    List {
        /// Also list the removed and finished ones.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Show one changefeed.
    Query {
        #[command(flatten)]
        id: ChangefeedId,
        /// Only the summary (TiCDC's `--simple`).
        #[arg(short = 's', long)]
        simple: bool,
    },
    /// Pause a changefeed.
    Pause(ChangefeedId),
    /// Resume a changefeed.
    Resume(ChangefeedId),
    /// Remove a changefeed.
    Remove(ChangefeedId),
    /// Update a paused changefeed.
    Update(UpdateArgs),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The changefeed's ID [default: chosen by the owner].
    #[arg(short = 'c', long = "changefeed-id")]
    id: Option<String>,
    /// The changefeed's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Where changes go (`blackhole://`, `file:///dir`, `etcd://host:port/prefix`).
    #[arg(long)]
    sink_uri: String,
    /// The revision to start from [default: now].
    #[arg(long, default_value_t = 0)]
    start_ts: u64,
    /// The revision to stop at [default: never].
    #[arg(long, default_value_t = 0)]
    target_ts: u64,
    /// TiCDC's changefeed configuration file (TOML; `[filter] rules` are the key prefixes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accepted for TiCDC's scripts: no question is asked.
    #[arg(long)]
    no_confirm: bool,
    /// Another upstream etcd to read, comma-separated [default: the cluster's own].
    #[arg(long)]
    upstream_pd: Option<String>,
    /// The CA (PEM) of the other upstream, for `https://` addresses.
    #[arg(long)]
    upstream_ca: Option<String>,
    /// The client certificate (PEM) for the other upstream.
    #[arg(long)]
    upstream_cert: Option<String>,
    /// The key (PEM) of `--upstream-cert`.
    #[arg(long)]
    upstream_key: Option<String>,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    #[command(flatten)]
    id: ChangefeedId,
    /// The new sink.
    #[arg(long)]
    sink_uri: Option<String>,
    /// The new target revision.
    #[arg(long)]
    target_ts: Option<u64>,
    /// The new changefeed configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accepted for TiCDC's scripts: no question is asked.
    #[arg(long)]
    no_confirm: bool,
}

/// TiCDC's changefeed configuration file, as far as this cluster replicates it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct ChangefeedFile {
    memory_quota: Option<u64>,
    filter: Option<FilterSection>,
    scheduler: Option<SchedulerSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct FilterSection {
    rules: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct SchedulerSection {
    spans_per_prefix: Option<u32>,
}

/// The `replica_config` of a request from a changefeed file.
fn replica_config(path: &std::path::Path) -> Result<Value> {
    let file: ChangefeedFile = figment::Figment::from(
        <figment::providers::Toml as figment::providers::Format>::file_exact(path),
    )
    .extract()
    .with_context(|| format!("read the changefeed configuration {}", path.display()))?;
    let mut config = serde_json::Map::new();
    if let Some(rules) = file.filter.and_then(|filter| filter.rules) {
        config.insert("filter".to_owned(), json!({"rules": rules}));
    }
    if let Some(spans) = file.scheduler.and_then(|s| s.spans_per_prefix) {
        config.insert("scheduler".to_owned(), json!({"spans_per_prefix": spans}));
    }
    if let Some(quota) = file.memory_quota {
        config.insert("memory_quota".to_owned(), json!(quota));
    }
    Ok(Value::Object(config))
}

/// An error answer of the server: its `error_msg`.
#[derive(Debug)]
struct ServerError(String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}/api/v2{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("read the answer to {method} {url}"))?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = value
                .get("error_msg")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{status}: {value}"), str::to_owned);
            return Err(ServerError(message).into());
        }
        Ok(value)
    }
}

fn query(id: &ChangefeedId) -> String {
    format!("{}?namespace={}", id.id, id.namespace)
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Runs one verb; the text to print on success.
async fn run_verb(args: CliArgs) -> Result<String> {
    let security = cdc_capture::SecurityConfig {
        ca_path: args.ca.clone(),
        cert_path: args.cert.clone(),
        key_path: args.key.clone(),
        ..cdc_capture::SecurityConfig::default()
    };
    let scheme = if security.is_tls_enabled() {
        "https"
    } else {
        "http"
    };
    let base = if args.server.contains("://") {
        args.server.trim_end_matches('/').to_owned()
    } else {
        format!("{scheme}://{}", args.server.trim_end_matches('/'))
    };
    let client = Client {
        http: cdc_capture::api_client(&security, REQUEST_TIMEOUT)
            .map_err(|message| anyhow::anyhow!("--ca, --cert, --key: {message}"))?,
        base,
    };
    use reqwest::Method;
    let out = match args.command {
        CliCommand::Capture(CaptureCommand::List) => {
            let answer = client.call(Method::GET, "/captures", None).await?;
            let captures: Vec<Value> = items(&answer)
                .iter()
                .map(|capture| {
                    json!({
                        "id": capture["id"],
                        "is-owner": capture["is_owner"],
                        "address": capture["address"],
                        "cluster-id": capture["cluster_id"],
                    })
                })
                .collect();
            pretty(&Value::Array(captures))
        }
        CliCommand::Processor(ProcessorCommand::List) => {
            let answer = client.call(Method::GET, "/processors", None).await?;
            pretty(&Value::Array(items(&answer)))
        }
        CliCommand::Changefeed(command) => changefeed(&client, command).await?,
    };
    Ok(out)
}

/// The `items` of a list answer (or the answer itself when it is an array).
fn items(answer: &Value) -> Vec<Value> {
    match answer {
        Value::Array(items) => items.clone(),
        _ => answer["items"].as_array().cloned().unwrap_or_default(),
    }
}

async fn changefeed(client: &Client, command: ChangefeedCommand) -> Result<String> {
    use reqwest::Method;
    Ok(match command {
        ChangefeedCommand::Create(create) => {
            let mut body = json!({
                "namespace": create.namespace,
                "sink_uri": create.sink_uri,
                "start_ts": create.start_ts,
                "target_ts": create.target_ts,
            });
            if let Some(id) = &create.id {
                body["changefeed_id"] = json!(id);
            }
            if let Some(path) = &create.config {
                body["replica_config"] = replica_config(path)?;
            }
            if let Some(addrs) = &create.upstream_pd {
                body["pd_addrs"] = json!(addrs.split(',').map(str::trim).collect::<Vec<_>>());
            }
            for (field, value) in [
                ("ca_path", &create.upstream_ca),
                ("cert_path", &create.upstream_cert),
                ("key_path", &create.upstream_key),
            ] {
                if let Some(value) = value {
                    body[field] = json!(value);
                }
            }
            let info = client
                .call(Method::POST, "/changefeeds", Some(body))
                .await?;
            let id = info["id"]
                .as_str()
                .or(create.id.as_deref())
                .unwrap_or_default();
            format!(
                "Create changefeed successfully!\nID: {id}\nInfo: {}",
                pretty(&info)
            )
        }
        ChangefeedCommand::List { all } => {
            let answer = client.call(Method::GET, "/changefeeds", None).await?;
            let feeds: Vec<Value> = items(&answer)
                .into_iter()
                // TiCDC lists the removed and finished changefeeds only with `--all`.
                .filter(|summary| {
                    all || !matches!(summary["state"].as_str(), Some("removed" | "finished"))
                })
                .map(|summary| {
                    json!({
                        "id": summary["id"],
                        "namespace": summary["namespace"],
                        "summary": summary,
                    })
                })
                .collect();
            pretty(&Value::Array(feeds))
        }
        ChangefeedCommand::Query { id, simple } => {
            let detail = client
                .call(Method::GET, &format!("/changefeeds/{}", query(&id)), None)
                .await?;
            if simple {
                pretty(&json!({
                    "upstream_id": detail["upstream_id"],
                    "namespace": detail["namespace"],
                    "id": detail["id"],
                    "state": detail["state"],
                    "checkpoint_tso": detail["checkpoint_tso"],
                    "checkpoint_time": detail["checkpoint_time"],
                    "error": detail["error"],
                }))
            } else {
                pretty(&detail)
            }
        }
        ChangefeedCommand::Pause(id) => {
            client
                .call(
                    Method::POST,
                    &format!("/changefeeds/{}/pause?namespace={}", id.id, id.namespace),
                    None,
                )
                .await?;
            String::new()
        }
        ChangefeedCommand::Resume(id) => {
            client
                .call(
                    Method::POST,
                    &format!("/changefeeds/{}/resume?namespace={}", id.id, id.namespace),
                    None,
                )
                .await?;
            String::new()
        }
        ChangefeedCommand::Remove(id) => {
            let path = format!("/changefeeds/{}", query(&id));
            let detail = client.call(Method::GET, &path, None).await?;
            client.call(Method::DELETE, &path, None).await?;
            format!(
                "Changefeed remove successfully.\nID: {}\nCheckpointTs: {}\nSinkURI: {}",
                id.id,
                detail["checkpoint_tso"],
                detail["sink_uri"].as_str().unwrap_or_default()
            )
        }
        ChangefeedCommand::Update(update) => {
            let mut body = serde_json::Map::new();
            if let Some(sink_uri) = &update.sink_uri {
                body.insert("sink_uri".to_owned(), json!(sink_uri));
            }
            if let Some(target_ts) = update.target_ts {
                body.insert("target_ts".to_owned(), json!(target_ts));
            }
            if let Some(path) = &update.config {
                body.insert("replica_config".to_owned(), replica_config(path)?);
            }
            if body.is_empty() {
                bail!("nothing to update: give --sink-uri, --target-ts or --config");
            }
            let info = client
                .call(
                    Method::PUT,
                    &format!("/changefeeds/{}", query(&update.id)),
                    Some(Value::Object(body)),
                )
                .await?;
            format!(
                "Update changefeed config successfully! \nID: {}\nInfo: {}",
                update.id.id,
                pretty(&info)
            )
        }
    })
}

/// Runs `cdc-server cli ...`: prints the answer, or the error and exits 1.
pub(crate) fn run(args: CliArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            #[allow(clippy::print_stderr, reason = "the cli's output")]
            {
                eprintln!("Error: start the runtime: {err}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_verb(args)) {
        Ok(out) => {
            if !out.is_empty() {
                #[allow(clippy::print_stdout, reason = "the cli's output")]
                {
                    println!("{out}");
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            #[allow(clippy::print_stderr, reason = "the cli's output")]
            {
                match err.downcast_ref::<ServerError>() {
                    Some(server) => eprintln!("Error: {server}"),
                    None => eprintln!("Error: {err:#}"),
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}
