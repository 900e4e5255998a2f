//! Serving a router on a TCP listener so that slow or idle clients cannot take the service
//! down: a cap on open connections (past it, a fast 503 and close), a deadline for a
//! request's headers, one for its whole handling (the body included), and one for an idle
//! keep-alive connection.
//!
//! `axum::serve` has none of these; hyper's connection builder has the header timeout, and
//! the rest is the accept loop's.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// What a listener tolerates from its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// From a connection's first byte (or the end of its previous request) to the end of a
    /// request's headers.
    pub header_timeout: Duration,
    /// From a request's headers to its response: reading the body and handling it.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The answer past `max_connections`: sent without reading the request, then closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n";

/// Serves `app` until `shutdown` turns true, then lets open requests finish for up to
/// `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: the connections already open have
                // to end first; retrying at once would spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            // Errors here are the client's (a reset, a header timeout): nothing to report.
            let _ = conn.await;
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::debug!("connections still open after the drain period were closed");
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tokio::io::AsyncReadExt;

    async fn start(limits: Limits) -> (std::net::SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/hook", post(|body: String| async move { format!("got {}", body.len()) }));
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(serve(listener, app, limits, shutdown, Duration::from_secs(1)));
        (addr, stop, server)
    }

    /// Reads until the server closes the connection (or `within` passes): what it sent.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(within, stream.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    async fn deliver(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
            .await
            .expect("write");
        read_to_close(&mut s, Duration::from_secs(5)).await.expect("an answer")
    }

    #[tokio::test]
    async fn idle_and_slow_clients_are_cut_off_and_a_full_listener_answers_503() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(500),
        };
        let (addr, stop, server) = start(limits).await;
        assert!(deliver(addr).await.contains("got 2"));

        // A connection that sends nothing, and one that sends half its headers, are closed
        // after the header timeout.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\n").await.expect("write");
        // A body that never arrives: the request times out (408) after its deadline.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nx").await.expect("write");
        // With three of four slots taken, one more delivery fits; past the cap, a 503 at once.
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        let mut fifth = TcpStream::connect(addr).await.expect("connect");
        let refused = read_to_close(&mut fifth, Duration::from_millis(200)).await.expect("refused at once");
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        fourth
            .write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nz")
            .await
            .expect("write");
        assert!(read_to_close(&mut fourth, Duration::from_secs(2)).await.expect("answered").contains("got 1"));

        assert!(read_to_close(&mut idle, Duration::from_secs(2)).await.is_some(), "an idle connection is closed");
        assert!(read_to_close(&mut half, Duration::from_secs(2)).await.is_some(), "half a header is closed");
        let answer = read_to_close(&mut slow, Duration::from_secs(2)).await.expect("a slow body is cut off");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        // Their slots are free again.
        assert!(deliver(addr).await.contains("got 2"));

        stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(3), server).await.expect("stops").expect("joins");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let limits = Limits { header_timeout: Duration::from_millis(300), ..Limits::default() };
        let (addr, stop, _server) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi").await.expect("write");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.expect("response");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("got 2"));
        // Kept alive, then silent: closed after the header timeout, not held open.
        assert!(read_to_close(&mut s, Duration::from_secs(2)).await.is_some(), "held open");
        stop.send(true).expect("stop");
    }
}
