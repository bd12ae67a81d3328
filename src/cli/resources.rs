//! `novabox image|flavor|network|keypair|volume list|show`: what `server create` needs (an
//! image, a flavor, a network, a key name) and the volumes, read-only, through the thin client,
//! as a table or as the API's own JSON (`--json`). `openstack` stays the full client.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use novabox::client::Resource;

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum ReadCommand {
    /// List them (a table; --json prints the API's objects)
    List(ListArgs),
    /// Show one, by name or id
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ReadFlags {
    /// Act as the admin user (in the admin project) instead of demo
    #[arg(long)]
    pub admin: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub flags: ReadFlags,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Name or id (a keypair's name is its id)
    pub name_or_id: String,
    #[command(flatten)]
    pub flags: ReadFlags,
}

/// A string field as is, anything else as compact JSON, nothing as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bytes as people read them (glance's `size` is in bytes).
fn size(v: &Value) -> String {
    let Some(bytes) = v.as_u64() else { return text(v) };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// A volume's attachments: `SERVER on DEVICE`, as python-openstackclient shows them.
fn attachments(v: &Value) -> String {
    let all: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{} on {}", text(&a["server_id"]), text(&a["device"])))
        .collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(", ")
    }
}

/// A column of a list: its header, and how to read its cell from one item.
type Column = (&'static str, fn(&Value) -> String);

/// The table's columns for `r`: the same columns python-openstackclient's `list` shows, so
/// what users read elsewhere matches.
fn columns(r: Resource) -> Vec<Column> {
    match r {
        Resource::Image => vec![
            ("ID", |i| text(&i["id"])),
            ("Name", |i| text(&i["name"])),
            ("Status", |i| text(&i["status"])),
            ("Format", |i| text(&i["disk_format"])),
            ("Size", |i| size(&i["size"])),
            ("Visibility", |i| text(&i["visibility"])),
        ],
        Resource::Flavor => vec![
            ("ID", |i| text(&i["id"])),
            ("Name", |i| text(&i["name"])),
            ("RAM", |i| text(&i["ram"])),
            ("Disk", |i| text(&i["disk"])),
            ("Ephemeral", |i| text(&i["OS-FLV-EXT-DATA:ephemeral"])),
            ("VCPUs", |i| text(&i["vcpus"])),
            ("Is Public", |i| text(&i["os-flavor-access:is_public"])),
        ],
        Resource::Network => vec![
            ("ID", |i| text(&i["id"])),
            ("Name", |i| text(&i["name"])),
            ("Subnets", |i| {
                let ids: Vec<String> = i["subnets"].as_array().into_iter().flatten().map(text).collect();
                if ids.is_empty() {
                    "-".into()
                } else {
                    ids.join(", ")
                }
            }),
        ],
        Resource::Keypair => vec![
            ("Name", |i| text(&i["name"])),
            ("Fingerprint", |i| text(&i["fingerprint"])),
            ("Type", |i| text(&i["type"])),
        ],
        Resource::Volume => vec![
            ("ID", |i| text(&i["id"])),
            ("Name", |i| text(&i["name"])),
            ("Status", |i| text(&i["status"])),
            ("Size", |i| text(&i["size"])),
            ("Attached to", |i| attachments(&i["attachments"])),
        ],
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The list of `r` as a table.
pub fn render_list(r: Resource, items: &[Value]) -> String {
    let cols = columns(r);
    let header: Vec<&str> = cols.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items.iter().map(|i| cols.iter().map(|(_, cell)| cell(i)).collect()).collect();
    table(&header, &rows)
}

/// One item as `Field  Value` rows, every field the API gave, by name.
pub fn render_one(item: &Value) -> String {
    let mut rows: Vec<Vec<String>> =
        item.as_object().into_iter().flatten().map(|(k, v)| vec![k.clone(), text(v)]).collect();
    rows.sort();
    table(&["Field", "Value"], &rows)
}

pub fn run(global: &GlobalArgs, r: Resource, cmd: ReadCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match cmd {
            ReadCommand::List(a) => {
                let client = super::server::login(global, a.flags.admin).await?;
                let items = client.list(r).await?;
                if a.flags.json {
                    println!("{}", serde_json::to_string_pretty(&items)?);
                } else {
                    print!("{}", render_list(r, &items));
                }
            }
            ReadCommand::Show(a) => {
                let client = super::server::login(global, a.flags.admin).await?;
                let item = client.show(r, &a.name_or_id).await?;
                if a.flags.json {
                    println!("{}", serde_json::to_string_pretty(&item)?);
                } else {
                    print!("{}", render_one(&item));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_is_a_table_with_openstackclients_columns() {
        let flavors = [
            json!({"id": "1", "name": "m1.tiny", "ram": 512, "disk": 1, "OS-FLV-EXT-DATA:ephemeral": 0,
                   "vcpus": 1, "os-flavor-access:is_public": true}),
            json!({"id": "42", "name": "m1.nano", "ram": 64, "disk": 1, "OS-FLV-EXT-DATA:ephemeral": 0,
                   "vcpus": 1, "os-flavor-access:is_public": true}),
        ];
        let out = render_list(Resource::Flavor, &flavors);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ID  Name     RAM  Disk  Ephemeral  VCPUs  Is Public");
        assert_eq!(lines[1], "1   m1.tiny  512  1     0          1      true");
        assert_eq!(lines[2], "42  m1.nano  64   1     0          1      true");
    }

    #[test]
    fn cells_read_as_people_read_them() {
        let image = json!({"id": "i", "name": "tiny", "status": "active", "disk_format": "ami",
                           "size": 1048576, "visibility": "public"});
        assert!(render_list(Resource::Image, &[image]).lines().nth(1).unwrap().contains("1.0 MiB"));
        let volume = json!({"id": "v", "name": null, "status": "in-use", "size": 1,
                            "attachments": [{"server_id": "s1", "device": "/dev/vdb"}]});
        let row = render_list(Resource::Volume, &[volume]);
        assert!(row.contains("v   -     in-use  1     s1 on /dev/vdb"), "{row}");
        let bare = json!({"id": "n", "name": "empty", "subnets": []});
        assert!(render_list(Resource::Network, &[bare]).lines().nth(1).unwrap().ends_with("empty  -"));
    }

    #[test]
    fn one_item_is_every_field_by_name() {
        let out = render_one(&json!({"name": "k", "fingerprint": "aa:bb", "type": "ssh", "user_id": null}));
        assert_eq!(out, "Field        Value\nfingerprint  aa:bb\nname         k\ntype         ssh\nuser_id      -\n");
    }
}
