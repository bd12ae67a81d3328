//! `POST /servers/{id}/action`: the body's one key names the action, its value the arguments.

use serde::Deserialize;
use serde_json::{json, Value};

use super::lifecycle::{self, ImageRequest, Rebuild};
use super::{invalid, present, typed};
use crate::api::compute::microversion::Microversion;
use crate::compute::api::{ComputeError, Result};
use crate::compute::states::VmState;

/// `POST /servers/{id}/action`: one action, named by the body's only key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Reboot {
        hard: bool,
    },
    ConsoleOutput {
        length: Option<usize>,
    },
    AddSecurityGroup {
        name: String,
    },
    RemoveSecurityGroup {
        name: String,
    },
    Pause,
    Unpause,
    Suspend,
    Resume,
    /// `lock`, with the reason 2.73 lets the caller give.
    Lock {
        reason: Option<String>,
    },
    Unlock,
    /// `os-resetState`: the vm_state to force (active or error).
    ResetState {
        state: VmState,
    },
    /// `trigger_crash_dump` (2.17): an NMI to the guest.
    TriggerCrashDump,
    /// `restore`: a SOFT_DELETED server back to ACTIVE.
    Restore,
    /// `forceDelete`: delete now, even when deletes are deferred.
    ForceDelete,
    // Issue 16's long actions (items 4 to 6); their bodies are read in `lifecycle.rs`.
    Rebuild(Box<Rebuild>),
    Resize {
        flavor_ref: String,
    },
    ConfirmResize,
    RevertResize,
    /// `createImage` (`backup` none) and `createBackup`.
    CreateImage(ImageRequest),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockArgs {
    #[serde(default, deserialize_with = "present")]
    locked_reason: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetStateArgs {
    state: Value,
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
    /// The action a body asks for at microversion `v`.
    pub fn parse(body: &Value, v: Microversion) -> Result<Action> {
        let (name, args) = body
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
            .ok_or_else(|| invalid("Malformed request body: one action expected"))?;
        // Actions without arguments take anything (nova has no schema for them); a null
        // argument object is an empty one.
        let raw = args;
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
            "pause" => Action::Pause,
            "unpause" => Action::Unpause,
            "suspend" => Action::Suspend,
            "resume" => Action::Resume,
            "unlock" => Action::Unlock,
            "restore" => Action::Restore,
            "forceDelete" => Action::ForceDelete,
            // Before 2.73 nova's schema takes any value and ignores it.
            "lock" if !v.at_least(73) || raw.is_null() => Action::Lock { reason: None },
            "lock" => {
                if !raw.is_object() {
                    return Err(not_of_type("lock", raw, "object, null"));
                }
                let LockArgs { locked_reason } = typed(args)?;
                let reason = match locked_reason {
                    None => None,
                    Some(Value::String(r)) if !r.is_empty() && r.chars().count() <= 255 => Some(r),
                    Some(Value::String(r)) if r.is_empty() => {
                        return Err(invalid(
                            "Invalid input for field/attribute locked_reason. Value: . '' is too short",
                        ))
                    }
                    Some(Value::String(r)) => {
                        return Err(invalid(format!(
                            "Invalid input for field/attribute locked_reason. Value: {r}. '{r}' is too long"
                        )))
                    }
                    Some(other) => return Err(not_of_type("locked_reason", &other, "string")),
                };
                Action::Lock { reason }
            }
            "os-resetState" => {
                if !raw.is_object() {
                    return Err(not_of_type("os-resetState", raw, "object"));
                }
                let ResetStateArgs { state } = typed(args)?;
                match state.as_str() {
                    Some("active") => Action::ResetState { state: VmState::Active },
                    Some("error") => Action::ResetState { state: VmState::Error },
                    _ => {
                        // jsonschema's text shows the value as Python's repr.
                        let (shown, repr) = match state.as_str() {
                            Some(text) => (text.to_string(), format!("'{text}'")),
                            None => (state.to_string(), state.to_string()),
                        };
                        return Err(invalid(format!(
                            "Invalid input for field/attribute state. Value: {shown}. {repr} is not one of ['active', 'error']"
                        )));
                    }
                }
            }
            // A versioned action below its version is not found at all, as nova's dispatcher has it.
            "trigger_crash_dump" if !v.at_least(17) => {
                return Err(ComputeError::Refused(crate::api::fault::ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "The resource could not be found.",
                )))
            }
            "trigger_crash_dump" if !raw.is_null() => return Err(not_of_type("trigger_crash_dump", raw, "null")),
            "trigger_crash_dump" => Action::TriggerCrashDump,
            "rebuild" => Action::Rebuild(Box::new(lifecycle::rebuild(raw, v)?)),
            "resize" => Action::Resize { flavor_ref: lifecycle::resize(raw)? },
            "confirmResize" => Action::ConfirmResize,
            "revertResize" => Action::RevertResize,
            "createImage" => Action::CreateImage(lifecycle::create_image(raw)?),
            "createBackup" => Action::CreateImage(lifecycle::create_backup(raw)?),
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
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Lock { .. } => "lock",
            Action::Unlock => "unlock",
            Action::ResetState { .. } => "os-resetState",
            Action::TriggerCrashDump => "trigger_crash_dump",
            Action::Restore => "restore",
            Action::ForceDelete => "forceDelete",
            Action::Rebuild(_) => "rebuild",
            Action::Resize { .. } => "resize",
            Action::ConfirmResize => "confirmResize",
            Action::RevertResize => "revertResize",
            Action::CreateImage(ImageRequest { backup: None, .. }) => "createImage",
            Action::CreateImage(_) => "createBackup",
        }
    }
}

/// nova's schema text for a value of the wrong JSON type.
fn not_of_type(field: &str, value: &Value, kind: &str) -> ComputeError {
    let kinds: Vec<String> = kind.split(", ").map(|k| format!("'{k}'")).collect();
    let kinds = if kinds.len() == 1 { kinds[0].clone() } else { format!("[{}]", kinds.join(", ")) };
    invalid(format!("Invalid input for field/attribute {field}. Value: {value}. {value} is not of type {kinds}"))
}
