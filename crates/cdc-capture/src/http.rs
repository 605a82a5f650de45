//! The HTTP API on the capture's port: `/status`, `/api/v2/...`, `/debug/info`, `/metrics`.
//! Requests only the owner can serve are forwarded to the owner by other captures.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::capture::{Capture, GIT_HASH, VERSION};
use crate::error::Error;

/// The header that marks a forwarded request (TiCDC's name); it is never forwarded twice.
pub const FORWARD_HEADER: &str = "TiCDC-ForwardFrom";
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Api {
    capture: Arc<Capture>,
    http: reqwest::Client,
}

/// The routes, sharing `capture`.
pub fn router(capture: Arc<Capture>) -> Router {
    let http = reqwest::Client::builder()
        .timeout(FORWARD_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("a client without TLS always builds");
    Router::new()
        .route("/status", get(status))
        .route("/api/v2/status", get(status))
        .route("/api/v2/health", get(health))
        .route("/api/v2/captures", get(captures))
        .route("/api/v2/owner/resign", post(resign))
        .route("/api/v2/captures/{id}/drain", post(drain))
        .route("/debug/info", get(debug_info))
        .route("/metrics", get(metrics))
        .with_state(Api { capture, http })
}

#[derive(Serialize)]
struct ServerStatus {
    version: &'static str,
    git_hash: &'static str,
    id: String,
    pid: u32,
    is_owner: bool,
    liveness: i32,
    cluster_id: String,
}

async fn status(State(api): State<Api>) -> Response {
    let capture = &api.capture;
    let id = capture.info().map(|info| info.id).unwrap_or_default();
    axum::Json(ServerStatus {
        version: VERSION,
        git_hash: GIT_HASH,
        id,
        pid: std::process::id(),
        is_owner: capture.is_owner(),
        liveness: capture.liveness().as_i32(),
        cluster_id: capture.config().cluster_id.clone(),
    })
    .into_response()
}

fn error_response(status: StatusCode, err: &Error) -> Response {
    let message = err.to_string();
    let code = message
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(code, _)| code.to_owned())
        .unwrap_or_default();
    (
        status,
        axum::Json(json!({"error_msg": message, "error_code": code})),
    )
        .into_response()
}

/// Sends the request to the owner, or answers why it cannot.
async fn forward_to_owner(
    api: &Api,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key(FORWARD_HEADER) {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &Error::NotOwner);
    }
    let owner = match api.capture.controller_capture_info().await {
        Ok(owner) => owner,
        Err(err) => return error_response(StatusCode::SERVICE_UNAVAILABLE, &err),
    };
    forward(api, method, &owner.address, path, body).await
}

async fn forward(api: &Api, method: Method, address: &str, path: &str, body: Bytes) -> Response {
    let from = api.capture.info().map(|info| info.id).unwrap_or_default();
    let sent = api
        .http
        .request(method, format!("http://{address}{path}"))
        .header(FORWARD_HEADER, from)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(source) => {
            let err = Error::Forward {
                address: address.to_owned(),
                source,
            };
            return error_response(StatusCode::BAD_GATEWAY, &err);
        }
    };
    let status = answer.status();
    match answer.bytes().await {
        Ok(bytes) => (status, [("content-type", "application/json")], bytes).into_response(),
        Err(source) => {
            let err = Error::Forward {
                address: address.to_owned(),
                source,
            };
            error_response(StatusCode::BAD_GATEWAY, &err)
        }
    }
}

async fn health(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !api.capture.is_owner() {
        return forward_to_owner(&api, Method::GET, "/api/v2/health", &headers, Bytes::new()).await;
    }
    if !api.capture.is_ready() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &Error::NotInitialized);
    }
    axum::Json(json!({})).into_response()
}

#[derive(Serialize)]
struct CaptureItem {
    id: String,
    is_owner: bool,
    address: String,
    cluster_id: String,
}

async fn captures(State(api): State<Api>, headers: HeaderMap) -> Response {
    let Some(controller) = api.capture.status_provider() else {
        return forward_to_owner(
            &api,
            Method::GET,
            "/api/v2/captures",
            &headers,
            Bytes::new(),
        )
        .await;
    };
    let owner_id = api.capture.info().map(|info| info.id).unwrap_or_default();
    let cluster_id = &api.capture.config().cluster_id;
    let items: Vec<CaptureItem> = controller
        .captures()
        .into_iter()
        .map(|info| CaptureItem {
            is_owner: info.id == owner_id,
            id: info.id,
            address: info.address,
            cluster_id: cluster_id.clone(),
        })
        .collect();
    axum::Json(json!({"total": items.len(), "items": items})).into_response()
}

async fn resign(State(api): State<Api>, headers: HeaderMap) -> Response {
    match api.capture.owner() {
        Ok(owner) => {
            owner.async_stop();
            axum::Json(json!({})).into_response()
        }
        Err(_) => {
            forward_to_owner(
                &api,
                Method::POST,
                "/api/v2/owner/resign",
                &headers,
                Bytes::new(),
            )
            .await
        }
    }
}

async fn drain(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let own_id = api.capture.info().map(|info| info.id).unwrap_or_default();
    if id == own_id {
        api.capture.drain().await;
        return axum::Json(json!({"current_table_count": 0})).into_response();
    }
    if headers.contains_key(FORWARD_HEADER) {
        let err = Error::CaptureNotExist { capture_id: id };
        return error_response(StatusCode::BAD_REQUEST, &err);
    }
    match api.capture.capture_info(&id).await {
        Ok(target) => {
            let path = format!("/api/v2/captures/{id}/drain");
            forward(&api, Method::POST, &target.address, &path, Bytes::new()).await
        }
        Err(err @ Error::CaptureNotExist { .. }) => error_response(StatusCode::BAD_REQUEST, &err),
        Err(err) => error_response(StatusCode::SERVICE_UNAVAILABLE, &err),
    }
}

async fn debug_info(State(api): State<Api>) -> Response {
    let mut out = String::new();
    api.capture.write_debug_info(&mut out);
    out.into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    if let Some((server, clients)) = api.capture.p2p_metrics() {
        api.capture.metrics().set_p2p(&server, &clients);
    }
    if let Some(controller) = api.capture.status_provider() {
        let n_captures = i64::try_from(controller.captures().len()).unwrap_or(i64::MAX);
        api.capture.metrics().captures.set(n_captures);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        api.capture.metrics().encode(),
    )
        .into_response()
}
