//! The owner's HTTP API as data: the capture hosts the port and hands the requests only the owner
//! can serve (changefeeds, processors, drains) to the owner's [`OwnerApi`].

use bytes::Bytes;
use futures::future::BoxFuture;

/// One request below `/api/v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The HTTP method, upper case (`"GET"`, `"POST"`, `"PUT"`, `"DELETE"`).
    pub method: String,
    /// The path below `/api/v2`, starting with `/` (for example `/changefeeds/cf1/pause`).
    pub path: String,
    /// The query string without the `?`, empty when there is none.
    pub query: String,
    /// The request body (JSON, possibly empty).
    pub body: Bytes,
}

/// The answer to an [`ApiRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl ApiResponse {
    /// A 200 answer with `body`.
    pub fn ok(body: serde_json::Value) -> ApiResponse {
        ApiResponse { status: 200, body }
    }

    /// An error answer in TiCDC's shape: `{"error_msg", "error_code"}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> ApiResponse {
        ApiResponse {
            status,
            body: serde_json::json!({"error_msg": message.into(), "error_code": code}),
        }
    }
}

/// Serves the owner's API requests.
pub trait OwnerApi: Send + Sync {
    /// Serves one request.
    fn serve(&self, request: ApiRequest) -> BoxFuture<'_, ApiResponse>;
}
