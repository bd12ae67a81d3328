//! The in-process bus: the same semantics as the AMQP one without a broker.
//!
//! Each topic has one shared queue (an unbounded channel whose receiver the topic's servers
//! take turns on) and each server has its own fanout queue. A server takes a message only when
//! it has a free slot in its pool, like an AMQP consumer with prefetch: a slow server never
//! holds messages another one could handle. Casts to a topic nobody serves wait in its queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use super::{Bus, BusError, Handler, Message, RemoteError, Subscription};

type ReplyTx = oneshot::Sender<Result<Value, RemoteError>>;

struct Delivery {
    message: Message,
    /// Calls carry where to answer and until when the caller waits.
    reply: Option<(ReplyTx, Instant)>,
}

struct Topic {
    tx: mpsc::UnboundedSender<Delivery>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    fanout: Vec<(u64, mpsc::UnboundedSender<Delivery>)>,
}

impl Topic {
    fn new() -> Topic {
        let (tx, rx) = mpsc::unbounded_channel();
        Topic { tx, rx: Arc::new(tokio::sync::Mutex::new(rx)), fanout: Vec::new() }
    }
}

#[derive(Default)]
struct Inner {
    topics: Mutex<HashMap<String, Topic>>,
    next_server: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        // A panic while holding this lock cannot leave the map half-updated, so keep going.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LocalBus {
    inner: Arc<Inner>,
    pool_size: usize,
}

impl LocalBus {
    pub fn new(pool_size: usize) -> LocalBus {
        LocalBus { inner: Arc::new(Inner::default()), pool_size: pool_size.max(1) }
    }

    fn enqueue(&self, topic: &str, delivery: Delivery) -> Result<(), BusError> {
        let mut topics = self.inner.topics();
        // Look up before inserting: `entry` would allocate the topic name on every message.
        let t = match topics.get(topic) {
            Some(t) => t,
            None => topics.entry(topic.to_string()).or_insert_with(Topic::new),
        };
        // The receiver lives in the map as long as the sender, so this cannot fail.
        t.tx.send(delivery).map_err(|_| BusError::Closed)
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn cast(&self, topic: &str, message: Message) -> Result<(), BusError> {
        self.enqueue(topic, Delivery { message, reply: None })
    }

    async fn call(&self, topic: &str, message: Message, timeout: Duration) -> Result<Value, BusError> {
        let method = message.method.clone();
        let (tx, rx) = oneshot::channel();
        self.enqueue(topic, Delivery { message, reply: Some((tx, Instant::now() + timeout)) })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(BusError::Remote { topic: topic.to_string(), method, error }),
            // The reply sender is dropped unanswered only when the call expired in the queue,
            // which the caller experiences as a timeout.
            Ok(Err(_)) | Err(_) => Err(BusError::Timeout { topic: topic.to_string(), method, timeout }),
        }
    }

    async fn fanout(&self, topic: &str, message: Message) -> Result<(), BusError> {
        let topics = self.inner.topics();
        if let Some(t) = topics.get(topic) {
            for (_, tx) in &t.fanout {
                // A server that stopped a moment ago has dropped its receiver: skip it.
                let _ = tx.send(Delivery { message: message.clone(), reply: None });
            }
        }
        Ok(())
    }

    async fn serve(&self, topic: &str, handler: Arc<dyn Handler>) -> Result<Subscription, BusError> {
        let id = self.inner.next_server.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (fan_tx, fan_rx) = mpsc::unbounded_channel();
        let shared_rx = {
            let mut topics = self.inner.topics();
            let t = topics.entry(topic.to_string()).or_insert_with(Topic::new);
            t.fanout.push((id, fan_tx));
            t.rx.clone()
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = Server {
            topic: topic.to_string(),
            handler,
            pool: Arc::new(Semaphore::new(self.pool_size)),
            shared_rx,
            fan_rx,
            stop: stop_rx,
        };
        tokio::spawn(server.run());
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let topic = topic.to_string();
        Ok(Subscription::new(move || {
            let _ = stop_tx.send_replace(true);
            if let Some(inner) = weak.upgrade() {
                if let Some(t) = inner.topics().get_mut(&topic) {
                    t.fanout.retain(|(i, _)| *i != id);
                }
            }
        }))
    }
}

struct Server {
    topic: String,
    handler: Arc<dyn Handler>,
    pool: Arc<Semaphore>,
    shared_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    fan_rx: mpsc::UnboundedReceiver<Delivery>,
    stop: watch::Receiver<bool>,
}

impl Server {
    async fn run(mut self) {
        loop {
            // Take a slot first, then a message: what this server cannot start yet stays in
            // the shared queue for the other servers of the topic.
            let permit = tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                p = self.pool.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let delivery = tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                d = self.fan_rx.recv() => d,
                d = async { self.shared_rx.lock().await.recv().await } => d,
            };
            let Some(delivery) = delivery else { break };
            let handler = self.handler.clone();
            let topic = self.topic.clone();
            tokio::spawn(async move {
                handle(&*handler, &topic, delivery).await;
                drop(permit);
            });
        }
    }
}

async fn handle(handler: &dyn Handler, topic: &str, delivery: Delivery) {
    let Delivery { message, reply } = delivery;
    match reply {
        Some((tx, deadline)) => {
            if Instant::now() >= deadline || tx.is_closed() {
                tracing::debug!(topic, method = %message.method, "dropping a call whose caller stopped waiting");
                return;
            }
            let result = super::run_handler(handler, topic, message).await;
            let _ = tx.send(result);
        }
        None => {
            let method = message.method.clone();
            if let Err(e) = super::run_handler(handler, topic, message).await {
                tracing::warn!(topic, method, "cast failed: {e}");
            }
        }
    }
}
