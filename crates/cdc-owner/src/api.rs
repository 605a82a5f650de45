//! The changefeed HTTP API's pure half: routes, request bodies and their validation, TiCDC's
//! error codes, and the answers in TiCDC's API v2 shapes (`cdc/api/v2/model.go` in
//! pingcap/tiflow). The owner runs the IO (upstream revisions, key listings) and the state.

use std::collections::BTreeMap;

use cdc_model::{
    CaptureId, ChangeFeedId, ChangeFeedInfo, DEFAULT_NAMESPACE, FeedState, RunningError,
    UpstreamInfo, validate_changefeed_id, validate_namespace,
};
use cdc_scheduler::{SpanId, SpanView};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use cdc_scheduler::replica::{ReplicaSpec, decode_base64, encode_base64};
use cdc_scheduler::split::{MAX_SPANS_PER_PREFIX, PrefixProblem, check_prefixes};

/// An API error: the HTTP status and TiCDC's `{"error_msg", "error_code"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// TiCDC's error code, such as `CDC:ErrAPIInvalidParam`.
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// 400 `CDC:ErrAPIInvalidParam`.
    pub fn invalid_param(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code: "CDC:ErrAPIInvalidParam",
            message: message.into(),
        }
    }

    /// 404 `CDC:ErrChangeFeedNotExists`.
    pub fn changefeed_not_exists(changefeed: &ChangeFeedId) -> ApiError {
        ApiError {
            status: 404,
            code: "CDC:ErrChangeFeedNotExists",
            message: format!("changefeed not exists, {changefeed}"),
        }
    }

    /// 409 `CDC:ErrChangeFeedAlreadyExists`.
    pub fn changefeed_already_exists(changefeed: &ChangeFeedId) -> ApiError {
        ApiError {
            status: 409,
            code: "CDC:ErrChangeFeedAlreadyExists",
            message: format!("changefeed already exists, {changefeed}"),
        }
    }

    /// 400 `CDC:ErrCaptureNotExist`: TiCDC answers an unknown capture as a bad request
    /// (`cdc/api/util.go` in pingcap/tiflow lists it among the HTTP bad-request errors).
    pub fn capture_not_exists(capture_id: &str) -> ApiError {
        ApiError {
            status: 400,
            code: "CDC:ErrCaptureNotExist",
            message: format!("capture not exists, {capture_id}"),
        }
    }

    /// 400 `CDC:ErrChangefeedUpdateRefused`.
    pub fn update_refused(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code: "CDC:ErrChangefeedUpdateRefused",
            message: message.into(),
        }
    }

    /// 400 `CDC:ErrStartTsBeforeGC`: the revision was compacted away.
    pub fn compacted(field: &str, revision: u64, compacted: i64) -> ApiError {
        ApiError {
            status: 400,
            code: "CDC:ErrStartTsBeforeGC",
            message: format!(
                "{field} {revision} is compacted on the upstream (compact revision {compacted})"
            ),
        }
    }

    /// 503 `CDC:ErrOwnerNotFound`: the owner is stopping or its term ended.
    pub fn owner_gone() -> ApiError {
        ApiError {
            status: 503,
            code: "CDC:ErrOwnerNotFound",
            message: "the owner is stopping, retry on the new owner".to_owned(),
        }
    }

    /// 500 `CDC:ErrInternalServerError` with `message`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            code: "CDC:ErrInternalServerError",
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error_msg": self.message, "error_code": self.code})
    }
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /changefeeds`.
    ListChangefeeds,
    /// `POST /changefeeds`.
    CreateChangefeed,
    /// `GET /changefeeds/{id}`.
    GetChangefeed(String),
    /// `PUT /changefeeds/{id}`.
    UpdateChangefeed(String),
    /// `DELETE /changefeeds/{id}`.
    RemoveChangefeed(String),
    /// `POST /changefeeds/{id}/pause`.
    PauseChangefeed(String),
    /// `POST /changefeeds/{id}/resume`.
    ResumeChangefeed(String),
    /// `GET /processors`.
    ListProcessors,
    /// `GET /processors/{changefeed}/{capture}`.
    GetProcessor(String, String),
    /// `POST /captures/{id}/drain`.
    DrainCapture(String),
}

/// Routes a request by method and path (below `/api/v2`).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|segment| percent_decode(segment, false))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match (method, segments.as_slice()) {
        ("GET", ["changefeeds"]) => Route::ListChangefeeds,
        ("POST", ["changefeeds"]) => Route::CreateChangefeed,
        ("GET", ["changefeeds", id]) => Route::GetChangefeed((*id).to_owned()),
        ("PUT", ["changefeeds", id]) => Route::UpdateChangefeed((*id).to_owned()),
        ("DELETE", ["changefeeds", id]) => Route::RemoveChangefeed((*id).to_owned()),
        ("POST", ["changefeeds", id, "pause"]) => Route::PauseChangefeed((*id).to_owned()),
        ("POST", ["changefeeds", id, "resume"]) => Route::ResumeChangefeed((*id).to_owned()),
        ("GET", ["processors"]) => Route::ListProcessors,
        ("GET", ["processors", changefeed, capture]) => {
            Route::GetProcessor((*changefeed).to_owned(), (*capture).to_owned())
        }
        ("POST", ["captures", id, "drain"]) => Route::DrainCapture((*id).to_owned()),
        _ => {
            return Err(ApiError {
                status: 404,
                code: "CDC:ErrAPIInvalidParam",
                message: format!("no such API: {method} {path}"),
            });
        }
    };
    Ok(route)
}

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` (queries); invalid escapes
/// stay as they are.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query parameters, decoded; a repeated name keeps its last value.
pub fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (percent_decode(name, true), percent_decode(value, true)),
            None => (percent_decode(pair, true), String::new()),
        })
        .collect()
}

/// The changefeed named by a path segment and the `namespace` query parameter (default
/// `default`), validated.
pub fn changefeed_id(id: &str, query: &BTreeMap<String, String>) -> Result<ChangeFeedId, ApiError> {
    let namespace = query
        .get("namespace")
        .filter(|namespace| !namespace.is_empty())
        .map_or(DEFAULT_NAMESPACE, String::as_str);
    validate_namespace(namespace)
        .map_err(|_| ApiError::invalid_param(format!("invalid namespace {namespace:?}")))?;
    validate_changefeed_id(id)
        .map_err(|_| ApiError::invalid_param(format!("invalid changefeed_id {id:?}")))?;
    Ok(ChangeFeedId::new(namespace, id))
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid_param(format!("invalid request body: {err}")))
}

/// The `replica_config` of a request body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfigBody {
    /// The prefixes.
    #[serde(default)]
    pub filter: Option<FilterBody>,
    /// The span count.
    #[serde(default)]
    pub scheduler: Option<SchedulerBody>,
    /// The changefeed's memory quota in bytes (TiCDC's `memory_quota`, default 1 GiB).
    #[serde(default)]
    pub memory_quota: Option<u64>,
}

/// `replica_config.filter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    /// UTF-8 key prefixes.
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    /// Key prefixes in base64.
    #[serde(default)]
    pub rules_base64: Option<Vec<String>>,
}

/// `replica_config.scheduler`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerBody {
    /// Spans per prefix.
    #[serde(default)]
    pub spans_per_prefix: Option<u32>,
}

/// The body of `POST /changefeeds` (TiCDC's `ChangefeedConfig`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    changefeed_id: Option<String>,
    #[serde(default)]
    start_ts: u64,
    #[serde(default)]
    target_ts: u64,
    #[serde(default)]
    sink_uri: String,
    #[serde(default)]
    replica_config: Option<ReplicaConfigBody>,
    #[serde(default)]
    pd_addrs: Option<Vec<String>>,
    #[serde(default)]
    ca_path: Option<String>,
    #[serde(default)]
    cert_path: Option<String>,
    #[serde(default)]
    key_path: Option<String>,
    #[serde(default)]
    cert_allowed_cn: Option<Vec<String>>,
}

/// A validated create request; the owner resolves the upstream, the start revision and the
/// split keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePlan {
    /// The changefeed.
    pub id: ChangeFeedId,
    /// The start revision; 0 = the upstream's current one.
    pub start_ts: u64,
    /// The target revision; 0 = none.
    pub target_ts: u64,
    /// The sink URI, parsed once.
    pub sink_uri: String,
    /// The prefixes and span count (no split keys yet).
    pub spec: ReplicaSpec,
    /// Another upstream: its endpoints (`pd-endpoints`) and TLS files, with ID 0 until the
    /// owner reads its cluster ID; `None` for the cluster's own etcd.
    pub upstream: Option<UpstreamInfo>,
}

fn spec_from_body(
    config: Option<ReplicaConfigBody>,
    base: Option<&ReplicaSpec>,
) -> Result<ReplicaSpec, ApiError> {
    let config = config.unwrap_or_default();
    let filter = config.filter.unwrap_or_default();
    let mut spec = base.cloned().unwrap_or(ReplicaSpec {
        spans_per_prefix: 1,
        ..ReplicaSpec::default()
    });
    let mut changed = false;
    if filter.rules.is_some() || filter.rules_base64.is_some() {
        spec.rules = filter.rules.unwrap_or_default();
        spec.rules_base64 = filter
            .rules_base64
            .unwrap_or_default()
            .iter()
            .map(|text| {
                decode_base64(text).ok_or_else(|| {
                    ApiError::invalid_param(format!(
                        "replica_config.filter.rules_base64: {text:?} is not base64"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        changed = base.is_none_or(|base| base.prefixes() != spec.prefixes());
    }
    if let Some(n) = config.scheduler.and_then(|s| s.spans_per_prefix) {
        if n == 0 || n > MAX_SPANS_PER_PREFIX {
            return Err(ApiError::invalid_param(format!(
                "replica_config.scheduler.spans_per_prefix must be in 1..={MAX_SPANS_PER_PREFIX}, got {n}"
            )));
        }
        if n != spec.spans_per_prefix {
            spec.spans_per_prefix = n;
            changed = true;
        }
    }
    if let Some(quota) = config.memory_quota {
        if quota == 0 {
            return Err(ApiError::invalid_param(
                "replica_config.memory_quota must be larger than 0",
            ));
        }
        spec.memory_quota = Some(quota);
    }
    if changed {
        spec.split_keys.clear();
        if let Some(base) = base {
            // The new spans get IDs no former span had.
            spec.span_id_base = base.span_id_base.saturating_add(base.span_count());
        }
    }
    match check_prefixes(&spec.prefixes()) {
        Ok(()) => Ok(spec),
        Err(PrefixProblem::Empty) => Err(ApiError::invalid_param(
            "replica_config.filter.rules must name at least one key prefix",
        )),
        Err(PrefixProblem::Unbounded(prefix)) => Err(ApiError::invalid_param(format!(
            "replica_config.filter.rules: prefix {} has no range end (empty or all 0xff)",
            show_key(&prefix)
        ))),
        Err(PrefixProblem::Overlap(a, b)) => Err(ApiError::invalid_param(format!(
            "replica_config.filter.rules: prefixes {} and {} overlap",
            show_key(&a),
            show_key(&b)
        ))),
    }
}

fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("base64:{}", encode_base64(key)),
    }
}

fn check_sink_uri(sink_uri: &str) -> Result<(), ApiError> {
    cdc_sink::SinkUri::parse(sink_uri)
        .map(drop)
        .map_err(|err| ApiError {
            status: 400,
            code: "CDC:ErrSinkURIInvalid",
            message: format!("sink_uri: {}", cdc_model::ErrorReport(&err)),
        })
}

/// Parses and validates a create body: id and namespace (TiCDC's rule; a missing id gets a
/// fresh UUID), the sink URI, rules non-empty and not overlapping, the target after the start.
pub fn parse_create(body: &[u8]) -> Result<CreatePlan, ApiError> {
    let body: CreateBody = parse_body(body)?;
    let namespace = body
        .namespace
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    validate_namespace(&namespace)
        .map_err(|_| ApiError::invalid_param(format!("invalid namespace {namespace:?}")))?;
    let id = body
        .changefeed_id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(cdc_model::new_capture_id);
    validate_changefeed_id(&id).map_err(|_| {
        ApiError::invalid_param(format!(
            "invalid changefeed_id {id:?}: it must match ^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$ and be at most 128 bytes"
        ))
    })?;
    if body.sink_uri.is_empty() {
        return Err(ApiError::invalid_param("sink_uri is empty"));
    }
    check_sink_uri(&body.sink_uri)?;
    if body.target_ts > 0 && body.start_ts > 0 && body.target_ts <= body.start_ts {
        return Err(ApiError::invalid_param(format!(
            "target_ts {} must be larger than start_ts {}",
            body.target_ts, body.start_ts
        )));
    }
    let spec = spec_from_body(body.replica_config, None)?;
    let pd_addrs = body
        .pd_addrs
        .map(|addrs| {
            addrs
                .into_iter()
                .map(|addr| addr.trim().to_owned())
                .filter(|addr| !addr.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|addrs| !addrs.is_empty());
    // Without `pd_addrs` the changefeed reads the cluster's own etcd with the capture's
    // credentials, and the TLS fields are ignored, as in TiCDC.
    let upstream = match pd_addrs {
        None => None,
        Some(addrs) => Some(upstream_from_body(
            addrs,
            body.ca_path.unwrap_or_default(),
            body.cert_path.unwrap_or_default(),
            body.key_path.unwrap_or_default(),
            body.cert_allowed_cn,
        )?),
    };
    Ok(CreatePlan {
        id: ChangeFeedId::new(namespace, id),
        start_ts: body.start_ts,
        target_ts: body.target_ts,
        sink_uri: body.sink_uri,
        spec,
        upstream,
    })
}

/// Another upstream from a create request: `https://` endpoints need `ca_path`, a CA needs
/// `https://` endpoints, and a client certificate needs its key (the files are read when the
/// owner connects).
fn upstream_from_body(
    addrs: Vec<String>,
    ca_path: String,
    cert_path: String,
    key_path: String,
    cert_allowed_cn: Option<Vec<String>>,
) -> Result<UpstreamInfo, ApiError> {
    for addr in &addrs {
        let https = addr.to_ascii_lowercase().starts_with("https://");
        if https && ca_path.is_empty() {
            return Err(ApiError::invalid_param(format!(
                "pd_addrs {addr} is https:// but ca_path is empty"
            )));
        }
        if !https && !ca_path.is_empty() {
            return Err(ApiError::invalid_param(format!(
                "ca_path is set but pd_addrs {addr} is not https://"
            )));
        }
    }
    if cert_path.is_empty() != key_path.is_empty() {
        return Err(ApiError::invalid_param(
            "cert_path and key_path go together",
        ));
    }
    Ok(UpstreamInfo {
        id: 0,
        pd_endpoints: addrs.join(","),
        key_path,
        cert_path,
        ca_path,
        cert_allowed_cn: cert_allowed_cn.filter(|names| !names.is_empty()),
    })
}

/// The body of `PUT /changefeeds/{id}`: what may change while the changefeed is stopped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    sink_uri: Option<String>,
    #[serde(default)]
    target_ts: Option<u64>,
    #[serde(default)]
    replica_config: Option<ReplicaConfigBody>,
}

/// A validated update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    /// The new sink URI.
    pub sink_uri: Option<String>,
    /// The new target (0 = none).
    pub target_ts: Option<u64>,
    /// The new spec; split keys still to choose when its list is empty and more than one span
    /// per prefix is asked.
    pub spec: Option<ReplicaSpec>,
}

/// Parses and validates an update body against the current info.
pub fn parse_update(body: &[u8], info: &ChangeFeedInfo) -> Result<UpdatePlan, ApiError> {
    let body: UpdateBody = parse_body(body)?;
    if let Some(sink_uri) = &body.sink_uri {
        check_sink_uri(sink_uri)?;
    }
    if let Some(target_ts) = body.target_ts
        && target_ts > 0
        && target_ts <= info.start_ts
    {
        return Err(ApiError::invalid_param(format!(
            "target_ts {target_ts} must be larger than start_ts {}",
            info.start_ts
        )));
    }
    let spec = match body.replica_config {
        None => None,
        Some(config) => {
            let current = ReplicaSpec::from_config(info.config.as_ref()).map_err(|reason| {
                ApiError::internal(format!("the stored config is invalid: {reason}"))
            })?;
            let spec = spec_from_body(Some(config), Some(&current))?;
            (spec != current).then_some(spec)
        }
    };
    Ok(UpdatePlan {
        sink_uri: body.sink_uri,
        target_ts: body.target_ts,
        spec,
    })
}

/// The body of `POST .../resume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    #[serde(default)]
    overwrite_checkpoint_ts: u64,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "TiCDC's upstream field: accepted, the upstream stays"
    )]
    pd_addrs: Option<Vec<String>>,
    #[serde(default)]
    #[allow(dead_code, reason = "TiCDC's TLS field: accepted, not used")]
    ca_path: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "TiCDC's TLS field: accepted, not used")]
    cert_path: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "TiCDC's TLS field: accepted, not used")]
    key_path: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "TiCDC's TLS field: accepted, not used")]
    cert_allowed_cn: Option<Vec<String>>,
}

/// The checkpoint a resume asks to restart from, if any.
pub fn parse_resume(body: &[u8]) -> Result<Option<u64>, ApiError> {
    let body: ResumeBody = parse_body(body)?;
    Ok((body.overwrite_checkpoint_ts > 0).then_some(body.overwrite_checkpoint_ts))
}

/// One changefeed as the answers show it.
#[derive(Debug, Clone)]
pub struct FeedView<'a> {
    /// The stored info.
    pub info: &'a ChangeFeedInfo,
    /// The state, from the same source as `info` (the stored one), so that the state and the
    /// error an answer shows agree.
    pub state: &'a FeedState,
    /// The checkpoint.
    pub checkpoint: u64,
    /// The resolved revision.
    pub resolved: u64,
    /// When the owner saw the checkpoint move last.
    pub checkpoint_time: Option<DateTime<Utc>>,
    /// The spans as the scheduler sees them.
    pub spans: Vec<SpanView>,
    /// The spans by capture that replicates them.
    pub task_status: BTreeMap<CaptureId, Vec<SpanId>>,
}

/// TiCDC's `JSONTime`: `2006-01-02 15:04:05.000`.
fn json_time(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(String::new, |time| {
        time.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
    })
}

fn api_error(error: Option<&RunningError>) -> Value {
    match error {
        None => Value::Null,
        Some(error) => json!({
            "time": error.time.to_rfc3339_nano().ok(),
            "addr": error.addr,
            "code": error.code,
            "message": error.message,
        }),
    }
}

/// An item of `GET /changefeeds` (TiCDC's `ChangefeedCommonInfo`).
pub fn list_item(view: &FeedView<'_>) -> Value {
    json!({
        "upstream_id": view.info.upstream_id,
        "namespace": view.info.namespace,
        "id": view.info.changefeed_id,
        "state": view.state.as_str(),
        "checkpoint_tso": view.checkpoint,
        "checkpoint_time": json_time(view.checkpoint_time),
        "error": api_error(view.info.error.as_ref()),
    })
}

/// The answer of `GET /changefeeds/{id}` (TiCDC's `ChangeFeedInfo` answer) plus its spans.
pub fn detail(view: &FeedView<'_>) -> Value {
    let info = view.info;
    let config = match ReplicaSpec::from_config(info.config.as_ref()) {
        Ok(spec) => json!({
            "filter": spec.filter_json(),
            "scheduler": {"spans_per_prefix": spec.spans_per_prefix},
            "memory_quota": spec.memory_quota(),
        }),
        Err(_) => Value::Null,
    };
    let task_status: Vec<Value> = view
        .task_status
        .iter()
        .map(|(capture_id, spans)| {
            let ids: Vec<u64> = spans.iter().map(|span| span.0).collect();
            json!({"capture_id": capture_id, "table_ids": ids})
        })
        .collect();
    let spans: Vec<Value> = view
        .spans
        .iter()
        .map(|span| {
            json!({
                "span_id": span.span.span_id.0,
                "start_key": show_key_json(&span.span.start_key),
                "end_key": show_key_json(&span.span.end_key),
                "capture_id": span.capture_id,
                "state": span.state.as_str(),
                "checkpoint_ts": span.checkpoint.checkpoint,
            })
        })
        .collect();
    json!({
        "upstream_id": info.upstream_id,
        "namespace": info.namespace,
        "id": info.changefeed_id,
        "sink_uri": info.sink_uri,
        "create_time": info.create_time.to_rfc3339_nano().ok(),
        "start_ts": info.start_ts,
        "target_ts": info.target_ts,
        "admin_job_type": info.admin_job_type.as_i64(),
        "config": config,
        "state": view.state.as_str(),
        "error": api_error(info.error.as_ref()),
        "creator_version": info.creator_version,
        "resolved_ts": view.resolved,
        "checkpoint_ts": view.checkpoint,
        "checkpoint_time": json_time(view.checkpoint_time),
        "task_status": task_status,
        "spans": spans,
    })
}

/// A key in an answer: the text when it is UTF-8, else `base64:` and its base64.
fn show_key_json(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("base64:{}", encode_base64(key)),
    }
}

#[cfg(test)]
mod tests;
