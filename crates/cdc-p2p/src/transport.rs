//! Connection settings shared by both sides: dialing with timeouts and HTTP/2 tuning.

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};

use crate::config::{ClientConfig, ServerConfig};
use crate::error::{Error, Result};
use crate::proto::cdc_peer_to_peer_client::CdcPeerToPeerClient;
use crate::wrapper::ServerWrapper;

/// HTTP/2 per-stream flow-control window: large enough for a full batch on a slow link.
pub const STREAM_WINDOW_SIZE: u32 = 8 << 20;
/// HTTP/2 per-connection flow-control window.
pub const CONNECTION_WINDOW_SIZE: u32 = 16 << 20;

/// Applies the p2p HTTP/2 settings (keep-alive, windows, no delay) to a server builder. The
/// capture applies it to the builder that serves gRPC and HTTP on one port.
pub fn configure_server(builder: Server, config: &ServerConfig) -> Server {
    builder
        .http2_keepalive_interval(Some(config.keep_alive_time))
        .http2_keepalive_timeout(Some(config.keep_alive_timeout))
        .initial_stream_window_size(STREAM_WINDOW_SIZE)
        .initial_connection_window_size(CONNECTION_WINDOW_SIZE)
        .tcp_nodelay(true)
}

/// Opens a gRPC channel to a peer's `host:port` with the configured dial timeout,
/// keep-alive and windows; over TLS (`https://`) when the config has credentials.
pub async fn connect(addr: &str, config: &ClientConfig) -> Result<CdcPeerToPeerClient<Channel>> {
    let connect_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
        addr: addr.to_owned(),
        source,
    };
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else if config.tls.is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|err| connect_error(Box::new(err)))?;
    if let Some(tls) = &config.tls {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| connect_error(Box::new(err)))?;
    }
    let endpoint = endpoint
        .connect_timeout(config.dial_timeout)
        .http2_keep_alive_interval(config.keep_alive_time)
        .keep_alive_timeout(config.keep_alive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW_SIZE)
        .initial_connection_window_size(CONNECTION_WINDOW_SIZE)
        .tcp_nodelay(true);
    #[allow(
        clippy::disallowed_methods,
        reason = "this is the wrapper with timeouts that replaces bare connect"
    )]
    let connecting = endpoint.connect();
    let channel = tokio::time::timeout(config.dial_timeout, connecting)
        .await
        .map_err(|elapsed| connect_error(Box::new(elapsed)))?
        .map_err(|err| connect_error(Box::new(err)))?;
    Ok(CdcPeerToPeerClient::new(channel)
        .max_decoding_message_size(config.max_recv_msg_size)
        .max_encoding_message_size(config.max_recv_msg_size))
}

/// Serves only the p2p service on `listener` until `shutdown` fires (tests and benchmarks;
/// the capture adds `ServerWrapper::service` to its own routes instead).
pub async fn serve(
    listener: tokio::net::TcpListener,
    wrapper: &ServerWrapper,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    configure_server(Server::builder(), config)
        .add_service(wrapper.service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|err| Error::Stream {
            source: Box::new(err),
        })
}
