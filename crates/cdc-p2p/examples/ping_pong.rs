//! Two captures' message servers and routers exchange a ping and a pong over loopback.
//!
//! Run with `cargo run -p cdc-p2p --example ping_pong`.

use std::sync::Arc;
use std::time::Duration;

use cdc_p2p::{
    BoxError, ClientConfig, MessageRouter, MessageServer, NamedTopic, ServerConfig, ServerWrapper,
    serve,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Both topics carry a JSON string.
type TextTopic = NamedTopic<String>;

/// One capture's p2p side: a message server listening on loopback, and a router.
struct Peer {
    server: Arc<MessageServer>,
    router: Arc<MessageRouter>,
    addr: String,
}

/// Starts `id`'s server (serving and running on `tasks` until `cancel`) and its router.
async fn start(
    id: &str,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<cdc_p2p::Result<()>>,
) -> Result<Peer, BoxError> {
    let config = ServerConfig::default();
    let server = Arc::new(MessageServer::new(id, config.clone()));
    let router = Arc::new(MessageRouter::new(id, ClientConfig::default()));
    let wrapper = ServerWrapper::new(&config);
    wrapper.reset(Some(Arc::clone(&server)));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let serve_cancel = cancel.clone();
    tasks.spawn(async move { serve(listener, &wrapper, &config, serve_cancel).await });
    let running = Arc::clone(&server);
    let run_cancel = cancel.clone();
    let local = router.local_channel();
    tasks.spawn(async move { running.run(run_cancel, local).await });
    Ok(Peer {
        server,
        router,
        addr,
    })
}

#[tokio::main]
#[allow(clippy::print_stdout, reason = "the example prints what it received")]
async fn main() -> Result<(), BoxError> {
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let a = start("capture-a", &cancel, &mut tasks).await?;
    let b = start("capture-b", &cancel, &mut tasks).await?;
    a.router.add_peer("capture-b", b.addr.clone());
    b.router.add_peer("capture-a", a.addr.clone());

    // B answers every ping with a pong, through its router, to the ping's sender.
    let replies = Arc::clone(&b.router);
    let reply_cancel = cancel.clone();
    b.server
        .add_handler(
            &TextTopic::new("ping"),
            move |sender, text: String| {
                let replies = Arc::clone(&replies);
                let cancel = reply_cancel.clone();
                async move {
                    let client = replies.client(&sender).ok_or("the sender is not a peer")?;
                    let pong = format!("pong, in answer to {text:?}");
                    client
                        .send_message(&TextTopic::new("pong"), pong, &cancel)
                        .await?;
                    Ok(())
                }
            },
            &cancel,
        )
        .await?;

    // A hands every pong to `main`.
    let (pong_tx, mut pong_rx) = mpsc::channel(1);
    a.server
        .add_handler(
            &TextTopic::new("pong"),
            move |sender, text: String| {
                let pong_tx = pong_tx.clone();
                async move {
                    pong_tx
                        .send(format!("{sender}: {text}"))
                        .await
                        .map_err(BoxError::from)
                }
            },
            &cancel,
        )
        .await?;

    let to_b = a.router.client("capture-b").ok_or("capture-b is unknown")?;
    to_b.send_message(&TextTopic::new("ping"), "ping".to_owned(), &cancel)
        .await?;
    let pong = tokio::time::timeout(Duration::from_secs(30), pong_rx.recv())
        .await?
        .ok_or("the pong handler stopped")?;
    println!("{pong}");

    a.router.close().await;
    b.router.close().await;
    cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}
