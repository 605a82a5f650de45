//! The process-wide gRPC service whose message server can be swapped (TiCDC's `pkg/p2p/server_wrapper.go`).

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::ServerConfig;
use crate::proto::MessagePacket;
use crate::proto::cdc_peer_to_peer_server::{CdcPeerToPeer, CdcPeerToPeerServer};
use crate::server::{MessageServer, ResponseStream};

#[derive(Debug)]
struct Current {
    server: Option<Arc<MessageServer>>,
    /// Parent of every stream served by `server`; `reset` cancels it.
    streams: CancellationToken,
}

/// The `p2p.CDCPeerToPeer` service, registered once per process; `reset` swaps the message
/// server behind it. Without one, RPCs get `UNAVAILABLE`.
#[derive(Debug, Clone)]
pub struct ServerWrapper {
    current: Arc<Mutex<Current>>,
    max_recv_msg_size: usize,
}

impl ServerWrapper {
    /// A wrapper with no server yet.
    pub fn new(config: &ServerConfig) -> Self {
        ServerWrapper {
            current: Arc::new(Mutex::new(Current {
                server: None,
                streams: CancellationToken::new(),
            })),
            max_recv_msg_size: config.max_recv_msg_size,
        }
    }

    /// The tonic service to add to the process's `Routes` (message size limits applied).
    pub fn service(&self) -> CdcPeerToPeerServer<ServerWrapper> {
        CdcPeerToPeerServer::new(self.clone())
            .max_decoding_message_size(self.max_recv_msg_size)
            .max_encoding_message_size(self.max_recv_msg_size)
    }

    /// Cancels every stream of the current server and installs `server` (or none).
    pub fn reset(&self, server: Option<Arc<MessageServer>>) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current.streams.cancel();
        current.streams = CancellationToken::new();
        current.server = server;
    }
}

#[tonic::async_trait]
impl CdcPeerToPeer for ServerWrapper {
    type SendMessageStream = ResponseStream;

    async fn send_message(
        &self,
        request: Request<Streaming<MessagePacket>>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let (server, streams) = {
            let current = self
                .current
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (current.server.clone(), current.streams.child_token())
        };
        let Some(server) = server else {
            return Err(crate::status::server_not_running());
        };
        server
            .accept_stream(request.into_inner(), streams)
            .map(Response::new)
    }
}
