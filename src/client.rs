//! A small client of novabox's own REST API, for the CLI, `smoke` and the benchmarks. It
//! speaks exactly what python-openstackclient speaks: a password token, then the catalog.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the API at {url}: {source}. Is `novabox up` running?")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{method} {url} answered {status}: {message}")]
    Api { method: String, url: String, status: StatusCode, message: String },
    #[error("the API answered something unexpected: {0}")]
    Protocol(String),
    #[error("no {kind} named or with id {wanted}")]
    NotFound { kind: &'static str, wanted: String },
    #[error("several {kind}s are named {wanted}; use its id")]
    Ambiguous { kind: &'static str, wanted: String },
}

/// The resources the thin client lists and shows (read-only), and where each lives in its
/// service's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Image,
    Flavor,
    Network,
    Keypair,
    Volume,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Image => "image",
            Resource::Flavor => "flavor",
            Resource::Network => "network",
            Resource::Keypair => "keypair",
            Resource::Volume => "volume",
        }
    }

    /// The list's path (the detailed one where the API has two) and the key of its array.
    fn list(self) -> (&'static str, &'static str) {
        match self {
            Resource::Image => ("/images", "images"),
            Resource::Flavor => ("/flavors/detail", "flavors"),
            Resource::Network => ("/networks", "networks"),
            Resource::Keypair => ("/os-keypairs", "keypairs"),
            Resource::Volume => ("/volumes/detail", "volumes"),
        }
    }

    /// The field that identifies one: a keypair's name is its id in nova's API.
    pub fn key(self) -> &'static str {
        if self == Resource::Keypair {
            "name"
        } else {
            "id"
        }
    }

    /// The show path of the one whose key is `key`, and the key its body wraps it in (glance
    /// answers with the image itself).
    fn show(self, key: &str) -> (String, Option<&'static str>) {
        match self {
            Resource::Image => (format!("/images/{key}"), None),
            Resource::Flavor => (format!("/flavors/{key}"), Some("flavor")),
            Resource::Network => (format!("/networks/{key}"), Some("network")),
            Resource::Keypair => (format!("/os-keypairs/{key}"), Some("keypair")),
            Resource::Volume => (format!("/volumes/{key}"), Some("volume")),
        }
    }
}

/// The most pages a list follows; a server that keeps sending `next` is not followed forever.
const MAX_PAGES: usize = 1000;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    token: String,
    identity: String,
    compute: String,
    image: String,
    network: String,
    /// Block Storage v3, project-scoped; `None` when the catalog has none (not novabox).
    volume: Option<String>,
}

/// The message inside an OpenStack error body, whatever the service's format.
fn error_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return body.trim().to_string() };
    if let Some(obj) = v.as_object() {
        for inner in obj.values() {
            if let Some(m) = inner.get("message").and_then(Value::as_str) {
                return m.to_string();
            }
        }
    }
    body.trim().to_string()
}

impl Client {
    /// Authenticates with a password, scoped to `project`, and reads the catalog.
    pub async fn login(auth_url: &str, user: &str, password: &str, project: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let url = format!("{}/auth/tokens", auth_url.trim_end_matches('/'));
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }});
        let resp = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        let token = resp.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ClientError::Api { method: "POST".into(), url, status, message: error_message(&text) });
        }
        let token = token.ok_or_else(|| ClientError::Protocol("no X-Subject-Token header".into()))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let endpoint = |kind: &str| -> Result<String, ClientError> {
            doc["token"]["catalog"]
                .as_array()
                .and_then(|c| c.iter().find(|s| s["type"] == kind))
                .and_then(|s| s["endpoints"].as_array())
                .and_then(|eps| eps.iter().find(|e| e["interface"] == "public"))
                .and_then(|e| e["url"].as_str())
                .map(str::to_string)
                .ok_or_else(|| ClientError::Protocol(format!("no {kind} endpoint in the catalog")))
        };
        Ok(Client {
            identity: endpoint("identity")?,
            compute: endpoint("compute")?,
            image: endpoint("image")?,
            network: endpoint("network")?,
            volume: endpoint("block-storage").ok(),
            http,
            token,
        })
    }

    /// The token this client sends, for requests it has no method for.
    pub fn token(&self) -> &str {
        &self.token
    }

    async fn request(&self, method: Method, url: String, body: Option<Value>) -> Result<Value, ClientError> {
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("x-auth-token", &self.token)
            .header("openstack-api-version", "compute 2.79");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ClientError::Api { method: method.to_string(), url, status, message: error_message(&text) });
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{url}: {e}")))
    }

    pub async fn compute(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        self.request(method, format!("{}{path}", self.compute), body).await
    }

    pub async fn image(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        self.request(method, format!("{}/v2{path}", self.image), body).await
    }

    pub async fn network(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        self.request(method, format!("{}/v2.0{path}", self.network), body).await
    }

    /// A call to novabox's own API (`/novabox/v1...`: faults and the test clock), beside the
    /// identity endpoint's prefix.
    pub async fn novabox(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let base = self.identity.trim_end_matches('/').trim_end_matches("/v3").trim_end_matches("/identity");
        self.request(method, format!("{base}/novabox/v1{path}"), body).await
    }

    /// A Block Storage v3 call; `path` follows the project, e.g. `/volumes`.
    pub async fn volume(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let base = self
            .volume
            .as_deref()
            .ok_or_else(|| ClientError::Protocol("no block-storage endpoint in the catalog".into()))?;
        self.request(method, format!("{}{path}", base.trim_end_matches('/')), body).await
    }

    /// GET on the identity service, e.g. `/projects` (admins).
    pub async fn request_identity(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, format!("{}/v3{path}", self.identity), None).await
    }

    /// Uploads image data (`PUT /v2/images/{id}/file`).
    pub async fn upload_image(&self, id: &str, data: Vec<u8>) -> Result<(), ClientError> {
        self.put_image_file(id, data.into(), None).await
    }

    /// Uploads image data from a stream (`PUT /v2/images/{id}/file`), for images too large to
    /// hold in memory. No overall timeout: a large image takes as long as it takes.
    pub async fn upload_image_body(&self, id: &str, body: reqwest::Body) -> Result<(), ClientError> {
        self.put_image_file(id, body, Some(Duration::from_secs(7 * 24 * 3600))).await
    }

    /// `PUT /v2/images/{id}/file`, with `timeout` instead of the client's when given.
    async fn put_image_file(
        &self,
        id: &str,
        body: reqwest::Body,
        timeout: Option<Duration>,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v2/images/{id}/file", self.image);
        let mut req = self
            .http
            .put(&url)
            .header("x-auth-token", &self.token)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(ClientError::Api { method: "PUT".into(), url, status, message: error_message(&text) });
        }
        Ok(())
    }

    /// GET on the service that holds `r`.
    async fn get(&self, r: Resource, path: &str) -> Result<Value, ClientError> {
        match r {
            Resource::Image => self.image(Method::GET, path, None).await,
            Resource::Flavor | Resource::Keypair => self.compute(Method::GET, path, None).await,
            Resource::Network => self.network(Method::GET, path, None).await,
            Resource::Volume => self.volume(Method::GET, path, None).await,
        }
    }

    /// Every one of `r` the user sees, page after page: glance pages by default (its `next`
    /// path), nova, neutron and cinder when they must (a `rel: next` link in `<key>_links`).
    pub async fn list(&self, r: Resource) -> Result<Vec<Value>, ClientError> {
        let (path, key) = r.list();
        let mut page = self.get(r, path).await?;
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            let batch = page[key].as_array().cloned().unwrap_or_default();
            let empty = batch.is_empty();
            // nova wraps each keypair of its list: {"keypair": {...}}.
            items.extend(batch.into_iter().map(|i| if r == Resource::Keypair { i["keypair"].clone() } else { i }));
            let next = match page["next"].as_str() {
                Some(next) => Some(format!("{}{next}", self.image)),
                None => page[format!("{key}_links")]
                    .as_array()
                    .and_then(|links| links.iter().find(|l| l["rel"] == "next"))
                    .and_then(|l| l["href"].as_str())
                    .map(str::to_string),
            };
            match next {
                Some(url) if !empty => page = self.request(Method::GET, url, None).await?,
                _ => return Ok(items),
            }
        }
        Err(ClientError::Protocol(format!("the {} list did not end after {MAX_PAGES} pages", r.name())))
    }

    /// One of `r` by id (a keypair: by name) or by exact name, as its show answers it.
    pub async fn show(&self, r: Resource, name_or_id: &str) -> Result<Value, ClientError> {
        let key = self.find_id(r, name_or_id).await?;
        let (path, wrapper) = r.show(&key);
        let body = self.get(r, &path).await?;
        Ok(match wrapper {
            Some(w) => body[w].clone(),
            None => body,
        })
    }

    /// The id (a keypair: the name) of one of `r` by id or by exact name. An id wins over a
    /// name, as in python-openstackclient.
    pub async fn find_id(&self, r: Resource, name_or_id: &str) -> Result<String, ClientError> {
        let items = self.list(r).await?;
        let key = |i: &Value| i[r.key()].as_str().unwrap_or_default().to_string();
        if let Some(one) = items.iter().find(|i| i[r.key()] == name_or_id) {
            return Ok(key(one));
        }
        let named: Vec<&Value> = items.iter().filter(|i| i["name"] == name_or_id).collect();
        match named.as_slice() {
            [one] => Ok(key(one)),
            [] => Err(ClientError::NotFound { kind: r.name(), wanted: name_or_id.to_string() }),
            _ => Err(ClientError::Ambiguous { kind: r.name(), wanted: name_or_id.to_string() }),
        }
    }

    /// A server by id or by exact name.
    pub async fn find_server(&self, name_or_id: &str) -> Result<Value, ClientError> {
        if let Ok(v) = self.compute(Method::GET, &format!("/servers/{name_or_id}"), None).await {
            return Ok(v["server"].clone());
        }
        let list = self.compute(Method::GET, "/servers/detail", None).await?;
        let matches: Vec<&Value> =
            list["servers"].as_array().into_iter().flatten().filter(|s| s["name"] == name_or_id).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ClientError::Protocol(format!("no server named or with id {name_or_id}"))),
            _ => Err(ClientError::Protocol(format!("several servers are named {name_or_id}; use its id"))),
        }
    }

    /// Polls until the server reaches `status` (or ERROR, or disappears when `status` is
    /// "DELETED").
    pub async fn wait_for(&self, id: &str, status: &str, timeout: Duration) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.compute(Method::GET, &format!("/servers/{id}"), None).await {
                Ok(v) => {
                    let s = &v["server"];
                    if s["status"] == status {
                        return Ok(s.clone());
                    }
                    if s["status"] == "ERROR" {
                        let why = s["fault"]["message"].as_str().unwrap_or("no fault recorded");
                        return Err(ClientError::Protocol(format!("server {id} went to ERROR: {why}")));
                    }
                }
                Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) if status == "DELETED" => {
                    return Ok(Value::Null)
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClientError::Protocol(format!("server {id} did not reach {status} within {timeout:?}")));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}
