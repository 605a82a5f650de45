//! A TCP proxy whose behaviour switches at run time: pass, delay, black-hole or cut.
//!
//! The chaos runner puts one between each capture and each etcd member and one in front of each
//! capture's p2p port (its advertised address), so that it can partition, slow or cut any
//! capture↔etcd or capture↔capture link without touching the network stack.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the proxy does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward at once.
    Pass,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Accept and hold: nothing is read or forwarded until the mode changes (a partition whose
    /// TCP connections survive it).
    BlackHole,
    /// Close every connection and refuse new ones (accepted, then closed at once).
    Cut,
}

/// One listening proxy to a target address that can change (a restarted capture's new port).
pub(crate) struct Proxy {
    listen: SocketAddr,
    mode: watch::Sender<Mode>,
    target: watch::Sender<SocketAddr>,
}

impl Proxy {
    /// Binds a free loopback port and forwards it to `target`; runs on `tracker` until `cancel`.
    pub(crate) async fn start(
        target: SocketAddr,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind a proxy port")?;
        let listen = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (target, target_rx) = watch::channel(target);
        tracker.spawn(accept_loop(
            listener,
            mode_rx,
            target_rx,
            tracker.clone(),
            cancel.clone(),
        ));
        Ok(Proxy {
            listen,
            mode,
            target,
        })
    }

    /// The address clients connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Switches the mode; connections in progress follow at once.
    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Points new connections at another target.
    pub(crate) fn set_target(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }
}

async fn accept_loop(
    listener: TcpListener,
    mode: watch::Receiver<Mode>,
    target: watch::Receiver<SocketAddr>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // EMFILE and the like: pause instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if *mode.borrow() == Mode::Cut {
            drop(client);
            continue;
        }
        let to = *target.borrow();
        tracker.spawn(connection(client, to, mode.clone(), cancel.clone()));
    }
}

/// Carries one connection until either side closes, the mode becomes `Cut` or the run ends.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    cancel: CancellationToken,
) {
    // A black hole holds new connections too: connect only once it lifts.
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return,
            Mode::BlackHole => {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = mode.changed() => if changed.is_err() { return },
                }
            }
            Mode::Pass | Mode::Delay(_) => break,
        }
    }
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target));
    let Ok(Ok(server)) = connect.await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode.clone());
    let mut cut = mode.clone();
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.wait_for(|mode| *mode == Mode::Cut) => {}
    }
}

/// Copies one direction, honouring the mode before each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        if *mode.borrow_and_update() == Mode::BlackHole
            && mode
                .wait_for(|mode| *mode != Mode::BlackHole)
                .await
                .is_err()
        {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Re-check the mode: a black hole starts before the next chunk is read.
            changed = mode.changed() => {
                if changed.is_err() { return }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let current = *mode.borrow();
        match current {
            Mode::Delay(delay) => tokio::time::sleep(delay).await,
            // A chunk read just before the hole opened is held until it closes.
            Mode::BlackHole => {
                if mode
                    .wait_for(|mode| *mode != Mode::BlackHole)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Mode::Pass | Mode::Cut => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server(tracker: &TaskTracker) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tracker.spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0_u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<()> {
        stream.write_all(b"ping").await.ok()?;
        let mut answer = [0_u8; 4];
        tokio::time::timeout(within, stream.read_exact(&mut answer))
            .await
            .ok()?
            .ok()?;
        (&answer == b"ping").then_some(())
    }

    #[tokio::test]
    async fn passes_holds_and_cuts() {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let echo = echo_server(&tracker).await;
        let proxy = Proxy::start(echo, &tracker, &cancel).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut stream, Duration::from_secs(10))
                .await
                .is_some()
        );

        proxy.set_mode(Mode::BlackHole);
        assert!(
            round_trip(&mut stream, Duration::from_millis(300))
                .await
                .is_none()
        );
        proxy.set_mode(Mode::Pass);
        // The held "ping" arrives once the hole closes.
        let mut answer = [0_u8; 4];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"ping");

        proxy.set_mode(Mode::Cut);
        let mut buffer = [0_u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        proxy.set_mode(Mode::Pass);
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut stream, Duration::from_secs(10))
                .await
                .is_some()
        );
        cancel.cancel();
    }
}
