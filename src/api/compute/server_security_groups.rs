//! A server's security groups through the compute API, as nova proxies them to neutron:
//! `GET /servers/{id}/os-security-groups` lists them in nova's format. The
//! `addSecurityGroup` / `removeSecurityGroup` actions are the compute API's
//! (`crate::compute::api`, `actions.rs`); the test of both is here.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::servers::find;
use crate::api::context::Auth;
use crate::api::fault::ApiResult;
use crate::api::AppState;
use crate::db::network::{SecurityGroup, SecurityGroupRule};

/// `GET /servers/{id}/os-security-groups`.
pub async fn list(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let inst = find(&state, &auth, &id)?;
    let groups = state.db.with(|db| -> crate::db::Result<Vec<SecurityGroup>> {
        let mut out = Vec::new();
        for gid in db.instance_security_group_ids(&inst.uuid)? {
            out.extend(db.security_group_by_id(&gid)?);
        }
        Ok(out)
    })?;
    let mut groups: Vec<Value> = groups.iter().map(nova_group).collect();
    groups.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({ "security_groups": groups })))
}

/// nova's view of a neutron group: ingress rules only, ports as from/to.
fn nova_group(g: &SecurityGroup) -> Value {
    let rules: Vec<Value> = g.rules.iter().filter(|r| r.direction == "ingress").map(|r| nova_rule(g, r)).collect();
    json!({"id": g.id, "name": g.name, "description": g.description, "tenant_id": g.project_id, "rules": rules})
}

fn nova_rule(g: &SecurityGroup, r: &SecurityGroupRule) -> Value {
    json!({
        "id": r.id,
        "parent_group_id": g.id,
        "ip_protocol": r.protocol,
        "from_port": r.port_range_min,
        "to_port": r.port_range_max,
        "ip_range": r.remote_ip_prefix.as_ref().map(|c| json!({"cidr": c})).unwrap_or_else(|| json!({})),
        "group": r.remote_group_id.as_ref().map(|id| json!({"id": id})).unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use crate::api::testing::Cloud;
    use crate::db::network::NewPort;

    /// A server of demo's with one port on the default network, made in the database.
    fn demo_server(c: &Cloud) -> String {
        c.state.db.with(|db| {
            let mut new = crate::db::instances::tests::new_instance(db, "vm");
            new.project_id = c.demo_project.clone();
            new.user_id = db.user_by_name("demo").unwrap().unwrap().id;
            let inst = db.create_instance(&new).unwrap();
            let net = db.ensure_default_network(&c.state.config).unwrap();
            let default = db.ensure_default_security_group(&c.demo_project).unwrap();
            let port = NewPort {
                network_id: net.id,
                project_id: c.demo_project.clone(),
                device_id: inst.uuid.clone(),
                device_owner: "compute:nova".into(),
                security_group_ids: vec![default.clone()],
                ..NewPort::default()
            };
            db.allocate_port(&port).unwrap();
            db.change_instance_security_group(&inst.uuid, &default, true).unwrap();
            inst.uuid
        })
    }

    #[tokio::test]
    async fn groups_are_added_listed_in_novas_format_and_kept_to_their_project() {
        let c = Cloud::new();
        let (demo, alt) = (c.token("demo").await, c.token("alt").await);
        let id = demo_server(&c);
        let body = json!({"security_group": {"name": "web"}});
        let web = c.post("/network/v2.0/security-groups", &demo, body).await.json()["security_group"]["id"].clone();
        let action = format!("/compute/v2.1/servers/{id}/action");
        let r = c.post(&action, &demo, json!({"addSecurityGroup": {"name": "web"}})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());

        let list = c.get(&format!("/compute/v2.1/servers/{id}/os-security-groups"), &demo).await.json();
        let groups = list["security_groups"].as_array().unwrap();
        let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["default", "web"]);
        assert_eq!(groups[1]["id"], web);
        assert_eq!(groups[1]["tenant_id"], c.demo_project.as_str());
        // The default group lets its members in: nova shows that ingress rule with its group,
        // and leaves the egress rules out.
        let rules = groups[0]["rules"].as_array().unwrap();
        assert!(!rules.is_empty() && rules.iter().all(|r| r["group"]["id"] == groups[0]["id"]), "{rules:?}");
        assert!(rules.iter().all(|r| r["parent_group_id"] == groups[0]["id"]));

        // Another project sees no such server; bad bodies and unknown groups are refused.
        let r = c.get(&format!("/compute/v2.1/servers/{id}/os-security-groups"), &alt).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = c.post(&action, &alt, json!({"removeSecurityGroup": {"name": "web"}})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = c.post(&action, &demo, json!({"addSecurityGroup": {}})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        let r = c.post(&action, &demo, json!({"addSecurityGroup": {"name": "nope"}})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        // alt's own group of the same name is not demo's.
        c.post("/network/v2.0/security-groups", &alt, json!({"security_group": {"name": "alt-only"}})).await;
        let r = c.post(&action, &demo, json!({"addSecurityGroup": {"name": "alt-only"}})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

        let r = c.post(&action, &demo, json!({"removeSecurityGroup": {"name": "web"}})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        let list = c.get(&format!("/compute/v2.1/servers/{id}/os-security-groups"), &demo).await.json();
        assert_eq!(list["security_groups"].as_array().unwrap().len(), 1);
    }
}
