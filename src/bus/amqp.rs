//! The bus over AMQP 0-9-1 (RabbitMQ) with lapin, laid out like nova's oslo.messaging:
//!
//! - casts and calls go to the durable topic exchange `novabox` with the topic as routing key;
//!   every topic has a durable queue of the same name (`scheduler`, `compute.host1`) bound
//!   with that key, shared by the topic's servers. Publishers declare it too, so a cast sent
//!   before any server started waits for one. Casts are persistent and confirmed by the broker
//!   before `cast` returns, so a confirmed cast survives a broker restart.
//! - fanouts go to a fanout exchange per topic, `<topic>_fanout`; every server binds its own
//!   exclusive, auto-deleted queue `<topic>_fanout_<uuid>_<generation>` to it.
//! - calls carry `reply_to` (one exclusive queue per process and connection,
//!   `reply_<uuid>_<generation>`) and a correlation id; the reply body is `{"result": ...}`
//!   or `{"failure": {kind, message}}`.
//!   Calls expire in the queue after their timeout, so nobody handles a call nobody awaits.
//! - servers ack after the handler returns (and after the reply is sent); the channel's
//!   prefetch equals the pool size, so a slow server holds at most that many messages.
//!
//! lapin's own recovery is not relied upon: a supervisor task owns the connection and, when it
//! fails, reconnects with exponential backoff and re-declares the exchange, the reply queue and
//! every server's queues and consumers. Publishers wait for the new connection (up to
//! `publish_timeout`) and retry; a publish whose confirm was lost in the failure is sent
//! again, so delivery is at least once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::time::Instant;

use super::{Bus, BusError, Handler, Message, RemoteError, RemoteErrorKind, Subscription};

/// The topic exchange every cast and call goes through.
pub const EXCHANGE: &str = "novabox";
const PERSISTENT: u8 = 2;
const TRANSIENT: u8 = 1;

/// The fanout exchange of `topic`.
pub fn fanout_exchange(topic: &str) -> String {
    format!("{topic}_fanout")
}

#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// Messages one server handles at once (and its prefetch).
    pub pool_size: usize,
    /// How long `cast`/`fanout` wait for the broker to come back before failing.
    pub publish_timeout: Duration,
    /// First and longest pause between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            pool_size: 64,
            publish_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What a reply message carries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireReply {
    Result(Value),
    Failure(RemoteError),
}

pub struct AmqpBus {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    options: AmqpOptions,
    /// Prefix of this process's reply queue; each connection adds its generation, so a new
    /// connection never waits for the broker to notice that the old one (and its exclusive
    /// queue) is gone.
    reply_prefix: String,
    /// The live connection; `None` while reconnecting.
    link: watch::Sender<Option<Arc<Link>>>,
    pending: Mutex<HashMap<String, oneshot::Sender<WireReply>>>,
    servers: Mutex<HashMap<u64, Arc<Server>>>,
    next_id: AtomicU64,
    /// Held while a connection is set up and while a server is added, so a server added during
    /// a reconnection is started exactly once.
    topology: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

struct Link {
    generation: u64,
    /// Where replies to calls sent on this connection go.
    reply_queue: ShortString,
    conn: Connection,
    /// In confirm mode: casts and fanouts, which must survive a broker restart.
    confirmed: Channel,
    /// No confirms: call requests and replies, where the reply (or its timeout) is the proof.
    fast: Channel,
    /// Topic queues and fanout exchanges declared on this connection, so each is declared
    /// once per connection rather than once per message.
    declared_queues: Mutex<HashSet<String>>,
    declared_fanouts: Mutex<HashSet<String>>,
    broken: Notify,
}

struct Server {
    id: u64,
    topic: String,
    /// Prefix of the server's exclusive fanout queue; each connection adds its generation.
    fanout_prefix: String,
    handler: Arc<dyn Handler>,
    pool: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing holding these locks can panic halfway through an update.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn short(s: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(s).map_err(|e| BusError::Transport(format!("name {s:?} is too long for AMQP: {e}")))
}

/// Why a publish did not go through.
enum PublishError {
    /// The broker stayed unreachable until the deadline.
    Unavailable,
    Fatal(BusError),
}

impl AmqpBus {
    /// Connects to `url`. Fails when the broker cannot be reached now; once connected, the bus
    /// reconnects by itself whenever the connection is lost.
    pub async fn connect(url: &str, options: AmqpOptions) -> Result<AmqpBus, BusError> {
        let (link, _) = watch::channel(None);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            url: url.to_string(),
            options,
            reply_prefix: format!("reply_{}", uuid::Uuid::new_v4().simple()),
            link,
            pending: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            topology: tokio::sync::Mutex::new(()),
            shutdown,
        });
        let mut attempt = 1;
        let first = loop {
            match establish_within(&shared, 1).await {
                Ok(link) => break link,
                // A handshake that stalls (seen under load) is worth another try; a refusal is not.
                Err(Establish::Stalled) if attempt < HANDSHAKE_ATTEMPTS => {
                    tracing::warn!(attempt, "the message broker did not finish the handshake in time; trying again");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(BusError::Transport(format!(
                        "cannot connect to the message broker at {}: {e}",
                        redact(url)
                    )))
                }
            }
        };
        tokio::spawn(supervise(shared.clone(), first));
        Ok(AmqpBus { shared })
    }

    async fn publish(
        &self,
        route: Route<'_>,
        payload: &[u8],
        properties: BasicProperties,
        confirmed: bool,
        with_reply_to: bool,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let (exchange, routing_key) = match route {
            Route::Topic(topic) => (EXCHANGE.to_string(), topic),
            Route::Fanout(topic) => (fanout_exchange(topic), ""),
        };
        let exchange_s = short(&exchange).map_err(PublishError::Fatal)?;
        let key = short(routing_key).map_err(PublishError::Fatal)?;
        loop {
            let link = self.shared.wait_link(deadline).await?;
            let attempt = async {
                link.declare(route).await?;
                let channel = if confirmed { &link.confirmed } else { &link.fast };
                let properties = if with_reply_to {
                    properties.clone().with_reply_to(link.reply_queue.clone())
                } else {
                    properties.clone()
                };
                let confirm = channel
                    .basic_publish(exchange_s.clone(), key.clone(), BasicPublishOptions::default(), payload, properties)
                    .await?;
                if confirmed {
                    let confirmation = confirm.await?;
                    if confirmation.is_nack() {
                        return Ok(false);
                    }
                }
                Ok::<bool, lapin::Error>(true)
            }
            .await;
            match attempt {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    return Err(PublishError::Fatal(BusError::Transport(format!(
                        "the broker refused a message to {routing_key} (nack); it may be out of disk or memory"
                    ))))
                }
                Err(e) => {
                    tracing::info!(generation = link.generation, "publish failed, waiting for a new connection: {e}");
                    self.shared.mark_broken(&link);
                }
            }
        }
    }
}

impl Drop for AmqpBus {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send_replace(true);
        for (_, server) in lock(&self.shared.servers).drain() {
            let _ = server.stop.send_replace(true);
        }
    }
}

/// Where a publish goes, which also says what must exist before it.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// The topic exchange with the topic as key; the topic's shared queue must exist.
    Topic(&'a str),
    /// The topic's fanout exchange, which must exist.
    Fanout(&'a str),
}

impl Link {
    async fn declare(&self, what: Route<'_>) -> Result<(), lapin::Error> {
        let (set, name) = match what {
            Route::Topic(t) => (&self.declared_queues, t),
            Route::Fanout(t) => (&self.declared_fanouts, t),
        };
        if lock(set).contains(name) {
            return Ok(());
        }
        match what {
            Route::Topic(topic) => declare_topic_queue(&self.confirmed, topic).await?,
            Route::Fanout(topic) => declare_fanout_exchange(&self.confirmed, topic).await?,
        }
        lock(set).insert(name.to_string());
        Ok(())
    }
}

async fn declare_topic_queue(channel: &Channel, topic: &str) -> Result<(), lapin::Error> {
    let name: ShortString = ShortString::try_new(topic).map_err(|e| std::io::Error::other(e.to_string()))?;
    channel.queue_declare(name.clone(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    channel.queue_bind(name.clone(), EXCHANGE.into(), name, QueueBindOptions::default(), FieldTable::default()).await
}

async fn declare_fanout_exchange(channel: &Channel, topic: &str) -> Result<(), lapin::Error> {
    let name = ShortString::try_new(fanout_exchange(topic)).map_err(|e| std::io::Error::other(e.to_string()))?;
    let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(name, ExchangeKind::Fanout, options, FieldTable::default()).await
}

impl Shared {
    /// The live connection, waiting for a reconnection until `deadline`.
    async fn wait_link(&self, deadline: Instant) -> Result<Arc<Link>, PublishError> {
        let mut rx = self.link.subscribe();
        loop {
            if *self.shutdown.borrow() {
                return Err(PublishError::Fatal(BusError::Closed));
            }
            if let Some(link) = rx.borrow_and_update().clone() {
                return Ok(link);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(PublishError::Fatal(BusError::Closed)),
                Err(_) => return Err(PublishError::Unavailable),
            }
        }
    }

    /// Takes `link` out of service (if it still is) and wakes the supervisor to replace it.
    fn mark_broken(&self, link: &Link) {
        self.link.send_if_modified(|current| match current {
            Some(l) if l.generation == link.generation => {
                *current = None;
                true
            }
            _ => false,
        });
        link.broken.notify_one();
    }
}

/// Connects and declares everything this bus needs: the exchange, the reply queue and its
/// consumer, and the queues and consumers of every server. Publishes the new link when done.
/// How long opening a connection with its channels, exchange and reply queue may take.
/// Without a bound, a broker that accepts the socket but stops answering mid-handshake
/// (seen once in CI, with two brokers starting at once) hangs the caller for good.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts `connect` makes when handshakes stall.
const HANDSHAKE_ATTEMPTS: u32 = 3;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
enum Establish {
    #[error("the broker did not finish the handshake within {}s", HANDSHAKE_TIMEOUT.as_secs())]
    Stalled,
    #[error(transparent)]
    Failed(#[from] lapin::Error),
}

/// [`establish`], bounded by [`HANDSHAKE_TIMEOUT`].
async fn establish_within(shared: &Arc<Shared>, generation: u64) -> Result<Arc<Link>, Establish> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, establish(shared, generation)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Establish::Stalled),
    }
}

async fn establish(shared: &Arc<Shared>, generation: u64) -> Result<Arc<Link>, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("novabox pid {} ({})", std::process::id(), shared.reply_prefix).into());
    let conn = Connection::connect(&shared.url, properties).await?;
    let confirmed = conn.create_channel().await?;
    confirmed.confirm_select(ConfirmSelectOptions::default()).await?;
    let fast = conn.create_channel().await?;
    let exchange_options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    confirmed.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, exchange_options, FieldTable::default()).await?;

    let replies = conn.create_channel().await?;
    let reply_queue = ShortString::try_new(format!("{}_{generation}", shared.reply_prefix))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    replies
        .queue_declare(reply_queue.clone(), QueueDeclareOptions::exclusive().auto_delete(), FieldTable::default())
        .await?;
    // Replies are not acked: a reply lost with the connection is a call that times out.
    let consume = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let consumer = replies.basic_consume(reply_queue.clone(), "".into(), consume, FieldTable::default()).await?;
    tokio::spawn(read_replies(Arc::downgrade(shared), consumer, replies));

    let link = Arc::new(Link {
        generation,
        reply_queue: reply_queue.clone(),
        conn,
        confirmed,
        fast,
        declared_queues: Mutex::new(HashSet::new()),
        declared_fanouts: Mutex::new(HashSet::new()),
        broken: Notify::new(),
    });
    let _topology = shared.topology.lock().await;
    let servers: Vec<Arc<Server>> = lock(&shared.servers).values().cloned().collect();
    for server in servers {
        start_server(shared, &link, &server).await?;
    }
    shared.link.send_replace(Some(link.clone()));
    tracing::info!(generation, "connected to the message broker");
    Ok(link)
}

/// Closes a link's connection, giving the broker a moment to confirm and no more.
async fn close_quietly(link: &Link, code: u16, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.conn.close(code, reason.into())).await;
}

/// How long a close waits for the broker's close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Watches the connection and replaces it whenever it fails, until the bus is dropped.
async fn supervise(shared: Arc<Shared>, mut link: Arc<Link>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let mut events = link.conn.events_listener();
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    shared.link.send_replace(None);
                    close_quietly(&link, 200, "bye").await;
                    return;
                }
                _ = link.broken.notified() => break,
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => {
                        tracing::warn!("message broker connection failed: {e}");
                        break;
                    }
                    Some(_) => {}
                    None => break,
                },
                // Belt and braces: not every way a connection dies is reported as an event.
                _ = poll.tick() => if !link.conn.status().connected() { break },
            }
        }
        shared.mark_broken(&link);
        // The socket of a broken link may be dead: a close waiting for the broker's close-ok
        // would wait for good, and this host would never reconnect (seen in CI after a
        // broker SIGKILL: one of two clients stayed disconnected).
        close_quietly(&link, 320, "reconnecting").await;
        let mut delay = shared.options.backoff_min;
        let generation = link.generation + 1;
        link = loop {
            if *shutdown.borrow() {
                return;
            }
            match establish_within(&shared, generation).await {
                Ok(new) => break new,
                Err(e) => {
                    tracing::warn!("cannot reconnect to the message broker, retrying in {delay:?}: {e}");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(shared.options.backoff_max);
                }
            }
        };
    }
}

async fn read_replies(shared: std::sync::Weak<Shared>, mut consumer: lapin::Consumer, _channel: Channel) {
    while let Some(delivery) = consumer.next().await {
        let Ok(delivery) = delivery else { break };
        let Some(shared) = shared.upgrade() else { break };
        let Some(correlation) = delivery.properties.correlation_id().as_ref().map(|c| c.to_string()) else {
            tracing::warn!("dropping a reply without a correlation id");
            continue;
        };
        let waiter = lock(&shared.pending).remove(&correlation);
        let Some(waiter) = waiter else {
            tracing::debug!(correlation, "dropping a reply nobody waits for any more");
            continue;
        };
        match serde_json::from_slice::<WireReply>(&delivery.data) {
            Ok(reply) => {
                let _ = waiter.send(reply);
            }
            Err(e) => {
                let _ = waiter.send(WireReply::Failure(RemoteError::new(
                    RemoteErrorKind::MalformedReply,
                    format!("the reply could not be decoded: {e}"),
                )));
            }
        }
    }
}

/// Declares a server's queues on `link` and starts consuming them.
async fn start_server(shared: &Arc<Shared>, link: &Arc<Link>, server: &Arc<Server>) -> Result<(), lapin::Error> {
    let channel = link.conn.create_channel().await?;
    // Per channel, so the topic queue and the fanout queue share the pool.
    let prefetch = u16::try_from(shared.options.pool_size).unwrap_or(u16::MAX);
    channel.basic_qos(prefetch, BasicQosOptions { global: true }).await?;
    declare_topic_queue(&channel, &server.topic).await?;
    declare_fanout_exchange(&channel, &server.topic).await?;
    let fanout_queue = ShortString::try_new(format!("{}_{}", server.fanout_prefix, link.generation))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    channel
        .queue_declare(fanout_queue.clone(), QueueDeclareOptions::exclusive().auto_delete(), FieldTable::default())
        .await?;
    let exchange =
        ShortString::try_new(fanout_exchange(&server.topic)).map_err(|e| std::io::Error::other(e.to_string()))?;
    channel
        .queue_bind(fanout_queue.clone(), exchange, "".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let topic_queue = ShortString::try_new(server.topic.as_str()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tag = format!("novabox-{}-{}", server.id, link.generation);
    let on_topic = channel
        .basic_consume(topic_queue, format!("{tag}-t").into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let on_fanout = channel
        .basic_consume(fanout_queue, format!("{tag}-f").into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    tokio::spawn(consume(shared.clone(), server.clone(), channel, vec![on_topic, on_fanout]));
    Ok(())
}

async fn consume(shared: Arc<Shared>, server: Arc<Server>, channel: Channel, consumers: Vec<lapin::Consumer>) {
    let tags: Vec<ShortString> = consumers.iter().map(|c| c.tag()).collect();
    let mut deliveries = futures_util::stream::select_all(consumers);
    let mut stop = server.stop.subscribe();
    loop {
        let next = tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => None,
            d = deliveries.next() => Some(d),
        };
        let Some(delivery) = next else {
            // Stop taking new messages, let the running handlers finish and ack, then close;
            // what was delivered but not started goes back to the queue.
            for tag in tags {
                let _ = channel.basic_cancel(tag, BasicCancelOptions::default()).await;
            }
            let all = u32::try_from(shared.options.pool_size).unwrap_or(u32::MAX);
            let _ = server.pool.acquire_many(all).await;
            let _ = channel.close(200, "server stopped".into()).await;
            return;
        };
        match delivery {
            Some(Ok(delivery)) => {
                let Ok(permit) = server.pool.clone().acquire_owned().await else { return };
                let shared = shared.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    handle(&shared, &server, delivery).await;
                    drop(permit);
                });
            }
            // The connection or channel failed: the supervisor starts this server again on
            // the next connection, and the broker redelivers what was not acked.
            Some(Err(e)) => {
                tracing::debug!(topic = server.topic, "consumer ended: {e}");
                return;
            }
            None => return,
        }
    }
}

async fn handle(shared: &Shared, server: &Server, delivery: Delivery) {
    let topic = server.topic.as_str();
    let reply_to = delivery.properties.reply_to().clone();
    let correlation = delivery.properties.correlation_id().clone();
    let result = match serde_json::from_slice::<Message>(&delivery.data) {
        Ok(message) => {
            let method = message.method.clone();
            let result = super::run_handler(&*server.handler, topic, message).await;
            if reply_to.is_none() {
                if let Err(e) = &result {
                    tracing::warn!(topic, method, "cast failed: {e}");
                }
            }
            result
        }
        Err(e) => {
            tracing::warn!(topic, "dropping a message that is not a novabox envelope: {e}");
            Err(RemoteError::new(RemoteErrorKind::MalformedMessage, format!("the message could not be decoded: {e}")))
        }
    };
    if let (Some(reply_to), Some(correlation)) = (reply_to, correlation) {
        let body = match result {
            Ok(value) => WireReply::Result(value),
            Err(error) => WireReply::Failure(error),
        };
        send_reply(shared, reply_to, correlation, &body).await;
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(topic, "ack failed (the broker will redeliver): {e}");
    }
}

async fn send_reply(shared: &Shared, reply_to: ShortString, correlation: ShortString, body: &WireReply) {
    let payload = match serde_json::to_vec(body) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot encode a reply: {e}");
            return;
        }
    };
    // Replies go to whatever connection is live now; without one the caller times out.
    let Some(link) = shared.link.borrow().clone() else { return };
    let properties = BasicProperties::default().with_correlation_id(correlation).with_delivery_mode(TRANSIENT);
    let sent = link.fast.basic_publish("".into(), reply_to, BasicPublishOptions::default(), &payload, properties).await;
    if let Err(e) = sent {
        tracing::debug!("cannot send a reply: {e}");
        shared.mark_broken(&link);
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn json_properties(delivery_mode: u8) -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(delivery_mode)
}

#[async_trait::async_trait]
impl Bus for AmqpBus {
    async fn cast(&self, topic: &str, message: Message) -> Result<(), BusError> {
        let payload = serde_json::to_vec(&message)?;
        let deadline = Instant::now() + self.shared.options.publish_timeout;
        let properties = json_properties(PERSISTENT);
        self.publish(Route::Topic(topic), &payload, properties, true, false, deadline)
            .await
            .map_err(|e| unavailable(e, topic, &message.method, self.shared.options.publish_timeout))
    }

    async fn call(&self, topic: &str, message: Message, timeout: Duration) -> Result<Value, BusError> {
        let deadline = Instant::now() + timeout;
        let method = message.method.clone();
        let payload = serde_json::to_vec(&message)?;
        let correlation = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(correlation.clone(), tx);
        // Forget the waiter however this call ends (timeout, error, or the caller dropping it).
        let _pending = PendingGuard { shared: &self.shared, correlation: &correlation };
        let properties = json_properties(TRANSIENT)
            .with_correlation_id(short(&correlation)?)
            // The broker drops the call when nobody has taken it before the caller gives up.
            .with_expiration(timeout.as_millis().max(1).to_string().into());
        let timed_out = || BusError::Timeout { topic: topic.to_string(), method: method.clone(), timeout };
        match self.publish(Route::Topic(topic), &payload, properties, false, true, deadline).await {
            Ok(()) => {}
            Err(PublishError::Unavailable) => return Err(timed_out()),
            Err(PublishError::Fatal(e)) => return Err(e),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(WireReply::Result(value))) => Ok(value),
            Ok(Ok(WireReply::Failure(error))) => Err(BusError::Remote { topic: topic.to_string(), method, error }),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(timed_out()),
        }
    }

    async fn fanout(&self, topic: &str, message: Message) -> Result<(), BusError> {
        let payload = serde_json::to_vec(&message)?;
        let deadline = Instant::now() + self.shared.options.publish_timeout;
        let properties = json_properties(TRANSIENT);
        self.publish(Route::Fanout(topic), &payload, properties, true, false, deadline)
            .await
            .map_err(|e| unavailable(e, topic, &message.method, self.shared.options.publish_timeout))
    }

    async fn close(&self) {
        let _ = self.shared.shutdown.send_replace(true);
        let servers: Vec<Arc<Server>> = lock(&self.shared.servers).drain().map(|(_, s)| s).collect();
        for server in servers {
            let _ = server.stop.send_replace(true);
        }
        if let Some(link) = self.shared.link.send_replace(None) {
            close_quietly(&link, 200, "closing").await;
        }
    }

    async fn serve(&self, topic: &str, handler: Arc<dyn Handler>) -> Result<Subscription, BusError> {
        short(topic)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let fanout_prefix = format!("{}_{}", fanout_exchange(topic), uuid::Uuid::new_v4().simple());
        // Leave room for the generation suffix.
        short(&format!("{fanout_prefix}_{}", u64::MAX))?;
        let (stop, _) = watch::channel(false);
        let server = Arc::new(Server {
            id,
            topic: topic.to_string(),
            fanout_prefix,
            handler,
            pool: Arc::new(Semaphore::new(self.shared.options.pool_size.max(1))),
            stop,
        });
        let deadline = Instant::now() + self.shared.options.publish_timeout;
        loop {
            let link = self.shared.wait_link(deadline).await.map_err(|e| match e {
                PublishError::Unavailable => BusError::Transport(format!(
                    "cannot serve {topic}: the message broker has been unreachable for {}s",
                    self.shared.options.publish_timeout.as_secs()
                )),
                PublishError::Fatal(e) => e,
            })?;
            let _topology = self.shared.topology.lock().await;
            let current = self.shared.link.borrow().clone();
            if current.is_none_or(|c| c.generation != link.generation) {
                continue; // reconnected meanwhile: use the new connection
            }
            match start_server(&self.shared, &link, &server).await {
                Ok(()) => {
                    lock(&self.shared.servers).insert(id, server.clone());
                    break;
                }
                Err(e) => {
                    tracing::info!("cannot start a server for {topic}, retrying on a new connection: {e}");
                    self.shared.mark_broken(&link);
                }
            }
        }
        let shared = Arc::downgrade(&self.shared);
        Ok(Subscription::new(move || {
            if let Some(shared) = shared.upgrade() {
                lock(&shared.servers).remove(&id);
            }
            let _ = server.stop.send_replace(true);
        }))
    }
}

fn unavailable(e: PublishError, topic: &str, method: &str, waited: Duration) -> BusError {
    match e {
        PublishError::Fatal(e) => e,
        PublishError::Unavailable => BusError::Transport(format!(
            "{method} to {topic} was not sent: the message broker has been unreachable for {}s",
            waited.as_secs()
        )),
    }
}

struct PendingGuard<'a> {
    shared: &'a Shared,
    correlation: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(self.correlation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(redact("amqp://novabox:s3cret@127.0.0.1:5672/%2f"), "amqp://novabox:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn reply_wire_format() {
        let ok = serde_json::to_string(&WireReply::Result(serde_json::json!({"a": 1}))).unwrap();
        assert_eq!(ok, r#"{"result":{"a":1}}"#);
        let err =
            serde_json::to_string(&WireReply::Failure(RemoteError::new(RemoteErrorKind::NoValidHost, "none"))).unwrap();
        assert_eq!(err, r#"{"failure":{"kind":"NoValidHost","message":"none"}}"#);
    }
}
