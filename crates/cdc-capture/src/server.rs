//! One capture server: the capture plus its port, serving HTTP and gRPC together.

use std::net::SocketAddr;
use std::sync::Arc;

use cdc_etcd::{CdcEtcdClient, ConnectConfig, EtcdClient};
use cdc_p2p::ServerWrapper;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::capture::{Capture, CaptureParts};
use crate::config::{Config, parse_listen_addr};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::tls::{CurrentTls, Reloader, Tls};

/// How long open requests may take once the server stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A bound, not yet running, capture server.
#[derive(Debug)]
pub struct Server {
    capture: Arc<Capture>,
    p2p: ServerWrapper,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<CurrentTls>,
}

impl Server {
    /// Connects to etcd (lazily) and binds the listen address, with the production parts
    /// ([`CaptureParts::production`]). `config` must be validated.
    pub async fn bind(config: Config) -> Result<Server> {
        Self::bind_with(config, CaptureParts::production).await
    }

    /// As [`Server::bind`], with the parts `parts` builds on the cluster's etcd client (the
    /// binary's owner and processor reactors).
    pub async fn bind_with(
        config: Config,
        parts: impl FnOnce(&CdcEtcdClient) -> CaptureParts,
    ) -> Result<Server> {
        let addr = parse_listen_addr(&config.addr)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Serve {
                addr: config.addr.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Serve {
            addr: config.addr.clone(),
            source,
        })?;
        let tls = if config.security.is_tls_enabled() {
            Some(Tls::load(&config.security)?)
        } else {
            None
        };
        let connect = ConnectConfig {
            tls: crate::tls::etcd_tls(&config, tls.as_ref()),
            ..ConnectConfig::default()
        };
        let client = EtcdClient::connect(&config.endpoints(), connect).await?;
        if tls.is_some() {
            crate::tls::check_etcd_tls(&client).await?;
        }
        let etcd = Box::pin(CdcEtcdClient::new(client, &config.cluster_id)).await?;
        let metrics = Arc::new(Metrics::new());
        let p2p = ServerWrapper::new(&config.debug.messages.server_config());
        let parts = parts(&etcd);
        let tls = tls.map(CurrentTls::new);
        let capture = Capture::with_tls(config, etcd, parts, metrics, p2p.clone(), tls.clone());
        Ok(Server {
            capture,
            p2p,
            listener,
            local_addr,
            tls,
        })
    }

    /// The capture, for draining on a signal.
    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves the port and runs the capture until `cancel`, or until the capture fails. With
    /// TLS, the certificate files are watched meanwhile and reloaded when they change.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let Server {
            capture,
            p2p,
            listener,
            local_addr,
            tls,
        } = self;
        info!(addr = %local_addr, tls = tls.is_some(), "serving HTTP and gRPC");
        // The p2p service is registered once; incarnations swap the server behind it.
        let routes = tonic::service::Routes::from(crate::http::router(Arc::clone(&capture)))
            .add_service(p2p.service());
        let serve_cancel = cancel.child_token();
        let builder = cdc_p2p::configure_server(
            tonic::transport::Server::builder(),
            &capture.config().debug.messages.server_config(),
        );
        let router = builder.accept_http1(true).add_routes(routes);
        // With TLS, the handshakes (and the client-certificate check) run on tasks of their
        // own before tonic sees a connection.
        let handshakes = TaskTracker::new();
        let serve: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match &tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls::incoming(listener, tls.clone(), &handshakes, serve_cancel.clone()),
                serve_cancel.clone().cancelled_owned(),
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                serve_cancel.clone().cancelled_owned(),
            )),
        };
        // Idle keep-alive connections (a peer's forwarding client) would hold a graceful
        // shutdown open: give open requests a moment, then stop serving.
        let serve = async {
            let mut serve = std::pin::pin!(serve);
            tokio::select! {
                served = &mut serve => served,
                () = async {
                    serve_cancel.cancelled().await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } => Ok(()),
            }
        };
        let run = async {
            let result = Box::pin(capture.run(cancel.clone())).await;
            Capture::log_exit(&result);
            serve_cancel.cancel();
            result
        };
        // The certificate files' watcher stops with the port.
        let watch = async {
            if let Some(tls) = &tls {
                let reloader = Reloader::new(capture.config().security.clone(), tls.clone());
                let reloads = capture.metrics().tls_reloads.clone();
                crate::tls::watch(reloader, reloads, serve_cancel.clone()).await;
            }
        };
        let (served, ran, ()) = tokio::join!(serve, run, watch);
        handshakes.close();
        handshakes.wait().await;
        ran?;
        served.map_err(|err| Error::Serve {
            addr: local_addr.to_string(),
            source: std::io::Error::other(err),
        })
    }
}
