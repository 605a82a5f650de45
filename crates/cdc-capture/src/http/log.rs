//! `POST /api/v2/log` (TiCDC's `setLogLevel`, `cdc/api/v2/log.go` in pingcap/tiflow): the body
//! `{"log_level":"debug"}` changes the process's log level at run time.
//!
//! The level belongs to the process's one logger, which the binary installs; the binary hands
//! its reload handle over with [`set_log_level_handler`]. Without one (a capture run inside
//! tests), the route answers 500.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Changes the process's log level; the error says why the level was refused.
pub type LogLevelHandler = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The process's handler: the logger is process-wide, and so is what changes its level.
static HANDLER: OnceLock<LogLevelHandler> = OnceLock::new();

/// Installs the process's log level handler; the first one installed stays.
pub fn set_log_level_handler(handler: LogLevelHandler) {
    let _already_set = HANDLER.set(handler);
}

/// TiCDC's `LogLevelReq`.
#[derive(Deserialize)]
struct LogLevelReq {
    #[serde(default = "default_level")]
    log_level: String,
}

fn default_level() -> String {
    "info".to_owned()
}

fn invalid(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error_msg": message, "error_code": "CDC:ErrAPIInvalidParam"})),
    )
        .into_response()
}

/// `POST /api/v2/log`: `{}` on success; 400 `CDC:ErrAPIInvalidParam` for a bad body or level.
pub(super) async fn set_log_level(body: Bytes) -> Response {
    let request: LogLevelReq = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return invalid(format!("invalid log level: {err}")),
    };
    let Some(handler) = HANDLER.get() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({
                "error_msg": "this process does not change its log level at run time",
                "error_code": "CDC:ErrInternalServerError",
            })),
        )
            .into_response();
    };
    match handler(&request.log_level) {
        Ok(()) => {
            tracing::warn!(level = %request.log_level, "log level changed");
            axum::Json(json!({})).into_response()
        }
        Err(reason) => {
            tracing::warn!(level = %request.log_level, %reason, "log level refused");
            invalid(format!("fail to change log level: {}", request.log_level))
        }
    }
}
