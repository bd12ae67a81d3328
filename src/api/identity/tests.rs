//! The admin API and the personas, through the real router.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api::testing::{Cloud, Reply, PASSWORD};

fn keystone_error(r: &Reply, code: u16) -> String {
    assert_eq!(r.status.as_u16(), code, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], code);
    assert!(e["title"].is_string(), "{e}");
    e["message"].as_str().unwrap().to_string()
}

async fn patch(c: &Cloud, uri: &str, token: &str, body: Value) -> Reply {
    c.call(Method::PATCH, uri, Some(token), Some(body)).await
}

async fn login(c: &Cloud, user: &str, password: &str, project: &str) -> Reply {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}},
    }});
    c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(body)).await
}

fn subject(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.headers["x-subject-token"].to_str().unwrap().to_string()
}

/// An admin makes a project, a user in it with the member role; the user logs in.
async fn project_with_member(c: &Cloud, admin: &str, project: &str, user: &str) -> (String, String) {
    let r = c.post("/identity/v3/projects", admin, json!({"project": {"name": project, "description": "d"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let pid = r.json()["project"]["id"].as_str().unwrap().to_string();
    let body = json!({"user": {"name": user, "password": "pw-1", "default_project_id": pid, "email": "u@example.org"}});
    let r = c.post("/identity/v3/users", admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let uid = r.json()["user"]["id"].as_str().unwrap().to_string();
    let member =
        c.get("/identity/v3/roles?name=member", admin).await.json()["roles"][0]["id"].as_str().unwrap().to_string();
    let r = c.put(&format!("/identity/v3/projects/{pid}/users/{uid}/roles/{member}"), admin, json!({})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    (pid, uid)
}

#[tokio::test]
async fn an_admin_creates_a_project_and_a_member_who_gets_implied_roles() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (pid, uid) = project_with_member(&c, &admin, "p1", "u1").await;

    let r = login(&c, "u1", "pw-1", "p1").await;
    let token = r.json()["token"].clone();
    subject(&r);
    let mut roles: Vec<&str> = token["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    roles.sort();
    assert_eq!(roles, ["member", "reader"], "member implies reader");
    assert_eq!(token["project"]["id"], pid.as_str());
    assert_eq!(token["user"]["domain"], json!({"id": "default", "name": "Default"}));

    // An admin's token lists every role the admin role implies.
    let req = axum::http::Request::get("/identity/v3/auth/tokens")
        .header("x-auth-token", &admin)
        .header("x-subject-token", &admin)
        .body(axum::body::Body::empty())
        .unwrap();
    let validated = c.send(req).await.json();
    let mut admin_roles: Vec<&str> =
        validated["token"]["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    admin_roles.sort();
    assert_eq!(admin_roles, ["admin", "manager", "member", "reader"]);

    let shown = c.get(&format!("/identity/v3/users/{uid}"), &admin).await.json()["user"].clone();
    assert_eq!(shown["default_project_id"], pid.as_str());
    assert_eq!(shown["email"], "u@example.org");
    assert_eq!(shown["domain_id"], "default");
    assert!(shown.get("password").is_none() && shown.get("password_hash").is_none());

    let list = c.get("/identity/v3/projects?name=p1", &admin).await.json();
    assert_eq!(list["projects"].as_array().unwrap().len(), 1);
    assert_eq!(list["projects"][0]["description"], "d");
    assert_eq!(c.get("/identity/v3/projects?enabled=false", &admin).await.json()["projects"], json!([]));
    assert_eq!(c.get("/identity/v3/users?name=u1", &admin).await.json()["users"][0]["id"], uid.as_str());
    assert_eq!(c.get("/identity/v3/users?domain_id=other", &admin).await.json()["users"], json!([]));
}

#[tokio::test]
async fn errors_are_keystones_409_404_and_400() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"name": "demo"}})).await;
    assert_eq!(
        keystone_error(&r, 409),
        "Conflict occurred attempting to store project - Duplicate entry found with name demo at domain ID default."
    );
    let r = c.post("/identity/v3/users", &admin, json!({"user": {"name": "alt"}})).await;
    assert!(keystone_error(&r, 409).contains("Duplicate entry found with name alt"));
    let r = c.get("/identity/v3/projects/nope", &admin).await;
    assert_eq!(keystone_error(&r, 404), "Could not find project: nope.");
    let r = c.delete("/identity/v3/users/nope", &admin).await;
    assert_eq!(keystone_error(&r, 404), "Could not find user: nope.");
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"description": "no name"}})).await;
    assert!(keystone_error(&r, 400).contains("'name'"));
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"name": "x", "enabled": "yes"}})).await;
    assert!(keystone_error(&r, 400).contains("'enabled'"));
    let r = c.post("/identity/v3/users", &admin, json!({"user": {"name": 7}})).await;
    assert!(keystone_error(&r, 400).contains("'name'"));
    let r = c.post("/identity/v3/users", &admin, json!({"user": {"name": "x", "default_project_id": "nope"}})).await;
    assert!(keystone_error(&r, 400).contains("'default_project_id'"));
    let r = c.post("/identity/v3/projects", &admin, json!({"projects": {}})).await;
    assert!(keystone_error(&r, 400).contains("'project'"));
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"name": "x", "domain_id": "nope"}})).await;
    assert_eq!(keystone_error(&r, 404), "Could not find domain: nope.");
}

#[tokio::test]
async fn non_admins_may_read_themselves_only_and_write_nothing() {
    let c = Cloud::new();
    let demo = c.token("demo").await;
    let r = c.post("/identity/v3/projects", &demo, json!({"project": {"name": "mine"}})).await;
    assert_eq!(
        keystone_error(&r, 403),
        "You are not authorized to perform the requested action: identity:create_project."
    );
    for uri in ["/identity/v3/projects", "/identity/v3/users", "/identity/v3/domains", "/identity/v3/role_assignments"]
    {
        assert_eq!(c.get(uri, &demo).await.status, StatusCode::FORBIDDEN, "{uri}");
    }
    let own = c.get(&format!("/identity/v3/projects/{}", c.demo_project), &demo).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    let other = c.get(&format!("/identity/v3/projects/{}", c.alt_project), &demo).await;
    assert_eq!(
        keystone_error(&other, 403),
        "You are not authorized to perform the requested action: identity:get_project."
    );
    let me = c.get("/identity/v3/auth/tokens", &demo).await;
    assert_eq!(me.status, StatusCode::BAD_REQUEST);
    let uid = c.state.db.with(|db| db.user_by_name("demo")).unwrap().unwrap().id;
    assert_eq!(c.get(&format!("/identity/v3/users/{uid}"), &demo).await.status, StatusCode::OK);
    assert_eq!(c.get("/identity/v3/domains/default", &demo).await.status, StatusCode::OK, "its project's domain");
    let alt_uid = c.state.db.with(|db| db.user_by_name("alt")).unwrap().unwrap().id;
    assert_eq!(c.get(&format!("/identity/v3/users/{alt_uid}"), &demo).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.delete(&format!("/identity/v3/users/{alt_uid}"), &demo).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn disabling_or_deleting_a_project_or_user_ends_its_tokens_at_once() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (pid, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    let token = subject(&login(&c, "u1", "pw-1", "p1").await);
    let servers = "/compute/v2.1/servers";
    assert_eq!(c.get(servers, &token).await.status, StatusCode::OK);

    let r = patch(&c, &format!("/identity/v3/projects/{pid}"), &admin, json!({"project": {"enabled": false}})).await;
    assert_eq!(r.json()["project"]["enabled"], false);
    assert_eq!(c.get(servers, &token).await.status, StatusCode::UNAUTHORIZED, "disabled project");
    assert_eq!(login(&c, "u1", "pw-1", "p1").await.status, StatusCode::UNAUTHORIZED);
    patch(&c, &format!("/identity/v3/projects/{pid}"), &admin, json!({"project": {"enabled": true, "name": "p1b"}}))
        .await;
    let token = subject(&login(&c, "u1", "pw-1", "p1b").await);

    let r = patch(&c, &format!("/identity/v3/users/{uid}"), &admin, json!({"user": {"enabled": false}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(c.get(servers, &token).await.status, StatusCode::UNAUTHORIZED, "disabled user");
    patch(&c, &format!("/identity/v3/users/{uid}"), &admin, json!({"user": {"enabled": true}})).await;
    let token = subject(&login(&c, "u1", "pw-1", "p1b").await);

    assert_eq!(c.delete(&format!("/identity/v3/users/{uid}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(servers, &token).await.status, StatusCode::UNAUTHORIZED, "deleted user");
    assert_eq!(c.get(&format!("/identity/v3/users/{uid}"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.delete(&format!("/identity/v3/projects/{pid}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(&format!("/identity/v3/projects/{pid}"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.delete(&format!("/identity/v3/projects/{pid}"), &admin).await.status, StatusCode::NOT_FOUND);
    // Names come free again, as tempest's dynamic credentials expect.
    project_with_member(&c, &admin, "p1b", "u1").await;
}

#[tokio::test]
async fn a_project_and_user_other_services_name_can_still_be_deleted() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (pid, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    // Nova's rows name the project and the user; keystone deletes them regardless.
    c.state
        .db
        .with(|db| {
            db.conn().execute(
                "INSERT INTO images (id, name, owner, status, created_at) VALUES ('i1', 'x', ?1, 'active', '2026-01-01T00:00:00Z')",
                [&pid],
            )
        })
        .unwrap();
    assert_eq!(c.delete(&format!("/identity/v3/users/{uid}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.delete(&format!("/identity/v3/projects/{pid}"), &admin).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn grants_are_put_checked_listed_and_revoked() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (pid, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    let reader =
        c.get("/identity/v3/roles?name=reader", &admin).await.json()["roles"][0]["id"].as_str().unwrap().to_string();
    let grant = format!("/identity/v3/projects/{pid}/users/{uid}/roles/{reader}");
    assert_eq!(c.call(Method::HEAD, &grant, Some(&admin), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.put(&grant, &admin, json!({})).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.call(Method::HEAD, &grant, Some(&admin), None).await.status, StatusCode::NO_CONTENT);
    let listed = c.get(&format!("/identity/v3/projects/{pid}/users/{uid}/roles"), &admin).await.json();
    let mut names: Vec<&str> =
        listed["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["member", "reader"]);

    let r = c.get(&format!("/identity/v3/role_assignments?user.id={uid}&include_names"), &admin).await.json();
    let rows = r["role_assignments"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r}");
    assert_eq!(rows[0]["user"]["name"], "u1");
    assert_eq!(rows[0]["scope"]["project"]["name"], "p1");
    assert_eq!(rows[0]["scope"]["project"]["domain"]["name"], "Default");
    assert!(rows[0]["links"]["assignment"].as_str().unwrap().contains(&pid));

    assert_eq!(c.delete(&grant, &admin).await.status, StatusCode::NO_CONTENT);
    let r = c.delete(&grant, &admin).await;
    assert!(keystone_error(&r, 404).starts_with("Could not find role assignment"));
    // Effective assignments show the implied reader again, filtered by role.
    let r = c
        .get(&format!("/identity/v3/role_assignments?scope.project.id={pid}&effective&role.id={reader}"), &admin)
        .await;
    assert_eq!(r.json()["role_assignments"].as_array().unwrap().len(), 1, "{}", r.text());
    let r = c.get(&format!("/identity/v3/role_assignments?scope.project.id={pid}&role.id={reader}"), &admin).await;
    assert_eq!(r.json()["role_assignments"], json!([]));

    let r = c.put(&format!("/identity/v3/projects/nope/users/{uid}/roles/{reader}"), &admin, json!({})).await;
    assert_eq!(keystone_error(&r, 404), "Could not find project: nope.");
    let r = c.put(&format!("/identity/v3/projects/{pid}/users/{uid}/roles/nope"), &admin, json!({})).await;
    assert_eq!(keystone_error(&r, 404), "Could not find role: nope.");
}

#[tokio::test]
async fn roles_and_their_inferences() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let roles = c.get("/identity/v3/roles", &admin).await.json();
    let mut names: Vec<&str> = roles["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["admin", "manager", "member", "reader", "service"]);
    let inf = c.get("/identity/v3/role_inferences", &admin).await.json();
    let pairs: Vec<(String, String)> = inf["role_inferences"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let p = r["prior_role"]["name"].as_str().unwrap().to_string();
            r["implies"].as_array().unwrap().iter().map(move |i| (p.clone(), i["name"].as_str().unwrap().to_string()))
        })
        .collect();
    assert_eq!(pairs.len(), 3);
    assert!(pairs.contains(&("admin".into(), "manager".into())));
    let r = c.post("/identity/v3/roles", &admin, json!({"role": {"name": "auditor"}})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["role"]["id"].as_str().unwrap().to_string();
    let r = c.post("/identity/v3/roles", &admin, json!({"role": {"name": "auditor"}})).await;
    assert!(keystone_error(&r, 409).contains("Duplicate entry found with name auditor"));
    assert_eq!(c.get(&format!("/identity/v3/roles/{id}"), &admin).await.json()["role"]["name"], "auditor");
    assert_eq!(c.delete(&format!("/identity/v3/roles/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(&format!("/identity/v3/roles/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let admin_id = c.state.db.with(|db| db.user_by_name("admin")).unwrap().unwrap().id;
    let admin_role =
        c.get("/identity/v3/roles?name=admin", &admin).await.json()["roles"][0]["id"].as_str().unwrap().to_string();
    let r = c.delete(&format!("/identity/v3/users/{admin_id}"), &admin).await;
    assert!(keystone_error(&r, 403).contains("no enabled user with the admin role"));
    // The admin of the system is an admin too; without that role, its project role is the last.
    let system = format!("/identity/v3/system/users/{admin_id}/roles/{admin_role}");
    assert_eq!(c.delete(&system, &admin).await.status, StatusCode::NO_CONTENT);
    let r = patch(&c, &format!("/identity/v3/users/{admin_id}"), &admin, json!({"user": {"enabled": false}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let grant = format!("/identity/v3/projects/{}/users/{admin_id}/roles/{admin_role}", c.admin_project);
    assert_eq!(c.delete(&grant, &admin).await.status, StatusCode::FORBIDDEN);
    let r = c.delete(&format!("/identity/v3/projects/{}", c.admin_project), &admin).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(c.get("/compute/v2.1/servers", &admin).await.status, StatusCode::OK, "nothing changed");
    // With a second admin, the first may go.
    let (pid, uid) = project_with_member(&c, &admin, "ops", "admin2").await;
    c.put(&format!("/identity/v3/projects/{pid}/users/{uid}/roles/{admin_role}"), &admin, json!({})).await;
    assert_eq!(c.delete(&grant, &admin).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn domains_default_and_others() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let r = c.get("/identity/v3/domains?name=Default", &admin).await.json();
    assert_eq!(r["domains"][0]["id"], "default");
    assert_eq!(r["domains"].as_array().unwrap().len(), 1);
    let r = c.post("/identity/v3/domains", &admin, json!({"domain": {"name": "d2"}})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json()["domain"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        c.post("/identity/v3/domains", &admin, json!({"domain": {"name": "d2"}})).await.status,
        StatusCode::CONFLICT
    );
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"name": "in-d2", "domain_id": id}})).await;
    assert_eq!(r.json()["project"]["domain_id"], id.as_str());
    let pid = r.json()["project"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        c.get(&format!("/identity/v3/projects?domain_id={id}"), &admin).await.json()["projects"][0]["id"],
        pid.as_str()
    );
    let body = json!({"user": {"name": "d2-user", "password": "pw-1", "domain_id": id}});
    let uid = c.post("/identity/v3/users", &admin, body).await.json()["user"]["id"].as_str().unwrap().to_string();
    let member =
        c.get("/identity/v3/roles?name=member", &admin).await.json()["roles"][0]["id"].as_str().unwrap().to_string();
    c.put(&format!("/identity/v3/projects/{pid}/users/{uid}/roles/{member}"), &admin, json!({})).await;
    // The user's domain must agree with the one the login names.
    assert_eq!(login(&c, "d2-user", "pw-1", "in-d2").await.status, StatusCode::UNAUTHORIZED, "not in Default");
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": "d2-user", "domain": {"name": "d2"}, "password": "pw-1"}}},
        "scope": {"project": {"name": "in-d2", "domain": {"id": id}}},
    }});
    let r = c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(body.clone())).await;
    assert_eq!(r.json()["token"]["user"]["domain"], json!({"id": id, "name": "d2"}));
    let token = subject(&r);
    assert_eq!(c.get("/compute/v2.1/servers", &token).await.status, StatusCode::OK);

    let r = c.delete(&format!("/identity/v3/domains/{id}"), &admin).await;
    assert!(keystone_error(&r, 403).contains("Cannot delete a domain that is enabled"));
    patch(&c, &format!("/identity/v3/domains/{id}"), &admin, json!({"domain": {"enabled": false}})).await;
    assert_eq!(c.get("/compute/v2.1/servers", &token).await.status, StatusCode::UNAUTHORIZED, "disabled domain");
    let r = c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.delete(&format!("/identity/v3/domains/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&format!("/identity/v3/projects/{pid}"), &admin).await.status,
        StatusCode::NOT_FOUND,
        "its projects go too"
    );
    let r = patch(&c, "/identity/v3/domains/default", &admin, json!({"domain": {"enabled": false}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_user_changes_its_own_password_with_the_original() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (_, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    let old_token = subject(&login(&c, "u1", "pw-1", "p1").await);
    let uri = format!("/identity/v3/users/{uid}/password");
    let r = c.post(&uri, &old_token, json!({"user": {"original_password": "wrong", "password": "pw-2"}})).await;
    keystone_error(&r, 401);
    let r = c.post(&uri, &old_token, json!({"user": {"password": "pw-2"}})).await;
    assert!(keystone_error(&r, 400).contains("'original_password'"));
    let r = c.post(&uri, &old_token, json!({"user": {"original_password": "pw-1", "password": "pw-2"}})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(c.get("/compute/v2.1/servers", &old_token).await.status, StatusCode::UNAUTHORIZED, "old tokens revoked");
    assert_eq!(login(&c, "u1", "pw-1", "p1").await.status, StatusCode::UNAUTHORIZED);
    subject(&login(&c, "u1", "pw-2", "p1").await);
    // An admin resets it through an update.
    patch(&c, &format!("/identity/v3/users/{uid}"), &admin, json!({"user": {"password": "pw-3"}})).await;
    subject(&login(&c, "u1", "pw-3", "p1").await);
    assert_eq!(login(&c, "demo", PASSWORD, "demo").await.status, StatusCode::CREATED);
}

/// The reader persona reads but writes nothing, in each service's own words; a member writes.
#[tokio::test]
async fn a_reader_reads_and_is_refused_every_write_in_the_services_words() {
    let c = Cloud::new();
    let reader = c.token("reader").await;
    let demo = c.token("demo").await;
    let volumes = format!("/volume/v3/{}/volumes", c.demo_project);
    for uri in ["/compute/v2.1/servers", "/network/v2.0/networks", "/image/v2/images", volumes.as_str()] {
        let r = c.get(uri, &reader).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
    }
    let r = c.post("/compute/v2.1/servers", &reader, json!({"server": {"name": "s"}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["forbidden"]["message"], "Policy doesn't allow project_member_api to be performed.");
    let r = c.post("/network/v2.0/networks", &reader, json!({"network": {"name": "n"}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["NeutronError"]["type"], "PolicyNotAuthorized");
    assert_eq!(r.json()["NeutronError"]["message"], "(rule:project_member) is disallowed by policy");
    let r = c.post("/image/v2/images", &reader, json!({"name": "i"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("You are not authorized to complete project_member action."), "{}", r.text());
    let r = c.post(&volumes, &reader, json!({"volume": {"size": 1}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["forbidden"]["message"], "Policy doesn't allow project_member_api to be performed.");
    let net = c.get("/network/v2.0/networks", &reader).await;
    assert_eq!(net.status, StatusCode::OK);
    let r = c.call(Method::DELETE, "/network/v2.0/networks/x", Some(&reader), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A keypair is the user's own, not the project's: nova lets a reader make one.
    let r = c.post("/compute/v2.1/os-keypairs", &reader, json!({"keypair": {"name": "k"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // The member (and the admin, whose role implies member) writes.
    let r = c.post("/network/v2.0/networks", &demo, json!({"network": {"name": "n"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let admin = c.token("admin").await;
    let r = c.post("/image/v2/images", &admin, json!({"name": "i"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn a_group_gives_its_members_its_roles() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"name": "p1"}})).await;
    let pid = r.json()["project"]["id"].as_str().unwrap().to_string();
    let r = c.post("/identity/v3/users", &admin, json!({"user": {"name": "u1", "password": "pw-1"}})).await;
    let uid = r.json()["user"]["id"].as_str().unwrap().to_string();
    let r = c.post("/identity/v3/groups", &admin, json!({"group": {"name": "devs", "description": "d"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let gid = r.json()["group"]["id"].as_str().unwrap().to_string();
    let r = c.post("/identity/v3/groups", &admin, json!({"group": {"name": "devs"}})).await;
    assert!(keystone_error(&r, 409).contains("Duplicate entry found with name devs"));
    let member =
        c.get("/identity/v3/roles?name=member", &admin).await.json()["roles"][0]["id"].as_str().unwrap().to_string();

    let grant = format!("/identity/v3/projects/{pid}/groups/{gid}/roles/{member}");
    assert_eq!(c.put(&grant, &admin, json!({})).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.call(Method::HEAD, &grant, Some(&admin), None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(login(&c, "u1", "pw-1", "p1").await.status, StatusCode::UNAUTHORIZED, "no role yet");

    let membership = format!("/identity/v3/groups/{gid}/users/{uid}");
    assert_eq!(c.call(Method::HEAD, &membership, Some(&admin), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.put(&membership, &admin, json!({})).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.call(Method::HEAD, &membership, Some(&admin), None).await.status, StatusCode::NO_CONTENT);
    let r = login(&c, "u1", "pw-1", "p1").await;
    let mut roles: Vec<String> = r.json()["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    roles.sort();
    assert_eq!(roles, ["member", "reader"]);
    let token = subject(&r);
    let groups = c.get(&format!("/identity/v3/users/{uid}/groups"), &token).await.json();
    assert_eq!(groups["groups"][0]["name"], "devs", "a user sees its own groups");
    let users = c.get(&format!("/identity/v3/groups/{gid}/users"), &admin).await.json();
    assert_eq!(users["users"][0]["id"], uid.as_str());

    // Listed as the group's, or effectively as the member's (with the implied reader).
    let r = c.get(&format!("/identity/v3/role_assignments?scope.project.id={pid}"), &admin).await.json();
    assert_eq!(r["role_assignments"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["role_assignments"][0]["group"]["id"], gid.as_str());
    let r = c
        .get(&format!("/identity/v3/role_assignments?scope.project.id={pid}&effective&include_names"), &admin)
        .await
        .json();
    let rows = r["role_assignments"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r}");
    assert!(rows.iter().all(|a| a["user"]["name"] == "u1" && a["links"]["membership"].is_string()), "{r}");
    let r = c.get(&format!("/identity/v3/role_assignments?user.id={uid}&effective"), &admin).await.json();
    assert_eq!(r["role_assignments"].as_array().unwrap().len(), 2, "{r}");

    // Leaving the group takes the role away at once.
    assert_eq!(c.delete(&membership, &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get("/compute/v2.1/servers", &token).await.status, StatusCode::UNAUTHORIZED);
    let r = c.delete(&membership, &admin).await;
    assert_eq!(keystone_error(&r, 404), format!("User {uid} is not a member of group {gid}."));
    assert_eq!(c.delete(&format!("/identity/v3/groups/{gid}"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(&format!("/identity/v3/groups/{gid}"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        c.get(&format!("/identity/v3/role_assignments?scope.project.id={pid}"), &admin).await.json()
            ["role_assignments"],
        json!([])
    );
}

#[tokio::test]
async fn domain_and_system_scoped_tokens_for_keystones_api_only() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let admin_id = c.state.db.with(|db| db.user_by_name("admin")).unwrap().unwrap().id;
    let roles = c.get("/identity/v3/roles", &admin).await.json();
    let role = |name: &str| {
        roles["roles"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let scoped = |scope: Value| {
        json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": PASSWORD}}},
            "scope": scope,
        }})
    };

    // The admin is an admin of the system, as keystone's bootstrap makes it.
    assert_eq!(c.get("/identity/v3/auth/system", &admin).await.json()["system"], json!([{"all": true}]));
    let r =
        c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(scoped(json!({"system": {"all": true}})))).await;
    assert_eq!(r.json()["token"]["system"], json!({"all": true}), "{}", r.text());
    assert!(r.json()["token"].get("project").is_none());
    let system = subject(&r);
    assert_eq!(c.get("/identity/v3/users", &system).await.status, StatusCode::OK, "keystone takes it");
    let r = c.get("/compute/v2.1/servers", &system).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "other services act in a project: {}", r.text());
    let r = c.get("/identity/v3/role_assignments?scope.system=all&include_names", &system).await.json();
    assert_eq!(r["role_assignments"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["role_assignments"][0]["scope"], json!({"system": {"all": true}}));
    assert_eq!(r["role_assignments"][0]["user"]["name"], "admin");

    // No role on the domain yet: no domain-scoped token.
    let r = c
        .call(Method::POST, "/identity/v3/auth/tokens", None, Some(scoped(json!({"domain": {"id": "default"}}))))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.get("/identity/v3/auth/domains", &admin).await.json()["domains"], json!([]));
    let grant = format!("/identity/v3/domains/default/users/{admin_id}/roles/{}", role("reader"));
    assert_eq!(c.put(&grant, &admin, json!({})).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.call(Method::HEAD, &grant, Some(&admin), None).await.status, StatusCode::NO_CONTENT);
    let listed = c.get(&format!("/identity/v3/domains/default/users/{admin_id}/roles"), &admin).await.json();
    assert_eq!(listed["roles"][0]["name"], "reader");
    assert_eq!(c.get("/identity/v3/auth/domains", &admin).await.json()["domains"][0]["id"], "default");
    let r = c
        .call(Method::POST, "/identity/v3/auth/tokens", None, Some(scoped(json!({"domain": {"name": "Default"}}))))
        .await;
    assert_eq!(r.json()["token"]["domain"], json!({"id": "default", "name": "Default"}), "{}", r.text());
    assert_eq!(r.json()["token"]["roles"].as_array().unwrap().len(), 1, "reader implies nothing");
    assert_eq!(r.json()["token"]["roles"][0]["name"], "reader");
    let domain_token = subject(&r);
    assert_eq!(c.get("/identity/v3/users", &domain_token).await.status, StatusCode::FORBIDDEN, "a reader is no admin");
    let r = c.get("/identity/v3/role_assignments?scope.domain.id=default", &admin).await.json();
    assert_eq!(r["role_assignments"][0]["scope"]["domain"]["id"], "default", "{r}");
    // Losing the role ends the token.
    assert_eq!(c.delete(&grant, &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get("/identity/v3/auth/domains", &domain_token).await.status, StatusCode::UNAUTHORIZED);
    let r = c
        .put(&format!("/identity/v3/domains/default/teams/{admin_id}/roles/{}", role("reader")), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_application_credential_logs_in_with_its_roles_only() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (pid, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    let token = subject(&login(&c, "u1", "pw-1", "p1").await);
    let uri = format!("/identity/v3/users/{uid}/application_credentials");
    let body = json!({"application_credential": {"name": "ci", "roles": [{"name": "reader"}]}});
    let r = c.post(&uri, &token, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let cred = r.json()["application_credential"].clone();
    assert_eq!(cred["project_id"], pid.as_str());
    assert_eq!(cred["roles"][0]["name"], "reader");
    let (id, secret) = (cred["id"].as_str().unwrap().to_string(), cred["secret"].as_str().unwrap().to_string());
    let r = c.post(&uri, &token, json!({"application_credential": {"name": "ci"}})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = c.post(&uri, &token, json!({"application_credential": {"name": "x", "roles": [{"name": "admin"}]}})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a role the user does not have: {}", r.text());
    let listed = c.get(&uri, &token).await.json();
    assert_eq!(listed["application_credentials"].as_array().unwrap().len(), 1);
    assert!(listed["application_credentials"][0].get("secret").is_none(), "the secret is shown once");
    let other = format!("/identity/v3/users/{uid}/application_credentials");
    assert_eq!(c.get(&other, &c.token("demo").await).await.status, StatusCode::FORBIDDEN);

    let auth = |secret: &str| {
        json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": id, "secret": secret}}}})
    };
    assert_eq!(
        c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(auth("wrong"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(auth(&secret))).await;
    assert_eq!(r.json()["token"]["project"]["id"], pid.as_str(), "{}", r.text());
    assert_eq!(r.json()["token"]["application_credential"]["restricted"], true);
    let names: Vec<String> = r.json()["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["reader"], "its roles, not the user's member");
    let app_token = subject(&r);
    // So it reads, and is refused writes, as a reader.
    assert_eq!(c.get("/network/v2.0/networks", &app_token).await.status, StatusCode::OK);
    assert_eq!(
        c.post("/network/v2.0/networks", &app_token, json!({"network": {"name": "n"}})).await.status,
        StatusCode::FORBIDDEN
    );
    let r = c.post(&uri, &app_token, json!({"application_credential": {"name": "more"}})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a restricted credential makes no others");
    // By name with its user, too.
    let body = json!({"auth": {"identity": {"methods": ["application_credential"],
        "application_credential": {"name": "ci", "secret": secret, "user": {"name": "u1", "domain": {"id": "default"}}}}}});
    assert_eq!(c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(body)).await.status, StatusCode::CREATED);

    assert_eq!(c.delete(&format!("{uri}/{id}"), &token).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get("/network/v2.0/networks", &app_token).await.status,
        StatusCode::UNAUTHORIZED,
        "its tokens end with it"
    );
    assert_eq!(
        c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(auth(&secret))).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// What tempest's identity tests found: implied-role rules, role renames, a rescoped token's
/// methods, a revoked token's 404, the versions at `/identity/` and an expiry's format.
#[tokio::test]
async fn implied_role_rules_are_made_checked_listed_and_removed() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let mut ids = Vec::new();
    for name in ["r0", "r1", "r2"] {
        let r = c.post("/identity/v3/roles", &admin, json!({"role": {"name": name}})).await;
        ids.push(r.json()["role"]["id"].as_str().unwrap().to_string());
    }
    let rule = |p: &str, i: &str| format!("/identity/v3/roles/{p}/implies/{i}");
    let r = c.put(&rule(&ids[0], &ids[1]), &admin, json!(null)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["role_inference"]["prior_role"]["name"], "r0");
    assert_eq!(r.json()["role_inference"]["implies"]["name"], "r1");
    assert!(r.json()["role_inference"]["implies"]["links"]["self"].is_string());
    c.put(&rule(&ids[0], &ids[2]), &admin, json!(null)).await;
    assert_eq!(c.call(Method::HEAD, &rule(&ids[0], &ids[1]), Some(&admin), None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(&rule(&ids[0], &ids[1]), &admin).await.status, StatusCode::OK);
    let listed = c.get(&format!("/identity/v3/roles/{}/implies", ids[0]), &admin).await.json();
    let mut implied: Vec<&str> =
        listed["role_inference"]["implies"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    implied.sort();
    assert_eq!(implied, ["r1", "r2"], "{listed}");
    let all = c.get("/identity/v3/role_inferences", &admin).await.json();
    assert_eq!(all["role_inferences"].as_array().unwrap().len(), 4, "admin's three and r0's: {all}");
    // A grant of r0 carries r1 and r2 in the token.
    let (pid, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    c.put(&format!("/identity/v3/projects/{pid}/users/{uid}/roles/{}", ids[0]), &admin, json!({})).await;
    let token = login(&c, "u1", "pw-1", "p1").await.json();
    let names: Vec<&str> =
        token["token"]["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"r1") && names.contains(&"r2"), "{names:?}");

    assert_eq!(c.delete(&rule(&ids[0], &ids[1]), &admin).await.status, StatusCode::NO_CONTENT);
    keystone_error(&c.get(&rule(&ids[0], &ids[1]), &admin).await, 404);
    keystone_error(&c.delete(&rule(&ids[0], &ids[1]), &admin).await, 404);
    keystone_error(&c.put(&rule(&ids[0], "nope"), &admin, json!(null)).await, 404);
    let admin_role =
        c.get("/identity/v3/roles?name=admin", &admin).await.json()["roles"][0]["id"].as_str().unwrap().to_string();
    keystone_error(&c.put(&rule(&ids[0], &admin_role), &admin, json!(null)).await, 403);
    let demo = c.token("demo").await;
    keystone_error(&c.put(&rule(&ids[1], &ids[2]), &demo, json!(null)).await, 403);
}

#[tokio::test]
async fn a_role_is_renamed() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let r = c.post("/identity/v3/roles", &admin, json!({"role": {"name": "old"}})).await;
    let id = r.json()["role"]["id"].as_str().unwrap().to_string();
    let r = patch(&c, &format!("/identity/v3/roles/{id}"), &admin, json!({"role": {"name": "new"}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["role"]["name"], "new");
    assert_eq!(c.get(&format!("/identity/v3/roles/{id}"), &admin).await.json()["role"]["name"], "new");
    let r = patch(&c, &format!("/identity/v3/roles/{id}"), &admin, json!({"role": {"name": "reader"}})).await;
    assert!(keystone_error(&r, 409).contains("Duplicate entry"));
    keystone_error(&patch(&c, "/identity/v3/roles/nope", &admin, json!({"role": {"name": "x"}})).await, 404);
}

#[tokio::test]
async fn a_rescoped_token_keeps_its_methods_and_a_revoked_one_is_not_found() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    project_with_member(&c, &admin, "p1", "u1").await;
    let unscoped = json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": "u1", "domain": {"id": "default"}, "password": "pw-1"}}}}});
    let r = c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(unscoped)).await;
    let first = subject(&r);
    let rescope = |t: &str| {
        json!({"auth": {"identity": {"methods": ["token"], "token": {"id": t}},
            "scope": {"project": {"name": "p1", "domain": {"id": "default"}}}}})
    };
    let r = c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(rescope(&first))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["token"]["methods"], json!(["password", "token"]));
    let req = axum::http::Request::delete("/identity/v3/auth/tokens")
        .header("x-auth-token", &admin)
        .header("x-subject-token", &first)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(c.send(req).await.status, StatusCode::NO_CONTENT);
    let r = c.call(Method::POST, "/identity/v3/auth/tokens", None, Some(rescope(&first))).await;
    assert_eq!(keystone_error(&r, 404), "Failed to validate token");
}

#[tokio::test]
async fn versions_answer_at_the_root_with_its_slash() {
    let c = Cloud::new();
    for uri in ["/identity", "/identity/"] {
        let r = c.call(Method::GET, uri, None, None).await;
        assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES, "{uri}: {}", r.text());
        assert_eq!(r.json()["versions"]["values"][0]["status"], "stable");
    }
}

#[tokio::test]
async fn an_application_credentials_expiry_is_shown_as_keystone_does() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let (_, uid) = project_with_member(&c, &admin, "p1", "u1").await;
    let token = subject(&login(&c, "u1", "pw-1", "p1").await);
    let uri = format!("/identity/v3/users/{uid}/application_credentials");
    let body = json!({"application_credential": {"name": "a", "expires_at": "2999-01-02T03:04:05.123456"}});
    let r = c.post(&uri, &token, body).await;
    assert_eq!(r.json()["application_credential"]["expires_at"], "2999-01-02T03:04:05.123456", "{}", r.text());
    let body = json!({"application_credential": {"name": "b", "expires_at": "2999-01-02T03:04:05Z"}});
    let r = c.post(&uri, &token, body).await;
    assert_eq!(r.json()["application_credential"]["expires_at"], "2999-01-02T03:04:05.000000", "{}", r.text());
}
