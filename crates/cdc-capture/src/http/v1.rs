//! TiCDC's v1 API as TiUP and older tools call it (`cdc/api/v1/api.go` and
//! `cdc/api/owner/owner.go` in pingcap/tiflow, `pkg/cluster/api/cdcapi.go` in pingcap/tiup):
//! status, health, the capture list, drain and the owner's resign, with TiCDC's status codes
//! and indented JSON.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cdc_reactor::ApiRequest;
use serde::Deserialize;
use serde_json::{Value, json};

use super::forward::forward_to_owner;
use super::{Api, OWNER_API_TIMEOUT, error_response, serve_owner_api, server_status, unavailable};

/// The v1 routes.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/health", get(health))
        .route("/api/v1/captures", get(captures))
        .route("/api/v1/captures/drain", put(drain))
        .route("/api/v1/owner/resign", post(resign))
        .route("/capture/owner/resign", post(capture_owner_resign))
}

/// `status` with `value` as Go's `json.MarshalIndent(value, "", "    ")` writes it, as gin's
/// `IndentedJSON` answers.
pub(super) fn indented(status: StatusCode, value: &Value) -> Response {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        out,
    )
        .into_response()
}

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |path| path.as_str().to_owned())
}

async fn status(State(api): State<Api>) -> Response {
    match serde_json::to_value(server_status(&api)) {
        Ok(value) => indented(StatusCode::OK, &value),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// 200 with no body when the cluster has an owner with a capture key, else 500 with the
/// lookup's error (TiCDC's v1 `Health`).
async fn health(State(api): State<Api>) -> Response {
    match api.capture.controller_capture_info().await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(err) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &err),
    }
}

/// The captures as a bare array (TiCDC's `[]model.Capture`), from the owner.
async fn captures(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(controller) = api.capture.status_provider() else {
        return forward_to_owner(&api, method, &path_of(&uri), &headers, Bytes::new()).await;
    };
    let owner_id = api.capture.info().map(|info| info.id).unwrap_or_default();
    let cluster_id = &api.capture.config().cluster_id;
    let items: Vec<Value> = controller
        .captures()
        .into_iter()
        .map(|info| {
            json!({
                "id": info.id,
                "is_owner": info.id == owner_id,
                "address": info.address,
                "cluster_id": cluster_id,
            })
        })
        .collect();
    indented(StatusCode::OK, &Value::Array(items))
}

#[derive(Deserialize)]
struct DrainRequest {
    capture_id: String,
}

/// TiCDC's v1 drain: `{"capture_id"}` in, `202 {"current_table_count"}` out, served by the
/// owner (which refuses to drain itself or an unknown capture, as the v2 drain does).
async fn drain(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(owner) = api.capture.owner() else {
        return forward_to_owner(&api, method, &path_of(&uri), &headers, body).await;
    };
    let capture_id = match serde_json::from_slice::<DrainRequest>(&body) {
        Ok(request) if !request.capture_id.is_empty() && !request.capture_id.contains('/') => {
            request.capture_id
        }
        Ok(request) => {
            return invalid_param(&format!("invalid capture_id: {:?}", request.capture_id));
        }
        Err(err) => return invalid_param(&err.to_string()),
    };
    let Some(owner_api) = owner.api() else {
        return super::api_response(unavailable("the owner serves no drain API"));
    };
    let request = ApiRequest {
        method: "POST".to_owned(),
        path: format!("/captures/{capture_id}/drain"),
        query: String::new(),
        body: Bytes::new(),
    };
    let answer = serve_owner_api(owner_api.as_ref(), request, OWNER_API_TIMEOUT).await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    indented(status, &answer.body)
}

/// 400 with TiCDC's `ErrAPIInvalidParam`.
fn invalid_param(detail: &str) -> Response {
    indented(
        StatusCode::BAD_REQUEST,
        &json!({
            "error_msg": format!("[CDC:ErrAPIInvalidParam]invalid api parameter: {detail}"),
            "error_code": "CDC:ErrAPIInvalidParam",
        }),
    )
}

/// TiCDC's v1 resign: 202 with no body, from the owner.
async fn resign(State(api): State<Api>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match api.capture.owner() {
        Ok(owner) => {
            owner.async_stop();
            StatusCode::ACCEPTED.into_response()
        }
        Err(_) => forward_to_owner(&api, method, &path_of(&uri), &headers, Bytes::new()).await,
    }
}

/// TiCDC's oldest resign, `/capture/owner/resign`: `{"status":true,"message":""}` from the
/// owner; any other capture answers 500 `ErrNotOwner`, as TiCDC does (it does not forward).
async fn capture_owner_resign(State(api): State<Api>) -> Response {
    match api.capture.owner() {
        Ok(owner) => {
            owner.async_stop();
            indented(StatusCode::OK, &json!({"status": true, "message": ""}))
        }
        Err(err) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn indented_json_is_go_s() {
        let response = indented(StatusCode::OK, &json!([{"id": "a", "is_owner": true}]));
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "[\n    {\n        \"id\": \"a\",\n        \"is_owner\": true\n    }\n]"
        );
    }

    #[tokio::test]
    async fn a_drain_without_a_capture_id_is_a_bad_request() {
        let response = invalid_param("missing field `capture_id`");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error_code"], "CDC:ErrAPIInvalidParam");
    }
}
