//! One conformance suite for every [`Bus`]: each check is an async fn taking the bus, and
//! `conformance_tests!` turns them into `#[tokio::test]`s for one implementation.
//!
//! The AMQP tests start a private RabbitMQ in a temp home on free loopback ports. Tests of one
//! process share one (each uses its own topics, so they cannot meet), stopped by pid when the
//! test binary exits, even after failures. The broker-restart test has a broker of its own,
//! stopped by a drop guard. They need rabbitmq-server installed; set `NOVABOX_SKIP_RABBITMQ=1` to
//! skip them on a machine without it (CI installs it and never skips).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::amqp::{AmqpBus, AmqpOptions};
use super::local::LocalBus;
use super::{Bus, BusError, Context, Handler, Message, RemoteError, RemoteErrorKind};
use crate::config::Config;
use crate::home::Home;
use crate::secrets::Secrets;
use crate::supervise::rabbitmq::RabbitMq;

const WAIT: Duration = Duration::from_secs(30);

/// A topic no other test uses.
fn topic(name: &str) -> String {
    format!("test.{name}.{}", uuid::Uuid::new_v4().simple())
}

fn msg(method: &str, args: Value) -> Message {
    let mut context = Context::admin(Context::new_request_id());
    context.user_id = Some("u1".into());
    context.project_id = Some("p1".into());
    context.remote_address = Some("127.0.0.1".into());
    Message::new(method, args, context)
}

/// A handler made of a closure.
struct FnHandler<F>(F);

#[async_trait::async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, RemoteError>> + Send,
{
    async fn handle(&self, message: Message) -> Result<Value, RemoteError> {
        (self.0)(message).await
    }
}

fn handler<F, Fut>(f: F) -> Arc<dyn Handler>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, RemoteError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// A handler that forwards every message it gets to a channel.
fn recorder() -> (Arc<dyn Handler>, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = handler(move |m: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(m);
            Ok(Value::Null)
        }
    });
    (h, rx)
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("no message within 30 s").expect("handler gone")
}

pub(super) async fn cast_delivery(bus: Arc<dyn Bus>) {
    let t = topic("cast");
    let (h, mut rx) = recorder();
    let _sub = bus.serve(&t, h).await.unwrap();
    let sent = msg("build_instances", json!({"instance": {"uuid": "abc"}, "n": 1}));
    bus.cast(&t, sent.clone()).await.unwrap();
    let got = recv(&mut rx).await;
    assert_eq!(got, sent, "the envelope, context included, arrives unchanged");
}

pub(super) async fn cast_before_serve_waits_for_a_server(bus: Arc<dyn Bus>) {
    let t = topic("early");
    bus.cast(&t, msg("early", json!(1))).await.unwrap();
    let (h, mut rx) = recorder();
    let _sub = bus.serve(&t, h).await.unwrap();
    assert_eq!(recv(&mut rx).await.method, "early");
}

pub(super) async fn call_round_trip(bus: Arc<dyn Bus>) {
    let t = topic("call");
    let h = handler(|m: Message| async move {
        Ok(json!({"echo": m.args, "request_id": m.context.request_id, "project": m.context.project_id}))
    });
    let _sub = bus.serve(&t, h).await.unwrap();
    let sent = msg("ping", json!({"x": [1, 2, 3]}));
    let reply = bus.call(&t, sent.clone(), WAIT).await.unwrap();
    assert_eq!(reply, json!({"echo": {"x": [1, 2, 3]}, "request_id": sent.context.request_id, "project": "p1"}));
}

pub(super) async fn concurrent_calls(bus: Arc<dyn Bus>) {
    let t = topic("concurrent");
    let h = handler(|m: Message| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(m.args)
    });
    let _sub = bus.serve(&t, h).await.unwrap();
    let started = Instant::now();
    let calls = (0..200).map(|i| {
        let bus = bus.clone();
        let t = t.clone();
        async move { (i, bus.call(&t, msg("slow", json!(i)), WAIT).await) }
    });
    for (i, reply) in futures_util::future::join_all(calls).await {
        assert_eq!(reply.unwrap(), json!(i), "each caller gets its own reply");
    }
    // 200 calls of 50 ms one at a time would take 10 s; a pool of 64 needs about 4 rounds.
    assert!(started.elapsed() < Duration::from_secs(5), "calls were not handled concurrently: {:?}", started.elapsed());
}

/// Built with a pool of 4: never more than 4 handlers at once, and all 4 are used.
pub(super) async fn pool_limits_concurrency(bus: Arc<dyn Bus>) {
    let t = topic("pool");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let h = handler(move |_m: Message| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    });
    let _sub = bus.serve(&t, h).await.unwrap();
    let calls = (0..24).map(|i| {
        let bus = bus.clone();
        let t = t.clone();
        async move { bus.call(&t, msg("work", json!(i)), WAIT).await }
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4);
}

/// Built with a pool of 4: a server stuck in slow handlers holds at most 4 messages, and
/// another server of the topic handles everything else meanwhile.
pub(super) async fn slow_server_does_not_starve_others(bus: Arc<dyn Bus>) {
    let t = topic("starve");
    let slow = Arc::new(AtomicUsize::new(0));
    let fast = Arc::new(AtomicUsize::new(0));
    let s = slow.clone();
    let _slow = bus
        .serve(
            &t,
            handler(move |_m: Message| {
                let s = s.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    Ok(Value::Null)
                }
            }),
        )
        .await
        .unwrap();
    let f = fast.clone();
    let _fast = bus
        .serve(
            &t,
            handler(move |_m: Message| {
                let f = f.clone();
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(Value::Null)
                }
            }),
        )
        .await
        .unwrap();
    for i in 0..40 {
        bus.cast(&t, msg("work", json!(i))).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.load(Ordering::SeqCst) + fast.load(Ordering::SeqCst) < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, f) = (slow.load(Ordering::SeqCst), fast.load(Ordering::SeqCst));
    assert!(s <= 4, "the slow server took {s} messages with a pool of 4");
    assert_eq!(s + f, 40, "only {f} handled by the fast server and {s} stuck in the slow one");
}

pub(super) async fn remote_error(bus: Arc<dyn Bus>) {
    let t = topic("error");
    let h = handler(|m: Message| async move {
        Err(RemoteError::new(
            RemoteErrorKind::InstanceNotFound,
            format!("Instance {} could not be found.", m.args["uuid"]),
        ))
    });
    let _sub = bus.serve(&t, h).await.unwrap();
    let err = bus.call(&t, msg("get_instance", json!({"uuid": "i-1"})), WAIT).await.unwrap_err();
    match &err {
        BusError::Remote { topic: et, method, error } => {
            assert_eq!(et, &t);
            assert_eq!(method, "get_instance");
            assert_eq!(
                error,
                &RemoteError::new(RemoteErrorKind::InstanceNotFound, "Instance \"i-1\" could not be found.")
            );
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(err.to_string().contains("InstanceNotFound"), "{err}");
}

pub(super) async fn handler_panic_is_a_remote_error(bus: Arc<dyn Bus>) {
    let t = topic("panic");
    let h = handler(|m: Message| async move {
        if m.method == "boom" {
            panic!("kaboom");
        }
        Ok(json!("fine"))
    });
    let _sub = bus.serve(&t, h).await.unwrap();
    let err = bus.call(&t, msg("boom", Value::Null), WAIT).await.unwrap_err();
    assert!(
        matches!(&err, BusError::Remote { error, .. } if error.kind == RemoteErrorKind::HandlerPanicked && error.message.contains("kaboom")),
        "{err:?}"
    );
    // The server survives its handler's panic.
    assert_eq!(bus.call(&t, msg("ok", Value::Null), WAIT).await.unwrap(), json!("fine"));
}

pub(super) async fn timeout_names_topic_and_method(bus: Arc<dyn Bus>) {
    // Nobody serves this topic.
    let t = topic("nobody");
    let started = Instant::now();
    let err = bus.call(&t, msg("select_destinations", Value::Null), Duration::from_millis(300)).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(&err, BusError::Timeout { topic: et, method, .. } if et == &t && method == "select_destinations"));
    let text = err.to_string();
    assert!(text.contains(&t) && text.contains("select_destinations"), "{text}");

    // A server that answers too late is a timeout too, and its late reply goes nowhere.
    let slow = topic("slow");
    let h = handler(|_m: Message| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(json!("late"))
    });
    let _sub = bus.serve(&slow, h).await.unwrap();
    let err = bus.call(&slow, msg("slowpoke", Value::Null), Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, BusError::Timeout { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The earlier call to `nobody` expired: a server that starts now does not get it.
    let (h, mut rx) = recorder();
    let _late = bus.serve(&t, h).await.unwrap();
    bus.cast(&t, msg("after", Value::Null)).await.unwrap();
    assert_eq!(recv(&mut rx).await.method, "after", "the expired call was delivered");
}

pub(super) async fn fanout_reaches_every_server(bus: Arc<dyn Bus>) {
    let t = topic("fanout");
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
    let mut subs = Vec::new();
    for i in 0..3 {
        let tx = tx.clone();
        let h = handler(move |m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((i, m.method));
                Ok(Value::Null)
            }
        });
        subs.push(bus.serve(&t, h).await.unwrap());
    }
    bus.fanout(&t, msg("refresh", Value::Null)).await.unwrap();
    let mut got = HashSet::new();
    for _ in 0..3 {
        let (i, method) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(method, "refresh");
        assert!(got.insert(i), "server {i} got the fanout twice");
    }
    // A cast on the same topic still goes to exactly one of them.
    bus.cast(&t, msg("once", Value::Null)).await.unwrap();
    let (_, method) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(method, "once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "a message arrived more often than it should");

    // A stopped server no longer gets fanouts.
    subs.pop().unwrap().stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus.fanout(&t, msg("again", Value::Null)).await.unwrap();
    let mut again = HashSet::new();
    for _ in 0..2 {
        let (i, _) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        again.insert(i);
    }
    assert_eq!(again, HashSet::from([0, 1]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "the stopped server got a fanout");
}

/// Casts `n` numbered messages from 16 tasks and checks each is handled exactly once.
pub(super) async fn many_casts_none_lost_or_duplicated(bus: Arc<dyn Bus>, n: usize) {
    let t = topic("many");
    let seen = Arc::new(Mutex::new((HashSet::new(), 0usize)));
    let s = seen.clone();
    let h = handler(move |m: Message| {
        let s = s.clone();
        async move {
            let seq = m.args["seq"].as_u64().unwrap_or(u64::MAX);
            let mut g = s.lock().unwrap();
            g.0.insert(seq);
            g.1 += 1;
            Ok(Value::Null)
        }
    });
    let _sub = bus.serve(&t, h).await.unwrap();
    let senders = (0..16).map(|k| {
        let bus = bus.clone();
        let t = t.clone();
        tokio::spawn(async move {
            for seq in (k..n).step_by(16) {
                bus.cast(&t, msg("count", json!({"seq": seq}))).await.unwrap();
            }
        })
    });
    for s in futures_util::future::join_all(senders).await {
        s.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().1 < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give duplicates a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let g = seen.lock().unwrap();
    assert_eq!(g.0.len(), n, "lost {} messages", n - g.0.len());
    assert_eq!(g.1, n, "{} duplicates", g.1 - n);
    assert!(g.0.iter().all(|s| (*s as usize) < n));
}

macro_rules! conformance_tests {
    ($make:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cast_delivery() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::cast_delivery(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cast_before_serve_waits_for_a_server() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::cast_before_serve_waits_for_a_server(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn call_round_trip() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::call_round_trip(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_calls() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::concurrent_calls(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pool_limits_concurrency() {
            let Some((bus, _guard)) = $make(4).await else { return };
            super::pool_limits_concurrency(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn slow_server_does_not_starve_others() {
            let Some((bus, _guard)) = $make(4).await else { return };
            super::slow_server_does_not_starve_others(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn remote_error() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::remote_error(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn handler_panic_is_a_remote_error() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::handler_panic_is_a_remote_error(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn timeout_names_topic_and_method() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::timeout_names_topic_and_method(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fanout_reaches_every_server() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::fanout_reaches_every_server(bus).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ten_thousand_casts_none_lost_or_duplicated() {
            let Some((bus, _guard)) = $make(64).await else { return };
            super::many_casts_none_lost_or_duplicated(bus, 10_000).await
        }
    };
}

async fn make_local(pool_size: usize) -> Option<(Arc<dyn Bus>, ())> {
    Some((Arc::new(LocalBus::new(pool_size)), ()))
}

mod local {
    conformance_tests!(super::make_local);
}

/// A private broker in a temp home, stopped by pid when dropped.
pub(crate) struct TestBroker {
    pub home: Home,
    pub config: Config,
    pub secrets: Secrets,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker, or returns `None` (after saying so) when RabbitMQ is not installed and
    /// `NOVABOX_SKIP_RABBITMQ=1` allows skipping.
    pub(crate) async fn start() -> Option<TestBroker> {
        if !crate::supervise::rabbitmq::is_installed() {
            if std::env::var_os("NOVABOX_SKIP_RABBITMQ").is_some_and(|v| v == "1") {
                eprintln!("rabbitmq-server is not installed and NOVABOX_SKIP_RABBITMQ=1: skipping an AMQP test");
                return None;
            }
            panic!(
                "the AMQP tests need rabbitmq-server (scripts/install-deps installs it); \
                 set NOVABOX_SKIP_RABBITMQ=1 to skip them"
            );
        }
        let dir = tempfile::Builder::new().prefix("novabox-bus-test-").tempdir().unwrap();
        let home = Home::at(dir.path());
        home.create_dirs().unwrap();
        let mut config = Config::default();
        config.bus.port = crate::supervise::free_port().unwrap();
        let secrets = Secrets::generate();
        let handle = RabbitMq::ensure_running(&home, &config, &secrets).await.unwrap();
        eprintln!("test broker on port {} ready in {:?}", config.bus.port, handle.startup);
        Some(TestBroker { home, config, secrets, url: handle.url, _dir: dir })
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Err(e) = RabbitMq::stop(&self.home) {
            eprintln!("stopping the test broker failed: {e}");
        }
    }
}

/// The broker shared by every AMQP test of this process, started by the first one. Statics
/// are never dropped, so an `atexit` hook stops it (and removes its home) when the test binary
/// exits, whether tests passed or failed.
async fn shared_broker() -> Option<&'static TestBroker> {
    static SHARED: tokio::sync::OnceCell<Option<TestBroker>> = tokio::sync::OnceCell::const_new();
    extern "C" fn stop_shared() {
        if let Some(Some(b)) = SHARED.get() {
            if let Err(e) = RabbitMq::stop(&b.home) {
                eprintln!("stopping the shared test broker failed: {e}");
            }
            let _ = std::fs::remove_dir_all(b.home.root());
        }
    }
    SHARED
        .get_or_init(|| async {
            let broker = TestBroker::start().await;
            if broker.is_some() {
                // SAFETY: registers a plain function with no arguments; it runs once at exit.
                unsafe { libc::atexit(stop_shared) };
            }
            broker
        })
        .await
        .as_ref()
}

fn test_options(pool_size: usize) -> AmqpOptions {
    AmqpOptions { pool_size, publish_timeout: Duration::from_secs(60), ..AmqpOptions::default() }
}

async fn make_amqp(pool_size: usize) -> Option<(Arc<dyn Bus>, &'static TestBroker)> {
    let broker = shared_broker().await?;
    let bus = AmqpBus::connect(&broker.url, test_options(pool_size)).await.unwrap();
    Some((Arc::new(bus), broker))
}

mod amqp {
    use super::*;

    conformance_tests!(super::make_amqp);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_restart_loses_no_acknowledged_cast() {
        tokio::time::timeout(RESTART_TEST_LIMIT, restart_during_cast_stream(false))
            .await
            .expect("the cast stream did not finish after a broker restart: a client never reconnected?")
    }

    /// A client that never reconnects would hang the suite (every cast waits out its publish
    /// timeout): fail instead, and say so.
    const RESTART_TEST_LIMIT: Duration = Duration::from_secs(240);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_crash_loses_no_acknowledged_cast() {
        tokio::time::timeout(RESTART_TEST_LIMIT, restart_during_cast_stream(true))
            .await
            .expect("the cast stream did not finish after a broker crash: a client never reconnected?")
    }

    /// Casts a stream of messages, restarts the broker in the middle (gracefully, or by
    /// SIGKILL), and checks every cast the broker confirmed is handled, at least once, by a
    /// server on another connection.
    async fn restart_during_cast_stream(crash: bool) {
        let Some(broker) = TestBroker::start().await else { return };
        let consumer = AmqpBus::connect(&broker.url, test_options(64)).await.unwrap();
        let producer = Arc::new(AmqpBus::connect(&broker.url, test_options(64)).await.unwrap());
        let t = topic("restart");
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let s = seen.clone();
        let h = handler(move |m: Message| {
            let s = s.clone();
            async move {
                s.lock().unwrap().insert(m.args["seq"].as_u64().unwrap_or(u64::MAX));
                Ok(Value::Null)
            }
        });
        let _sub = consumer.serve(&t, h).await.unwrap();
        // Calls and fanouts must work again after the restart too: the reply queue, the
        // server's queues and the fanout queue are all re-declared.
        let echo_topic = topic("restart-echo");
        let _echo = consumer.serve(&echo_topic, handler(|m: Message| async move { Ok(m.args) })).await.unwrap();
        let fan_topic = topic("restart-fanout");
        let (fan, mut fanned) = recorder();
        let _fan = consumer.serve(&fan_topic, fan).await.unwrap();
        assert_eq!(producer.call(&echo_topic, msg("echo", json!("before")), WAIT).await.unwrap(), json!("before"));

        let total = 3000u64;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (a, p, tt) = (acked.clone(), producer.clone(), t.clone());
        let stream = tokio::spawn(async move {
            let mut failed = 0;
            for seq in 0..total {
                match p.cast(&tt, msg("count", json!({"seq": seq}))).await {
                    Ok(()) => a.lock().unwrap().push(seq),
                    Err(_) => failed += 1,
                }
                if seq % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            failed
        });
        // Restart once a few hundred casts are through.
        while acked.lock().unwrap().len() < 300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let home = broker.home.clone();
        let config = broker.config.clone();
        tokio::task::spawn_blocking(move || {
            if crash {
                let crate::supervise::rabbitmq::BrokerStatus::Running { pid, .. } =
                    RabbitMq::status(&home, &config).unwrap()
                else {
                    panic!("the broker is not running")
                };
                // The whole group: the wrapper script and the Erlang VM.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                // The VM dies a moment after the script; its port is what matters.
                while !crate::supervise::port_is_free(config.bus.port) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            } else {
                RabbitMq::stop(&home).unwrap();
            }
        })
        .await
        .unwrap();
        let acked_before_restart = acked.lock().unwrap().len();
        RabbitMq::ensure_running(&broker.home, &broker.config, &broker.secrets).await.unwrap();
        let failed = stream.await.unwrap();

        let acked: Vec<u64> = acked.lock().unwrap().clone();
        assert!(acked.len() > acked_before_restart, "nothing was sent after the restart");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let missing: Vec<u64> = {
                let seen = seen.lock().unwrap();
                acked.iter().copied().filter(|s| !seen.contains(s)).collect()
            };
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} acknowledged casts were lost, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(producer.call(&echo_topic, msg("echo", json!("after")), WAIT).await.unwrap(), json!("after"));
        producer.fanout(&fan_topic, msg("hello", Value::Null)).await.unwrap();
        assert_eq!(recv(&mut fanned).await.method, "hello");
        eprintln!(
            "{}: {} casts acknowledged ({} before it), {} failed, all handled",
            if crash { "crash" } else { "restart" },
            acked.len(),
            acked_before_restart,
            failed
        );
        producer.close().await;
        consumer.close().await;
    }
}
