//! What a rule may name: the services and steps of the pipeline (the names `novabox trace`
//! shows), nova's exceptions with their real messages, and the API's route prefixes. A name
//! outside these lists is refused with the list, so a typo never makes a rule that silently
//! never fires.

/// One place in the pipeline where the fault table is asked before the work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub service: &'static str,
    pub name: &'static str,
    /// Other names a user may know it by (nova's method names, the trace's span names).
    pub aliases: &'static [&'static str],
    /// The step works on one instance, so a server or metadata rule can match it.
    pub instance: bool,
}

const fn step(service: &'static str, name: &'static str, instance: bool) -> Step {
    Step { service, name, aliases: &[], instance }
}

/// Every step a rule can name, by service.
pub const STEPS: &[Step] = &[
    Step {
        service: "scheduler",
        name: "select_destinations",
        aliases: &["select_host", "build_instances"],
        instance: true,
    },
    // The compute service's RPC methods (nova's compute/rpcapi.py names)...
    step("compute", "build_and_run_instance", true),
    step("compute", "terminate_instance", true),
    step("compute", "stop_instance", true),
    step("compute", "start_instance", true),
    step("compute", "reboot_instance", true),
    step("compute", "attach_volume", true),
    step("compute", "detach_volume", true),
    step("compute", "get_console_output", true),
    step("compute", "get_host_uptime", false),
    step("compute", "refresh_security_groups", false),
    step("compute", "refresh_routers", false),
    // Issue 16's long actions.
    step("compute", "rebuild_instance", true),
    step("compute", "resize_instance", true),
    step("compute", "confirm_resize", true),
    step("compute", "revert_resize", true),
    step("compute", "snapshot_instance", true),
    // ...and the steps of a build, each after its task_state is recorded, so a delay holds
    // the server in that task_state.
    step("compute", "networking", true),
    step("compute", "block_device_mapping", true),
    step("compute", "spawning", true),
    Step { service: "compute", name: "spawn", aliases: &["driver.spawn"], instance: true },
    // The conductor's RPC methods (record_spans is novabox's own plumbing, not a step).
    step("conductor", "instance_update", true),
    step("conductor", "instance_fault_create", true),
    step("conductor", "instance_destroy", true),
    step("conductor", "instances_on_host", false),
    step("conductor", "action_finish", true),
    step("conductor", "service_report", false),
    step("conductor", "allocate_network", true),
    step("conductor", "deallocate_network", true),
    step("conductor", "network_info", true),
    step("conductor", "security_group_filters", false),
    step("conductor", "port_devices", false),
    step("conductor", "router_state", false),
    step("conductor", "image_meta", false),
    step("conductor", "instance_volumes", true),
    step("conductor", "prepare_block_devices", true),
    step("conductor", "volume_attach_done", true),
    step("conductor", "volume_detach_done", true),
    step("conductor", "volumes_in_flight", false),
    // Issue 16: resizes and snapshots.
    step("conductor", "migration_status", true),
    step("conductor", "action_start", true),
    step("conductor", "image_upload", false),
    step("conductor", "image_discard", false),
    step("conductor", "latest_migration", true),
    step("conductor", "discard_snapshots", true),
];

pub const SERVICES: &[&str] = &["scheduler", "compute", "conductor"];

/// The step a service calls `name` (or any of its aliases).
pub fn find_step(service: &str, name: &str) -> Option<&'static Step> {
    STEPS.iter().find(|s| s.service == service && (s.name == name || s.aliases.contains(&name)))
}

/// The steps named `name` in any service.
pub fn steps_named(name: &str) -> Vec<&'static Step> {
    STEPS.iter().filter(|s| s.name == name || s.aliases.contains(&name)).collect()
}

/// The step names of `service`, for an error message.
pub fn step_names(service: &str) -> Vec<&'static str> {
    STEPS.iter().filter(|s| s.service == service).map(|s| s.name).collect()
}

/// One of nova's exceptions: its class name and message, `{uuid}`, `{host}` and `{reason}`
/// filled in when it fires. `reason` is what the exception says when the rule gives no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub name: &'static str,
    pub template: &'static str,
    pub reason: &'static str,
}

/// nova's exceptions a build or an action meets, with nova's `msg_fmt` (nova/exception.py).
pub const EXCEPTIONS: &[Exception] = &[
    Exception {
        name: "NoValidHost",
        template: "No valid host was found. {reason}",
        reason: "There are not enough hosts available.",
    },
    Exception {
        name: "MaxRetriesExceeded",
        template: "Exceeded maximum number of retries. {reason}",
        reason: "Exhausted all hosts available for retrying build failures for instance {uuid}.",
    },
    Exception {
        name: "BuildAbortException",
        template: "Build of instance {uuid} aborted: {reason}",
        reason: "Failed to allocate the network(s), not rescheduling.",
    },
    Exception {
        name: "RescheduledException",
        template: "Build of instance {uuid} was re-scheduled: {reason}",
        reason: "Insufficient compute resources.",
    },
    Exception {
        name: "InstanceFaultRollback",
        template: "Instance rollback performed due to: {reason}",
        reason: "Connection to the hypervisor is broken on host",
    },
    Exception {
        name: "ComputeServiceUnavailable",
        template: "Compute service of {host} is unavailable at this time.",
        reason: "",
    },
    Exception { name: "HypervisorUnavailable", template: "Connection to the hypervisor is broken on host", reason: "" },
    Exception {
        name: "InsufficientFreeMemory",
        template: "Insufficient free memory on compute node to start {uuid}.",
        reason: "",
    },
    Exception { name: "VirtualInterfaceCreateException", template: "Virtual Interface creation failed", reason: "" },
    Exception { name: "InstanceNotFound", template: "Instance {uuid} could not be found.", reason: "" },
    Exception {
        name: "MessagingTimeout",
        template: "Timed out waiting for a reply to message ID {reason}",
        reason: "{msgid}",
    },
];

pub fn find_exception(name: &str) -> Option<&'static Exception> {
    EXCEPTIONS.iter().find(|e| e.name == name)
}

pub fn exception_names() -> Vec<&'static str> {
    EXCEPTIONS.iter().map(|e| e.name).collect()
}

impl Exception {
    /// The message as nova would show it. A rule's own `reason` replaces the exception's
    /// default reason where the message has one, and is appended after a colon otherwise.
    pub fn message(&self, reason: Option<&str>, uuid: &str, host: &str) -> String {
        let with_reason = match (reason, self.template.contains("{reason}")) {
            (Some(r), true) => self.template.replace("{reason}", r),
            (Some(r), false) => format!("{}: {r}", self.template),
            (None, _) => self.template.replace("{reason}", self.reason),
        };
        let msgid = uuid::Uuid::new_v4().simple().to_string();
        with_reason.replace("{uuid}", uuid).replace("{host}", host).replace("{msgid}", &msgid)
    }
}

/// The route prefixes of the API (one per service), which a route rule must start with.
pub const ROUTE_PREFIXES: &[&str] = &["/identity", "/compute", "/image", "/network", "/volume"];

pub const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The message of an injected HTTP status, as the services word them.
pub fn status_message(status: u16) -> String {
    match status {
        429 => "This request was rate-limited.".into(),
        500 => "The server has either erred or is incapable of performing the requested operation.".into(),
        502 => "The server received an invalid response from an upstream server.".into(),
        503 => "The server is currently unavailable. Please try again at a later time.".into(),
        504 => "The gateway did not receive a timely response from the upstream server.".into(),
        other => axum::http::StatusCode::from_u16(other)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_found_by_name_and_alias() {
        assert_eq!(find_step("compute", "driver.spawn").map(|s| s.name), Some("spawn"));
        assert_eq!(find_step("scheduler", "select_host").map(|s| s.name), Some("select_destinations"));
        assert!(find_step("compute", "select_destinations").is_none());
        assert_eq!(steps_named("spawning").len(), 1);
        // Each step is named once per service, so a name never points at two steps of one service.
        for s in STEPS {
            assert_eq!(STEPS.iter().filter(|o| o.service == s.service && o.name == s.name).count(), 1, "{s:?}");
            assert!(SERVICES.contains(&s.service));
        }
    }

    #[test]
    fn exceptions_read_as_nova_writes_them() {
        let nvh = find_exception("NoValidHost").unwrap();
        assert_eq!(nvh.message(None, "u1", "h1"), "No valid host was found. There are not enough hosts available.");
        let abort = find_exception("BuildAbortException").unwrap();
        assert_eq!(abort.message(Some("disk full"), "u1", "h1"), "Build of instance u1 aborted: disk full");
        assert_eq!(
            find_exception("ComputeServiceUnavailable").unwrap().message(None, "u1", "h1"),
            "Compute service of h1 is unavailable at this time."
        );
        assert_eq!(
            find_exception("HypervisorUnavailable").unwrap().message(Some("qemu gone"), "u", "h"),
            "Connection to the hypervisor is broken on host: qemu gone"
        );
        let timeout = find_exception("MessagingTimeout").unwrap().message(None, "u", "h");
        assert!(timeout.starts_with("Timed out waiting for a reply to message ID ") && timeout.len() > 50, "{timeout}");
        assert!(find_exception("NoSuchThing").is_none());
    }
}
