//! `POST /servers/{id}/action`: the body's one key names the action, its value the arguments.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{invalid, present, typed};
use crate::compute::api::{ComputeError, Result};

/// `POST /servers/{id}/action`: one action, named by the body's only key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Reboot { hard: bool },
    ConsoleOutput { length: Option<usize> },
    AddSecurityGroup { name: String },
    RemoveSecurityGroup { name: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebootArgs {
    #[serde(rename = "type")]
    kind: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleOutputArgs {
    #[serde(default, deserialize_with = "present")]
    length: Option<Value>,
}

/// nova has no schema for these two: it reads `name` and ignores the rest.
#[derive(Deserialize)]
struct SecurityGroupArgs {
    name: Option<String>,
}

impl Action {
    pub fn parse(body: &Value) -> Result<Action> {
        let (name, args) = body
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
            .ok_or_else(|| invalid("Malformed request body: one action expected"))?;
        // Actions without arguments take anything (nova has no schema for them); a null
        // argument object is an empty one.
        let empty = json!({});
        let args = if args.is_null() { &empty } else { args };
        Ok(match name.as_str() {
            "os-stop" => Action::Stop,
            "os-start" => Action::Start,
            "reboot" => {
                let bad = || invalid("Argument 'type' for reboot must be a string SOFT or HARD");
                let RebootArgs { kind } = typed(args)?;
                match kind.as_ref().and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
                    Some("SOFT") => Action::Reboot { hard: false },
                    Some("HARD") => Action::Reboot { hard: true },
                    _ => return Err(bad()),
                }
            }
            "os-getConsoleOutput" => {
                let ConsoleOutputArgs { length } = typed(args)?;
                let length = match length {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => match n.as_i64() {
                        Some(-1) => None,
                        Some(l) if l >= 0 => Some(l as usize),
                        _ => return Err(invalid("length must be a positive integer or -1")),
                    },
                    Some(Value::String(s)) => {
                        Some(s.parse::<usize>().map_err(|_| invalid("length must be an integer"))?)
                    }
                    Some(_) => return Err(invalid("length must be an integer")),
                };
                Action::ConsoleOutput { length }
            }
            "addSecurityGroup" | "removeSecurityGroup" => {
                let SecurityGroupArgs { name: group } = typed(args)?;
                let group = group
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| invalid("Security group name cannot be empty: give {\"name\": \"...\"}"))?;
                if name == "addSecurityGroup" {
                    Action::AddSecurityGroup { name: group }
                } else {
                    Action::RemoveSecurityGroup { name: group }
                }
            }
            other => return Err(ComputeError::NoSuchAction(other.to_string())),
        })
    }

    /// The body's key for the action, as nova's 409 texts name it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Stop => "os-stop",
            Action::Start => "os-start",
            Action::Reboot { .. } => "reboot",
            Action::ConsoleOutput { .. } => "os-getConsoleOutput",
            Action::AddSecurityGroup { .. } => "addSecurityGroup",
            Action::RemoveSecurityGroup { .. } => "removeSecurityGroup",
        }
    }
}
