//! The message bus, with nova's `rpc` semantics:
//!
//! - `cast`: fire and forget to a topic; one of its consumers handles it.
//! - `call`: request and reply; the caller waits up to a timeout, and an error raised by the
//!   remote handler comes back as [`BusError::Remote`].
//! - `fanout`: to every consumer of a topic.
//!
//! Two implementations share this trait and one conformance suite: `local` (in-process) and
//! `amqp` (RabbitMQ through lapin). [`connect`] builds the one the config asks for.
//!
//! Both deliver at least once and keep casts to a topic nobody serves yet until a server
//! appears (so start-up order does not matter); fanouts reach only the servers present when
//! they are sent, and calls that wait longer than their timeout are dropped unhandled.

pub mod amqp;
#[cfg(test)]
mod conformance;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who asked, carried by every message like nova's request context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub request_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub is_admin: bool,
    #[serde(default)]
    pub remote_address: Option<String>,
    /// When the request entered the system, RFC 3339 UTC.
    pub timestamp: String,
    /// The recorded span that sent this message (see `crate::trace`), so the handler's span
    /// hangs under it in `novabox trace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl Context {
    /// A context for work novabox starts itself (periodic tasks, start-up reconciliation).
    pub fn admin(request_id: impl Into<String>) -> Context {
        Context {
            request_id: request_id.into(),
            roles: vec!["admin".into()],
            is_admin: true,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ..Context::default()
        }
    }

    /// A fresh nova-style request id: `req-<uuid4>`.
    pub fn new_request_id() -> String {
        format!("req-{}", uuid::Uuid::new_v4())
    }
}

/// The envelope on the wire: the method to run, its arguments and the context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub method: String,
    #[serde(default)]
    pub args: Value,
    pub context: Context,
}

impl Message {
    pub fn new(method: impl Into<String>, args: Value, mut context: Context) -> Message {
        context.trace_parent = crate::trace::current_span_id();
        Message { method: method.into(), args, context }
    }
}

/// What went wrong in a remote handler, named as nova's exceptions are. On the wire it is the
/// variant's name, as the string it was before it was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    InstanceNotFound,
    UnexpectedTaskState,
    UnexpectedDeletingTaskState,
    NoValidHost,
    #[serde(rename = "DBError")]
    DbError,
    /// The method exists but its arguments do not fit it.
    InvalidArguments,
    InvalidRequest,
    /// The message is not a request of the topic at all (an unknown method, a broken body).
    MalformedMessage,
    /// A reply that is not a reply.
    MalformedReply,
    UnknownMethod,
    HandlerPanicked,
    NetworkError,
    SecurityGroupError,
    VolumeError,
    VolumeNotCreated,
    ConsoleNotAvailable,
    /// Over a project's quota (neutron's OverQuota).
    OverQuota,
    /// A port that cannot be bound to the instance (nova's PortNotUsable).
    PortNotUsable,
    /// The caller's roles do not allow it (oslo.policy's PolicyNotAuthorized).
    PolicyNotAuthorized,
    /// A kind this build does not know (a newer peer's).
    #[serde(other)]
    Other,
}

impl std::fmt::Display for RemoteErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteErrorKind::DbError => f.write_str("DBError"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// An error raised by a handler, sent back to the caller of `call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RemoteError {
    pub kind: RemoteErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError { kind, message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no reply to {method} on topic {topic} within {}s; is the {topic} service running?", timeout.as_secs_f64())]
    Timeout { topic: String, method: String, timeout: Duration },
    #[error("{method} on topic {topic} failed remotely: {error}")]
    Remote { topic: String, method: String, error: RemoteError },
    #[error("the message bus is closed")]
    Closed,
    #[error("message bus transport error: {0}")]
    Transport(String),
    #[error("cannot encode or decode a message: {0}")]
    Codec(#[from] serde_json::Error),
}

/// What a service does with the messages of its topic. For a cast the result is only logged;
/// for a call it is the reply.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, message: Message) -> Result<Value, RemoteError>;
}

/// Stops consuming when dropped or when `stop` is awaited.
pub struct Subscription {
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Subscription {
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Subscription {
        Subscription { stop: Some(Box::new(stop)) }
    }
    pub fn stop(mut self) {
        if let Some(f) = self.stop.take() {
            f()
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.stop.take() {
            f()
        }
    }
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Delivers `message` to one consumer of `topic`. Returns once the bus has accepted it
    /// (for AMQP: the broker confirmed it), not when it was handled.
    async fn cast(&self, topic: &str, message: Message) -> Result<(), BusError>;
    /// Delivers `message` to one consumer of `topic` and waits for its reply.
    async fn call(&self, topic: &str, message: Message, timeout: Duration) -> Result<Value, BusError>;
    /// Delivers `message` to every consumer of `topic`.
    async fn fanout(&self, topic: &str, message: Message) -> Result<(), BusError>;
    /// Starts consuming `topic` (its casts, calls and fanouts) with `handler`, running up to
    /// the configured pool size of messages at once.
    async fn serve(&self, topic: &str, handler: Arc<dyn Handler>) -> Result<Subscription, BusError>;
    /// Stops this bus's servers and disconnects now, so a broker stopped next sees a clean
    /// close rather than a reset (and the bus does not try to reconnect to it). Dropping the
    /// last handle does the same in the background. The default does nothing.
    async fn close(&self) {}
}

/// Runs `handler` on `message` inside a span carrying the request id, turning a panic into a
/// [`RemoteError`] so one bad message cannot take a consumer (and its unacked messages) down.
pub(crate) async fn run_handler(handler: &dyn Handler, topic: &str, message: Message) -> Result<Value, RemoteError> {
    use futures_util::FutureExt;
    let span = tracing::info_span!(
        "rpc",
        service = service_of_topic(topic),
        topic,
        method = %message.method,
        request_id = %message.context.request_id,
        trace_parent = message.context.trace_parent.as_deref().unwrap_or_default(),
    );
    let method = message.method.clone();
    let outcome = std::panic::AssertUnwindSafe(handler.handle(message)).catch_unwind().instrument(span.clone()).await;
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            span.in_scope(|| tracing::error!("handler for {method} on {topic} panicked: {what}"));
            Err(RemoteError::new(
                RemoteErrorKind::HandlerPanicked,
                format!("the {method} handler on {topic} panicked: {what}"),
            ))
        }
    }
}

/// The service that consumes `topic`, as log lines and traces name it. Notifications are
/// stored by the conductor, so their handling is the conductor's work.
pub fn service_of_topic(topic: &str) -> &'static str {
    match topic.split('.').next().unwrap_or_default() {
        "scheduler" => "scheduler",
        "compute" => "compute",
        "conductor" | "notifications" => "conductor",
        _ => "bus",
    }
}

/// Which bus `kind = "auto"` means on this host: RabbitMQ when an external broker is configured
/// or rabbitmq-server is installed, the in-process bus otherwise.
pub fn resolve_kind(config: &crate::config::Config) -> crate::config::BusKind {
    use crate::config::BusKind;
    match config.bus.kind {
        BusKind::Auto if config.bus.url.is_some() || crate::supervise::rabbitmq::is_installed() => BusKind::Rabbitmq,
        BusKind::Auto => BusKind::Local,
        kind => kind,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Broker(#[from] crate::supervise::rabbitmq::RabbitError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Builds the bus the config asks for. For RabbitMQ without `[bus] url` this starts the home's
/// private broker when it is not running yet (see [`crate::supervise::rabbitmq`]).
pub async fn connect(
    config: &crate::config::Config,
    home: &crate::home::Home,
    secrets: &crate::secrets::Secrets,
) -> Result<Arc<dyn Bus>, ConnectError> {
    use crate::config::BusKind;
    let pool_size = config.bus.pool_size as usize;
    match resolve_kind(config) {
        BusKind::Local | BusKind::Auto => Ok(Arc::new(local::LocalBus::new(pool_size))),
        BusKind::Rabbitmq => {
            let broker = crate::supervise::rabbitmq::RabbitMq::ensure_running(home, config, secrets).await?;
            let options = amqp::AmqpOptions {
                pool_size,
                publish_timeout: Duration::from_secs(config.bus.call_timeout_secs),
                ..amqp::AmqpOptions::default()
            };
            Ok(Arc::new(amqp::AmqpBus::connect(&broker.url, options).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BusKind, Config};

    #[test]
    fn auto_means_rabbitmq_with_a_url_or_when_installed() {
        let mut config = Config::default();
        config.bus.kind = BusKind::Local;
        assert_eq!(resolve_kind(&config), BusKind::Local);
        config.bus.kind = BusKind::Rabbitmq;
        assert_eq!(resolve_kind(&config), BusKind::Rabbitmq);
        config.bus.kind = BusKind::Auto;
        let expected = if crate::supervise::rabbitmq::is_installed() { BusKind::Rabbitmq } else { BusKind::Local };
        assert_eq!(resolve_kind(&config), expected);
        config.bus.url = Some("amqp://u:p@127.0.0.1:5999/%2f".into());
        assert_eq!(resolve_kind(&config), BusKind::Rabbitmq);
    }

    #[tokio::test]
    async fn connect_local_gives_a_working_bus() {
        struct Echo;
        #[async_trait::async_trait]
        impl Handler for Echo {
            async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
                Ok(message.args)
            }
        }
        let t = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.bus.kind = BusKind::Local;
        let home = crate::home::Home::at(t.path());
        let bus = connect(&config, &home, &crate::secrets::Secrets::generate()).await.unwrap();
        let _sub = bus.serve("scheduler", Arc::new(Echo)).await.unwrap();
        let reply = bus
            .call(
                "scheduler",
                Message::new("ping", serde_json::json!(7), Context::admin("req-1")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(reply, serde_json::json!(7));
        bus.close().await;
    }

    #[tokio::test]
    async fn connect_to_an_unreachable_external_broker_names_it_without_the_password() {
        let mut config = Config::default();
        config.bus.kind = BusKind::Rabbitmq;
        let port = crate::supervise::free_port().unwrap();
        config.bus.url = Some(format!("amqp://novabox:hunter2@127.0.0.1:{port}/%2f"));
        let home = crate::home::Home::at(std::path::Path::new("/nonexistent"));
        let err = match connect(&config, &home, &crate::secrets::Secrets::generate()).await {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
