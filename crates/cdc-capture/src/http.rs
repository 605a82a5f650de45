//! The HTTP API on the capture's port: `/status`, `/api/v2/...`, TiCDC's v1 routes (`v1`),
//! `/debug/info`, `/metrics`. Requests only the owner can serve are forwarded to the owner by
//! other captures (`forward`); the changefeed, processor and drain endpoints are served by the
//! owner's [`OwnerApi`]. Until the capture is ready, every `/api/v2` route answers 503
//! `CDC:ErrServerIsNotReady` (TiCDC's `CheckServerReadyMiddleware`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use cdc_reactor::{ApiRequest, ApiResponse, OwnerApi};
use serde::Serialize;
use serde_json::json;

use crate::capture::Capture;
use crate::error::Error;
use crate::version::{BUILD_TS, GIT_HASH, VERSION};

mod forward;
pub(crate) mod log;
mod v1;

use forward::forward_to_owner;
pub use forward::{FORWARD_HEADER, FORWARD_TIMES_HEADER, MAX_FORWARD_TIMES};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the owner may take to answer one API request (a job waits for the owner's next
/// tick); below the forwarding timeout, so a forwarded request gets the owner's answer.
const OWNER_API_TIMEOUT: Duration = Duration::from_secs(8);
/// Where the owner's API starts.
const API_V2: &str = "/api/v2";

#[derive(Clone)]
struct Api {
    capture: Arc<Capture>,
    http: reqwest::Client,
}

/// The routes, sharing `capture`.
pub fn router(capture: Arc<Capture>) -> Router {
    let http = crate::tls::forwarding_client(capture.tls(), FORWARD_TIMEOUT)
        .expect("a client of a provider with the default TLS versions builds");
    let api = Api { capture, http };
    // Every route goes above the ready gate, which covers only the routes added before it.
    Router::new()
        .route("/status", get(status))
        .route("/api/v2/status", get(status))
        .route("/api/v2/health", get(health))
        .route("/api/v2/captures", get(captures))
        .route("/api/v2/owner/resign", post(resign))
        // TiCDC's drain: the owner moves the capture's spans away.
        .route("/api/v2/captures/{id}/drain", post(owner_api))
        .route("/api/v2/changefeeds", any(owner_api))
        .route("/api/v2/changefeeds/{*rest}", any(owner_api))
        .route("/api/v2/processors", any(owner_api))
        .route("/api/v2/processors/{*rest}", any(owner_api))
        .route("/api/v2/log", post(log::set_log_level))
        .merge(v1::routes())
        .route("/debug/info", get(debug_info))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            ready_gate,
        ))
        .with_state(api)
}

/// TiCDC's `CheckServerReadyMiddleware` on the `/api/v2` routes: 503
/// `CDC:ErrServerIsNotReady` until the capture has passed the meta-version gate.
async fn ready_gate(State(api): State<Api>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with(API_V2) && !api.capture.is_ready() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &Error::ServerNotReady);
    }
    next.run(request).await
}

/// TiCDC's `model.ServerStatus`, plus the build time.
#[derive(Serialize)]
struct ServerStatus {
    version: &'static str,
    git_hash: &'static str,
    id: String,
    pid: u32,
    is_owner: bool,
    liveness: i32,
    cluster_id: String,
    build_ts: &'static str,
}

fn server_status(api: &Api) -> ServerStatus {
    let capture = &api.capture;
    ServerStatus {
        version: VERSION,
        git_hash: GIT_HASH,
        id: capture.info().map(|info| info.id).unwrap_or_default(),
        pid: std::process::id(),
        is_owner: capture.is_owner(),
        liveness: capture.liveness().as_i32(),
        cluster_id: capture.config().cluster_id.clone(),
        build_ts: BUILD_TS,
    }
}

async fn status(State(api): State<Api>) -> Response {
    axum::Json(server_status(&api)).into_response()
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

/// A request only the owner serves (changefeeds, processors, drains): handed to the owner's
/// [`OwnerApi`] when this capture is owner, else forwarded to the owner (TiCDC's
/// `ForwardToOwnerMiddleware`).
async fn owner_api(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(owner) = api.capture.owner() else {
        let path = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |path| path.as_str().to_owned());
        return forward_to_owner(&api, method, &path, &headers, body).await;
    };
    let Some(owner_api) = owner.api() else {
        return api_response(unavailable("the owner serves no changefeed API"));
    };
    let request = api_request(&method, &uri, body);
    api_response(serve_owner_api(owner_api.as_ref(), request, OWNER_API_TIMEOUT).await)
}

/// The request as the owner's API takes it: the path below `/api/v2`, the query apart.
fn api_request(method: &Method, uri: &Uri, body: Bytes) -> ApiRequest {
    ApiRequest {
        method: method.as_str().to_owned(),
        path: uri
            .path()
            .strip_prefix(API_V2)
            .unwrap_or(uri.path())
            .to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        body,
    }
}

/// The owner's answer, or 503 when it does not come in time (the owner stopping, or its
/// worker stuck on etcd).
async fn serve_owner_api(
    owner_api: &dyn OwnerApi,
    request: ApiRequest,
    within: Duration,
) -> ApiResponse {
    match tokio::time::timeout(within, owner_api.serve(request)).await {
        Ok(answer) => answer,
        Err(_) => unavailable(&format!("the owner did not answer within {within:?}")),
    }
}

fn unavailable(message: &str) -> ApiResponse {
    ApiResponse::error(503, "CDC:ErrOwnerUnknown", message)
}

fn api_response(answer: ApiResponse) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(answer.body)).into_response()
}

async fn debug_info(State(api): State<Api>) -> Response {
    let mut out = String::new();
    api.capture.write_debug_info(&mut out);
    out.into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    let metrics = api.capture.metrics();
    if let Some((server, clients)) = api.capture.p2p_metrics() {
        metrics.set_p2p(&server, &clients);
        if let Ok(info) = api.capture.info() {
            metrics.fold_p2p(&info.id, &server, &clients);
        }
    }
    match api.capture.status_provider() {
        Some(controller) => {
            let changefeeds = api
                .capture
                .owner()
                .map(|owner| owner.changefeed_progress())
                .unwrap_or_default();
            metrics.set_owner_gauges(controller.captures().len(), changefeeds);
        }
        None => metrics.clear_owner_gauges(),
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;

    /// Answers with the request it got, or never.
    struct EchoApi {
        hang: bool,
    }

    impl OwnerApi for EchoApi {
        fn serve(&self, request: ApiRequest) -> BoxFuture<'_, ApiResponse> {
            Box::pin(async move {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                ApiResponse {
                    status: 202,
                    body: json!({
                        "method": request.method,
                        "path": request.path,
                        "query": request.query,
                        "body": String::from_utf8_lossy(&request.body),
                    }),
                }
            })
        }
    }

    #[test]
    fn the_owner_gets_the_path_below_api_v2_and_the_query_apart() {
        let uri: Uri = "/api/v2/processors/cf1/capture-1?namespace=ns"
            .parse()
            .unwrap();
        let request = api_request(&Method::GET, &uri, Bytes::from_static(b"{}"));
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/processors/cf1/capture-1");
        assert_eq!(request.query, "namespace=ns");
        assert_eq!(&request.body[..], b"{}");
        let uri: Uri = "/api/v2/changefeeds".parse().unwrap();
        let request = api_request(&Method::POST, &uri, Bytes::new());
        assert_eq!(
            (request.path.as_str(), request.query.as_str()),
            ("/changefeeds", "")
        );
    }

    #[tokio::test]
    async fn the_owner_s_answer_keeps_its_status_and_body() {
        let uri: Uri = "/api/v2/captures/c1/drain".parse().unwrap();
        let request = api_request(&Method::POST, &uri, Bytes::new());
        let answer = serve_owner_api(&EchoApi { hang: false }, request, OWNER_API_TIMEOUT).await;
        assert_eq!(answer.status, 202);
        assert_eq!(answer.body["path"], "/captures/c1/drain");
        let response = api_response(answer);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn an_owner_that_does_not_answer_is_unavailable() {
        let uri: Uri = "/api/v2/changefeeds".parse().unwrap();
        let request = api_request(&Method::GET, &uri, Bytes::new());
        let within = Duration::from_millis(10);
        let answer = serve_owner_api(&EchoApi { hang: true }, request, within).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body["error_code"], "CDC:ErrOwnerUnknown");
    }
}
