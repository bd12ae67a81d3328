//! Services (with their heartbeats) and the compute nodes they report.

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now, Db, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: i64,
    pub uuid: String,
    pub host: String,
    pub binary: String,
    pub topic: String,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub forced_down: bool,
    pub last_seen_at: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// What a compute service reports about its node with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub hypervisor_hostname: String,
    pub hypervisor_type: String,
    pub hypervisor_version: i64,
    pub accel: String,
    pub host_ip: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    pub reserved_host_memory_mb: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeNode {
    pub id: i64,
    pub uuid: String,
    pub host: String,
    pub report: NodeReport,
    pub updated_at: Option<String>,
}

const SERVICE_COLUMNS: &str =
    "id, uuid, host, binary, topic, disabled, disabled_reason, forced_down, last_seen_at, created_at, updated_at";

fn service_from_row(r: &Row<'_>) -> rusqlite::Result<Service> {
    Ok(Service {
        id: r.get(0)?,
        uuid: r.get(1)?,
        host: r.get(2)?,
        binary: r.get(3)?,
        topic: r.get(4)?,
        disabled: r.get(5)?,
        disabled_reason: r.get(6)?,
        forced_down: r.get(7)?,
        last_seen_at: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

impl Db {
    /// Records a heartbeat, registering the service on its first one.
    pub fn service_heartbeat(&self, host: &str, binary: &str, topic: &str) -> Result<Service> {
        let ts = now();
        self.conn().execute(
            "INSERT INTO services (uuid, host, binary, topic, report_count, last_seen_at, created_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)
             ON CONFLICT (host, binary, deleted) DO UPDATE
                SET report_count = report_count + 1, last_seen_at = excluded.last_seen_at, topic = excluded.topic",
            params![uuid::Uuid::new_v4().to_string(), host, binary, topic, ts],
        )?;
        let sql = format!("SELECT {SERVICE_COLUMNS} FROM services WHERE host = ?1 AND binary = ?2 AND deleted = 0");
        Ok(self.conn().query_row(&sql, params![host, binary], service_from_row)?)
    }

    pub fn services(&self) -> Result<Vec<Service>> {
        let mut stmt =
            self.conn().prepare(&format!("SELECT {SERVICE_COLUMNS} FROM services WHERE deleted = 0 ORDER BY id"))?;
        let rows = stmt.query_map([], service_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn service_by_id_or_uuid(&self, id: &str) -> Result<Option<Service>> {
        let sql = format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE (uuid = ?1 OR CAST(id AS TEXT) = ?1) AND deleted = 0"
        );
        Ok(self.conn().query_row(&sql, [id], service_from_row).optional()?)
    }

    pub fn set_service_status(&self, id: i64, disabled: bool, reason: Option<&str>, forced_down: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE services SET disabled = ?2, disabled_reason = ?3, forced_down = ?4, updated_at = ?5 WHERE id = ?1",
            params![id, disabled, reason, forced_down, now()],
        )?;
        Ok(())
    }

    /// Creates or refreshes the compute node of `host`.
    pub fn upsert_compute_node(&self, host: &str, r: &NodeReport) -> Result<()> {
        let ts = now();
        let service_id: Option<i64> = self
            .conn()
            .query_row(
                "SELECT id FROM services WHERE host = ?1 AND binary = 'novabox-compute' AND deleted = 0",
                [host],
                |row| row.get(0),
            )
            .optional()?;
        self.conn().execute(
            "INSERT INTO compute_nodes (uuid, service_id, host, hypervisor_hostname, hypervisor_type, hypervisor_version,
                accel, host_ip, vcpus, memory_mb, local_gb, cpu_allocation_ratio, ram_allocation_ratio,
                disk_allocation_ratio, memory_mb_used, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16)
             ON CONFLICT (host, hypervisor_hostname, deleted) DO UPDATE SET
                service_id = excluded.service_id, hypervisor_type = excluded.hypervisor_type,
                hypervisor_version = excluded.hypervisor_version, accel = excluded.accel, host_ip = excluded.host_ip,
                vcpus = excluded.vcpus, memory_mb = excluded.memory_mb, local_gb = excluded.local_gb,
                cpu_allocation_ratio = excluded.cpu_allocation_ratio,
                ram_allocation_ratio = excluded.ram_allocation_ratio,
                disk_allocation_ratio = excluded.disk_allocation_ratio,
                memory_mb_used = excluded.memory_mb_used, updated_at = excluded.updated_at",
            params![
                uuid::Uuid::new_v4().to_string(),
                service_id,
                host,
                r.hypervisor_hostname,
                r.hypervisor_type,
                r.hypervisor_version,
                r.accel,
                r.host_ip,
                r.vcpus,
                r.memory_mb,
                r.local_gb,
                r.cpu_allocation_ratio,
                r.ram_allocation_ratio,
                r.disk_allocation_ratio,
                // memory_mb_used holds the host's reservation; guests are added from instances.
                r.reserved_host_memory_mb,
                ts
            ],
        )?;
        Ok(())
    }

    /// The uuids of the live instances placed on `host`, oldest first (nova's `with_servers`).
    pub fn host_instance_uuids(&self, host: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare("SELECT uuid FROM instances WHERE host = ?1 AND deleted = 0 ORDER BY id")?;
        let rows = stmt.query_map([host], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn compute_nodes(&self) -> Result<Vec<ComputeNode>> {
        let mut stmt = self.conn().prepare(
            "SELECT id, uuid, host, hypervisor_hostname, hypervisor_type, hypervisor_version, accel, host_ip, vcpus,
                memory_mb, local_gb, cpu_allocation_ratio, ram_allocation_ratio, disk_allocation_ratio,
                memory_mb_used, updated_at
             FROM compute_nodes WHERE deleted = 0 ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ComputeNode {
                id: r.get(0)?,
                uuid: r.get(1)?,
                host: r.get(2)?,
                report: NodeReport {
                    hypervisor_hostname: r.get(3)?,
                    hypervisor_type: r.get(4)?,
                    hypervisor_version: r.get(5)?,
                    accel: r.get(6)?,
                    host_ip: r.get(7)?,
                    vcpus: r.get(8)?,
                    memory_mb: r.get(9)?,
                    local_gb: r.get(10)?,
                    cpu_allocation_ratio: r.get(11)?,
                    ram_allocation_ratio: r.get(12)?,
                    disk_allocation_ratio: r.get(13)?,
                    reserved_host_memory_mb: r.get(14)?,
                },
                updated_at: r.get(15)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// True when the service's last heartbeat is younger than `down_after_secs`.
pub fn is_up(service: &Service, down_after_secs: u64) -> bool {
    if service.forced_down {
        return false;
    }
    let Some(seen) = &service.last_seen_at else { return false };
    match chrono::NaiveDateTime::parse_from_str(seen, "%Y-%m-%dT%H:%M:%SZ") {
        Ok(t) => (crate::clock::now().naive_utc() - t).num_seconds() < down_after_secs as i64,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, OpenOptions};

    #[test]
    fn heartbeat_registers_once_and_nodes_upsert() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("d.db"), OpenOptions::default()).unwrap();
        let a = db.service_heartbeat("h1", "novabox-compute", "compute").unwrap();
        let b = db.service_heartbeat("h1", "novabox-compute", "compute").unwrap();
        assert_eq!(a.id, b.id);
        assert!(is_up(&b, 60));
        assert_eq!(db.services().unwrap().len(), 1);
        let mut r = NodeReport {
            hypervisor_hostname: "h1".into(),
            hypervisor_type: "fake".into(),
            hypervisor_version: 1,
            accel: "none".into(),
            host_ip: "127.0.0.1".into(),
            vcpus: 4,
            memory_mb: 8192,
            local_gb: 100,
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.5,
            disk_allocation_ratio: 1.0,
            reserved_host_memory_mb: 512,
        };
        db.upsert_compute_node("h1", &r).unwrap();
        r.vcpus = 8;
        db.upsert_compute_node("h1", &r).unwrap();
        let nodes = db.compute_nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].report.vcpus, 8);
    }
}
