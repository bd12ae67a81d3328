//! Project tags and a user's extra attributes, as keystone keeps them (tempest's
//! test_project_tags, test_project_get_equals_list, test_user_update and
//! test_associate_user_to_project).

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::api::testing::Cloud;

#[tokio::test]
async fn project_tags_are_kept_replaced_filtered_and_removed() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let demo = c.token("demo").await;
    let r = c.post("/identity/v3/projects", &admin, json!({"project": {"name": "t", "tags": ["a", "c", "b"]}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["project"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["project"]["tags"], json!(["a", "b", "c"]));
    let shown = c.get(&format!("/identity/v3/projects/{id}"), &admin).await.json()["project"].clone();
    let listed = c.get("/identity/v3/projects", &admin).await.json()["projects"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["id"] == id.as_str()).cloned())
        .unwrap();
    assert_eq!((shown["tags"].clone(), listed["tags"].clone()), (json!(["a", "b", "c"]), json!(["a", "b", "c"])));

    let tags = format!("/identity/v3/projects/{id}/tags");
    let r = c.put(&format!("{tags}/new%20one"), &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(c.get(&format!("{tags}/new%20one"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(&format!("{tags}/absent"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.put(&format!("{tags}/x"), &demo, json!({})).await.status, StatusCode::FORBIDDEN);
    let r = c.put(&tags, &admin, json!({"tags": ["x", "y"]})).await;
    assert_eq!((r.status, r.json()["tags"].clone()), (StatusCode::OK, json!(["x", "y"])), "{}", r.text());
    assert_eq!(c.put(&tags, &admin, json!({"tags": ["x", "x"]})).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(c.put(&tags, &admin, json!({"tags": ["a,b"]})).await.status, StatusCode::BAD_REQUEST);
    let many: Vec<String> = (0..81).map(|i| format!("t{i}")).collect();
    assert_eq!(c.put(&tags, &admin, json!({ "tags": many })).await.status, StatusCode::BAD_REQUEST);

    let ids = |q: &'static str| {
        let (c, admin) = (&c, &admin);
        async move {
            let r = c.get(&format!("/identity/v3/projects?{q}"), admin).await.json();
            r["projects"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["id"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids("tags=x,y").await, vec![id.clone()]);
    assert_eq!(ids("tags-any=y,zzz").await, vec![id.clone()]);
    assert!(ids("tags=x,zzz").await.is_empty());
    assert!(!ids("not-tags-any=x").await.contains(&id));
    assert!(ids("not-tags=x,zzz").await.contains(&id));

    assert_eq!(c.delete(&format!("{tags}/x"), &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.delete(&format!("{tags}/x"), &admin).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.delete(&tags, &admin).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.get(&tags, &admin).await.json(), json!({"tags": []}));
    assert_eq!(c.get("/identity/v3/projects/nope/tags", &admin).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_users_unknown_attributes_are_kept_and_merged() {
    let c = Cloud::new();
    let admin = c.token("admin").await;
    let body = json!({"user": {"name": "u1", "password": "secret-pass-1", "email": "u@x", "project_id": "p1"}});
    let r = c.post("/identity/v3/users", &admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["user"]["project_id"], "p1");
    assert!(r.json()["user"].get("password").is_none());
    let id = r.json()["user"]["id"].as_str().unwrap().to_string();
    let patch = json!({"user": {"project_id": "p2", "flavour": "mint", "enabled": false}});
    let r = c.call(Method::PATCH, &format!("/identity/v3/users/{id}"), Some(&admin), Some(patch)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let u = c.get(&format!("/identity/v3/users/{id}"), &admin).await.json()["user"].clone();
    assert_eq!(
        (u["project_id"].clone(), u["flavour"].clone(), u["enabled"].clone()),
        (json!("p2"), json!("mint"), json!(false))
    );
    assert_eq!(u["email"], "u@x");
    let listed = c.get("/identity/v3/users?name=u1", &admin).await.json()["users"][0].clone();
    assert_eq!(listed["flavour"], "mint");
}
