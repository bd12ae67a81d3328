//! Serving a router: the accept loop of `axum::serve`, plus the two timeouts a server facing
//! untrusted clients needs and axum does not set.
//!
//! - A client must send a request's headers within `[api] header_read_timeout_secs`, or the
//!   connection is closed: a half-sent header held a connection (and its task) forever.
//! - A request body may pause at most `[api] body_read_timeout_secs` between two pieces; past
//!   that the body ends in an error, which the handler reads as a broken upload (an image goes
//!   back to `queued`, a JSON body is a 400).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt;

/// How long open connections get to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub body_idle: Duration,
}

impl Timeouts {
    pub fn from_config(api: &crate::config::ApiConfig) -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(api.header_read_timeout_secs),
            body_idle: Duration::from_secs(api.body_read_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// (for at most [`DRAIN`]). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.header_read);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(|body| Body::new(IdleTimeoutBody::new(body, timeouts.body_idle)));
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {DRAIN:?} after shutdown began; closing them");
    }
    Ok(())
}

/// The body paused longer than the server allows between two pieces.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of the request body for {0:?}")]
pub struct BodyStalled(Duration);

/// A request body that fails when its client goes quiet for `idle` between two frames.
struct IdleTimeoutBody<B> {
    inner: B,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleTimeoutBody<B> {
    fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }
}

impl<B> http_body::Body for IdleTimeoutBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
