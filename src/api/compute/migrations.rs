//! `GET /os-migrations` (admin): the resizes recorded by issue 16, as nova lists its
//! migrations. Filters `instance_uuid`, `status`, `migration_type` and `host` (source or
//! destination); newest first. Paging (2.59) is not offered.

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::microversion::Microversion;
use crate::api::context::Auth;
use crate::api::fault::ApiResult;
use crate::api::AppState;
use crate::db::lifecycle::Migration;
use crate::policy::{Action, Target};

/// nova's migration timestamps: microseconds and no zone suffix.
fn nova_time(ts: Option<&str>) -> Value {
    match ts {
        Some(t) => json!(format!("{}.000000", t.trim_end_matches('Z'))),
        None => Value::Null,
    }
}

pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    v: Microversion,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    auth.authorize(Action::ComputeMigrationsIndex, &Target::default())?;
    let wanted = |key: &str| q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let matches = |m: &Migration| {
        wanted("instance_uuid").is_none_or(|u| u == m.instance_uuid)
            && wanted("status").is_none_or(|s| s == m.status)
            && wanted("migration_type").is_none_or(|t| t == m.migration_type)
            && wanted("host")
                .is_none_or(|h| m.source_compute.as_deref() == Some(h) || m.dest_compute.as_deref() == Some(h))
    };
    let rows = state.db.with(|db| -> crate::db::Result<Vec<Value>> {
        let mut out = Vec::new();
        for m in db.migrations()?.into_iter().filter(matches) {
            // nova shows the flavors' row ids; a flavor deleted since has none.
            let row_id = |flavorid: &str| -> crate::db::Result<Option<i64>> {
                Ok(db.flavor_by_flavorid(flavorid)?.map(|f| f.id))
            };
            let mut view = json!({
                "id": m.id,
                "status": m.status,
                "instance_uuid": m.instance_uuid,
                "source_compute": m.source_compute,
                "source_node": m.source_compute,
                "dest_compute": m.dest_compute,
                "dest_node": m.dest_compute,
                "dest_host": Value::Null,
                "old_instance_type_id": row_id(&m.old_flavor.flavorid)?,
                "new_instance_type_id": row_id(&m.new_flavor.flavorid)?,
                "created_at": nova_time(Some(&m.created_at)),
                "updated_at": nova_time(m.updated_at.as_deref()),
            });
            if v.at_least(23) {
                view["migration_type"] = json!(m.migration_type);
            }
            if v.at_least(59) {
                view["uuid"] = json!(m.uuid);
            }
            out.push(view);
        }
        Ok(out)
    })?;
    Ok(Json(json!({ "migrations": rows })))
}
