//! In-process HTTP tests: the real API router over a temporary home, driven with
//! `tower::ServiceExt::oneshot`, with users and projects seeded as `novabox init` seeds them
//! (admin in `admin`, demo in `demo`) plus a second ordinary project `alt` for tenancy tests,
//! and `reader`, who holds only the reader role in `demo`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::AppState;
use crate::bus::{Bus, BusError, Handler, Message, Subscription};
use crate::config::Config;
use crate::db::{Db, OpenOptions, SharedDb};
use crate::home::Home;

/// The image and network APIs never use the bus; this one refuses everything, so a test that
/// unexpectedly reaches the bus fails loudly instead of depending on the real in-process bus.
pub struct ClosedBus;

#[async_trait::async_trait]
impl Bus for ClosedBus {
    async fn cast(&self, _topic: &str, _message: Message) -> Result<(), BusError> {
        Err(BusError::Closed)
    }
    async fn call(&self, _topic: &str, _message: Message, _timeout: Duration) -> Result<Value, BusError> {
        Err(BusError::Closed)
    }
    async fn fanout(&self, _topic: &str, _message: Message) -> Result<(), BusError> {
        Err(BusError::Closed)
    }
    async fn serve(&self, _topic: &str, _handler: Arc<dyn Handler>) -> Result<Subscription, BusError> {
        Err(BusError::Closed)
    }
}

pub const PASSWORD: &str = "test-password";

/// One argon2 hash for every test user: hashing is slow in debug builds, and each user's
/// salt does not matter here.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| crate::secrets::hash_password(PASSWORD).expect("hash"))
}

pub struct Cloud {
    pub app: Router,
    pub state: AppState,
    pub admin_project: String,
    pub demo_project: String,
    pub alt_project: String,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Cloud {
    pub fn new() -> Cloud {
        Cloud::with_config(|_| {})
    }

    pub fn with_config(tweak: impl FnOnce(&mut Config)) -> Cloud {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::at(dir.path());
        home.create_dirs().expect("home");
        let db = Db::open(&home.db_file(), OpenOptions::default()).expect("db");
        let roles = db.ensure_default_roles().unwrap();
        let (admin_role, member_role, reader_role) = (&roles["admin"], &roles["member"], &roles["reader"]);
        let mut projects = Vec::new();
        for (user, project, roles) in [
            ("admin", "admin", vec![admin_role, member_role, reader_role]),
            ("demo", "demo", vec![member_role, reader_role]),
            ("alt", "alt", vec![member_role, reader_role]),
        ] {
            let pid = db.ensure_project(project, "").unwrap();
            let (uid, _) = db.ensure_user(user, password_hash(), &pid).unwrap();
            for r in roles {
                db.assign_role(&uid, &pid, r).unwrap();
            }
            if user == "admin" {
                // keystone's bootstrap makes the admin an admin of the system too.
                let system = crate::db::identity::ScopedAssignment {
                    actor_type: "user".into(),
                    actor_id: uid.clone(),
                    scope_type: "system".into(),
                    scope_id: "all".into(),
                    role_id: admin_role.clone(),
                };
                db.assign_scoped_role(&system).unwrap();
            }
            projects.push(pid);
        }
        // The reader persona: only the reader role, in demo's project.
        let (reader, _) = db.ensure_user("reader", password_hash(), &projects[1]).unwrap();
        db.assign_role(&reader, &projects[1], reader_role).unwrap();
        db.ensure_project("service", "").unwrap();
        db.seed_default_flavors().unwrap();
        let mut config = Config::default();
        tweak(&mut config);
        let logins = Arc::new(crate::api::logins::Logins::new(&config.api));
        let state = AppState {
            db: SharedDb::new(db),
            config: Arc::new(config),
            bus: Arc::new(ClosedBus),
            home,
            logins,
            faults: crate::faults::FaultTable::disabled(),
        };
        Cloud {
            app: super::router(state.clone()),
            state,
            admin_project: projects[0].clone(),
            demo_project: projects[1].clone(),
            alt_project: projects[2].clone(),
            _dir: dir,
        }
    }

    /// The same cloud talking to `bus` (for tests that watch what the API sends).
    pub fn with_bus(mut self, bus: Arc<dyn Bus>) -> Cloud {
        self.state.bus = bus;
        self.app = super::router(self.state.clone());
        self
    }

    /// A project-scoped token for `user` (admin, demo, alt, or reader in demo's project),
    /// through the identity API.
    pub async fn token(&self, user: &str) -> String {
        let project = if user == "reader" { "demo" } else { user };
        self.token_in(user, project).await
    }

    /// A token for `user` scoped to the project named `project`.
    pub async fn token_in(&self, user: &str, project: &str) -> String {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"id": "default"}, "password": PASSWORD}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }});
        let r = self.call(Method::POST, "/identity/v3/auth/tokens", None, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        r.headers["x-subject-token"].to_str().unwrap().to_string()
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        Reply { status, headers, body }
    }

    pub async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri).header("host", "127.0.0.1:8774");
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.expect("request")).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::GET, uri, Some(token), None).await
    }
    pub async fn post(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(token), Some(body)).await
    }
    pub async fn put(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, uri, Some(token), Some(body)).await
    }
    pub async fn delete(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::DELETE, uri, Some(token), None).await
    }
}
