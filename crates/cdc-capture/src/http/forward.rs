//! Forwarding a request to the owner with TiCDC's headers (`cdc/api/util.go` and
//! `cdc/api/middleware/middleware.go` in pingcap/tiflow): `TiCDC-ForwardFromCapture` names the
//! capture that forwarded it and `TiCDC-ForwardTimes` counts the hops; a request that was
//! forwarded [`MAX_FORWARD_TIMES`] times already is answered, not forwarded again.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Api, error_response};
use crate::error::Error;

/// The header that names the capture a request was forwarded from (TiCDC's name).
pub const FORWARD_HEADER: &str = "TiCDC-ForwardFromCapture";
/// The header that counts how many times a request has been forwarded (TiCDC's name).
pub const FORWARD_TIMES_HEADER: &str = "TiCDC-ForwardTimes";
/// How many hops a request may take: a capture, a stale owner, the owner (TiCDC's
/// `maxForwardTimes`).
pub const MAX_FORWARD_TIMES: u64 = 2;
/// The header with which newer TiCDC versions name the capture a request came from.
const FORWARD_FROM_HEADER: &str = "TiCDC-ForwardFrom";

/// How many times the request was forwarded before it came here: its `TiCDC-ForwardTimes`,
/// or one if only a forwarding capture is named (TiCDC before the count, which forwarded once
/// at most). A count that is not a number is [`Error::ForwardLimit`], as TiCDC answers it.
pub(super) fn forward_times(headers: &HeaderMap) -> Result<u64, Error> {
    match headers.get(FORWARD_TIMES_HEADER) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or(Error::ForwardLimit),
        None if headers.contains_key(FORWARD_HEADER)
            || headers.contains_key(FORWARD_FROM_HEADER) =>
        {
            Ok(1)
        }
        None => Ok(0),
    }
}

/// Sends the request to the owner, or answers why it cannot: 500 with TiCDC's error when the
/// request has used its hops, when no owner is known, or when the owner does not answer.
pub(super) async fn forward_to_owner(
    api: &Api,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let times = match forward_times(headers) {
        Ok(times) if times < MAX_FORWARD_TIMES => times,
        Ok(_) | Err(_) => {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, &Error::ForwardLimit);
        }
    };
    let owner = match api.capture.controller_capture_info().await {
        Ok(owner) => owner,
        Err(err) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &err),
    };
    let from = api.capture.info().map(|info| info.id).unwrap_or_default();
    if owner.id == from {
        // Our own owner key, before the owner is confirmed or after it stopped: sending the
        // request to ourselves would only spend its hops.
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &Error::NotOwner);
    }
    forward(
        api,
        method,
        &owner.address,
        path,
        headers,
        body,
        &from,
        times + 1,
    )
    .await
}

/// Headers that describe one connection or the body's framing, which the forwarded request
/// sets anew, and the forwarding headers, which it replaces.
fn is_hop_header(name: &header::HeaderName) -> bool {
    [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str().eq_ignore_ascii_case(FORWARD_HEADER)
        || name.as_str().eq_ignore_ascii_case(FORWARD_TIMES_HEADER)
        || name.as_str().eq_ignore_ascii_case(FORWARD_FROM_HEADER)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one request's parts, passed through as they came"
)]
async fn forward(
    api: &Api,
    method: Method,
    address: &str,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    from: &str,
    times: u64,
) -> Response {
    let mut request = api
        .http
        .request(
            method,
            format!(
                "{}://{address}{path}",
                crate::tls::scheme(api.capture.config())
            ),
        )
        .header(FORWARD_HEADER, from)
        .header(FORWARD_FROM_HEADER, from)
        .header(FORWARD_TIMES_HEADER, times.to_string());
    for (name, value) in headers {
        if !is_hop_header(name) {
            request = request.header(name, value);
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let answer = match request.body(body).send().await {
        Ok(answer) => answer,
        Err(source) => {
            let err = Error::Forward {
                address: address.to_owned(),
                source,
            };
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, &err);
        }
    };
    let status = answer.status();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| header::HeaderValue::from_static("application/json"));
    match answer.bytes().await {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(source) => {
            let err = Error::Forward {
                address: address.to_owned(),
                source,
            };
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, header::HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_hop_count_comes_from_ticdc_s_headers() {
        assert_eq!(forward_times(&headers(&[])).unwrap(), 0);
        assert_eq!(
            forward_times(&headers(&[(FORWARD_TIMES_HEADER, "2")])).unwrap(),
            2
        );
        // An older TiCDC names the capture only: one hop.
        assert_eq!(
            forward_times(&headers(&[(FORWARD_HEADER, "c1")])).unwrap(),
            1
        );
        assert!(matches!(
            forward_times(&headers(&[(FORWARD_TIMES_HEADER, "two")])),
            Err(Error::ForwardLimit)
        ));
    }

    #[test]
    fn forwarding_headers_are_set_anew() {
        for name in [
            FORWARD_HEADER,
            FORWARD_TIMES_HEADER,
            "host",
            "content-length",
        ] {
            let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_hop_header(&name), "{name}");
        }
        assert!(!is_hop_header(&header::CONTENT_TYPE));
        assert!(!is_hop_header(&header::HeaderName::from_static(
            "x-client-version"
        )));
    }
}
