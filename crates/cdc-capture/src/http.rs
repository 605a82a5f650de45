//! The HTTP API on the capture's port: `/status`, `/api/v2/...`, `/debug/info`, `/metrics`.
//! Requests only the owner can serve are forwarded to the owner by other captures; the
//! changefeed, processor and drain endpoints are served by the owner's [`OwnerApi`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use cdc_reactor::{ApiRequest, ApiResponse, OwnerApi};
use serde::Serialize;
use serde_json::json;

use crate::capture::{Capture, GIT_HASH, VERSION};
use crate::error::Error;

/// The header that marks a forwarded request (TiCDC's name); it is never forwarded twice.
pub const FORWARD_HEADER: &str = "TiCDC-ForwardFrom";
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
    let http = crate::tls::forwarding_client(capture.config(), FORWARD_TIMEOUT)
        .expect("the configuration was validated, its certificates with it");
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
        .request(
            method,
            format!(
                "{}://{address}{path}",
                crate::tls::scheme(api.capture.config())
            ),
        )
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
