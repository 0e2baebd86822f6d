//! The connection loop, with the deadlines `axum::serve` lacks: a request's headers must arrive within
//! `header_read_timeout_secs` of their first byte, an idle kept-alive connection closes after
//! `keep_alive_timeout_secs`, a response that cannot write a byte for `write_timeout_secs` is abandoned (so a
//! client that stopped reading a pull releases its snapshot), and at most `max_connections` are served at once.
//! Body deadlines are the handlers' (`read_body`: 408). Every accepted socket gets `TCP_NODELAY`.
//!
//! Past the connection limit, [`OVERFLOW_CONNECTIONS`] more are accepted and read one request each, under the
//! same deadlines (with at most 2 s for the headers): `/healthz` answers as usual (a monitor can still tell the process is alive while slow
//! clients hold every slot), everything else gets `503 too_many_connections` with `Retry-After` and
//! `Connection: close`. Beyond those, a new connection is closed as soon as it is accepted.
//!
//! This module knows nothing of routes: it drives any axum `Router`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use syncline_core::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::ServerSection;
use crate::error::ApiError;

/// Connections accepted past `max_connections` to be told `503` (or to answer `/healthz`).
pub const OVERFLOW_CONNECTIONS: usize = 32;

/// The header deadline of a connection past the limit, when `header_read_timeout_secs` is longer.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The deadlines of every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    header: Duration,
    keep_alive: Duration,
    write: Duration,
}

impl Deadlines {
    pub(crate) fn from_config(server: &ServerSection) -> Deadlines {
        Deadlines {
            header: Duration::from_secs_f64(server.header_read_timeout_secs),
            keep_alive: Duration::from_secs_f64(server.keep_alive_timeout_secs),
            write: Duration::from_secs_f64(server.write_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    deadlines: Deadlines,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: give the process a moment instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let app = app.clone();
            let conn = connection(stream, deadlines, true, move |request| {
                let app = app.clone();
                async move { app.oneshot(request.map(Body::new)).await }
            });
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(slot);
            });
        } else if let Ok(slot) = overflow.clone().try_acquire_owned() {
            // A slow client must not hold these for long either: they are how `/healthz` still answers.
            let short = Deadlines {
                header: deadlines.header.min(OVERFLOW_HEADER_TIMEOUT),
                ..deadlines
            };
            let conn = connection(stream, short, false, |request| async move {
                Ok::<_, std::convert::Infallible>(over_capacity(&request))
            });
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(slot);
            });
        } else {
            drop(stream);
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The answer on a connection past the limit.
fn over_capacity(request: &Request<Incoming>) -> Response<Body> {
    if request.uri().path() == "/healthz" {
        let mut response =
            axum::Json(serde_json::json!({"status": "ok", "connections": "full"})).into_response();
        response.headers_mut().insert(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        );
        return response;
    }
    ApiError::new(
        ErrorCode::TooManyConnections,
        "the server has too many open connections; try again shortly",
    )
    .closing()
    .retry_after(1)
    .into_response()
}

/// One HTTP/1.1 connection under `deadlines`, answering with `handle`.
fn connection<H, F, E>(
    stream: TcpStream,
    deadlines: Deadlines,
    keep_alive: bool,
    handle: H,
) -> hyper::server::conn::http1::Connection<
    TokioIo<Guarded>,
    impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Tracked>,
        Error = E,
        Future: Send,
    >,
>
where
    H: Fn(Request<Incoming>) -> F + Send + Clone + 'static,
    F: Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let io = Guarded {
        io: stream,
        state: state.clone(),
        deadlines,
        seen: 0,
        reading: Some((Box::pin(tokio::time::sleep(deadlines.header)), Wait::Head)),
        stalled: None,
    };
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        state.busy.store(true, Ordering::Release);
        let state = state.clone();
        let answer = handle(request);
        async move {
            let response = answer.await?;
            Ok(response.map(|body| Tracked { body, state }))
        }
    });
    hyper::server::conn::http1::Builder::new()
        // Our own deadlines (below) replace hyper's header timer, whose clock also runs while idle.
        .header_read_timeout(None)
        .keep_alive(keep_alive)
        // Bounds what one response buffers in hyper beyond the chunk it writes: a stalled client costs little.
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
}

/// What a connection's service and its socket share: whether a request is being answered, and how many
/// answers have finished (the socket starts the keep-alive clock when that number moves).
#[derive(Debug, Default)]
struct ConnState {
    busy: AtomicBool,
    answered: AtomicU64,
    /// The read side parked while a request was answered: woken when the answer is done, to start the
    /// keep-alive clock.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
}

/// A response body that tells its connection when it is done (written out or dropped).
pub(crate) struct Tracked {
    body: Body,
    state: Arc<ConnState>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.busy.store(false, Ordering::Release);
        self.state.answered.fetch_add(1, Ordering::AcqRel);
        let parked = self
            .state
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(waker) = parked {
            waker.wake();
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the read side waits for while no request is being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Silence between requests: at the deadline the connection closes quietly.
    Idle,
    /// A request's head has begun (or the connection just opened): at the deadline it is an error.
    Head,
}

/// The socket with the connection's deadlines.
struct Guarded {
    io: TcpStream,
    state: Arc<ConnState>,
    deadlines: Deadlines,
    /// The `answered` count this side last saw.
    seen: u64,
    reading: Option<(Pin<Box<Sleep>>, Wait)>,
    /// Since when a write has been refused by a full socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let write = self.deadlines.write;
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing within write_timeout_secs",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_result<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.busy.load(Ordering::Acquire) {
            // Reading a body, or watching for the client closing: the handler's deadlines apply.
            this.reading = None;
        } else {
            let answered = this.state.answered.load(Ordering::Acquire);
            if answered != this.seen {
                this.seen = answered;
                let idle = tokio::time::sleep(this.deadlines.keep_alive);
                this.reading = Some((Box::pin(idle), Wait::Idle));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && matches!(this.reading, Some((_, Wait::Idle))) {
                    // The next request begins: its head now has the header deadline.
                    let head = tokio::time::sleep(this.deadlines.header);
                    this.reading = Some((Box::pin(head), Wait::Head));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, wait)) = &mut this.reading else {
                    *this.state.reader.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(cx.waker().clone());
                    return Poll::Pending;
                };
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                match wait {
                    // End of stream while idle: hyper closes the connection without an error.
                    Wait::Idle => Poll::Ready(Ok(())),
                    Wait::Head => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head did not arrive within header_read_timeout_secs",
                    ))),
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.write_result(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.write_result(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.write_result(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
