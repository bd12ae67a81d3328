//! Who may do what: the persona and ownership rules of the upstream services' default policy
//! files (nova's, neutron's, glance's, cinder's and keystone's), in one table.
//!
//! A handler names the [`Action`] it is about to take and the [`Target`] it acts on, and asks
//! [`check`]. The table says which [`Rule`] guards the action; the answer is either nothing or a
//! [`Denied`], which becomes a 403 in the service's own words (nova: "Policy doesn't allow X to
//! be performed.", neutron: "(rule:X) is disallowed by policy", ...). Handlers never test roles
//! themselves for these actions, so the table is the one place to read or change the rules.
//!
//! Listing what a caller may *see* (another project's resource answers 404, not 403) stays with
//! each service's visibility filter: that is ownership of rows, not policy of actions.

use crate::bus::Context;

/// The roles keystone's bootstrap makes, and which implies which: a token lists the implied
/// roles too, so every rule below that asks for `member` is met by a manager or an admin.
pub const DEFAULT_ROLES: &[&str] = &["admin", "manager", "member", "reader", "service"];
pub const IMPLIED_ROLES: &[(&str, &str)] = &[("admin", "manager"), ("manager", "member"), ("member", "reader")];

/// Who may take an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Any authenticated caller.
    Anyone,
    /// Project-scoped with the admin role (nova's `admin_api`, neutron's `context_is_admin`).
    Admin,
    /// The admin, or a caller of the project that owns the target.
    AdminOrOwner,
    /// The admin, or a caller of the project that owns the target's *network* (neutron's
    /// `admin_or_network_owner`, which guards a port's address, MAC, security and owner).
    AdminOrNetworkOwner,
    /// The admin, or the user the target (a token) was issued to (keystone's
    /// `identity:validate_token`: `admin_required or token_subject`), or the user the target is
    /// (`identity:get_user`: `admin_required or user_id:%(target.user.id)s`).
    AdminOrTokenSubject,
    /// The admin, or a caller holding the member role (itself or through an implied role) on
    /// its project: the default of every state-changing call of nova, neutron, glance and
    /// cinder (`role:member and project_id:%(project_id)s`). A reader is refused.
    ProjectMember,
}

/// The service whose policy file names an action; it decides the wording of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Compute,
    Network,
    Image,
    Volume,
    Identity,
}

/// Every action guarded by more than "any authenticated caller who can see the resource".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `os:scheduler_hints` `force_host`/`force_nodes`, or `availability_zone` `zone:host`.
    ComputeForcedHost,
    /// `host`/`hypervisor_hostname` in a create body (2.74).
    ComputeRequestedDestination,
    /// Booting a flavor that is not public, and seeing it when the project has no access.
    ComputeFlavorPrivate,
    /// Creating, deleting and changing flavors and their access.
    ComputeFlavorManage,
    /// Giving a project access to a private flavor (`addTenantAccess`).
    ComputeFlavorAccessAdd,
    /// Taking it away (`removeTenantAccess`).
    ComputeFlavorAccessRemove,
    /// Acting on a server that is locked.
    ComputeLockOverride,
    // Issue 16: server actions only an admin may take.
    /// `os-resetState`: forcing a server's vm_state.
    ComputeResetState,
    /// A port's `fixed_ips` chosen by the caller.
    NetworkPortFixedIps,
    /// A port's `mac_address` chosen by the caller.
    NetworkPortMacAddress,
    /// A port's `port_security_enabled`.
    NetworkPortSecurity,
    /// A port's `device_owner` set to a `network:` owner (the network's own ports: DHCP,
    /// router interfaces), which neutron trusts.
    NetworkPortDeviceOwner,
    /// A port's `binding:host_id` and `binding:profile`.
    NetworkPortBinding,
    /// Seeing and changing another project's quota (`/v2.0/quotas/{project}`).
    NetworkQuotaManage,
    // Issue 14, network half: the update-side names of the port attribute rules (neutron
    // words a denial with the operation's own rule), and the rest of the quota API.
    /// A port's `fixed_ips` with an `ip_address`, on update.
    NetworkPortUpdateFixedIps,
    /// A port's `mac_address`, on update.
    NetworkPortUpdateMacAddress,
    /// A port's `port_security_enabled`, on update.
    NetworkPortUpdateSecurity,
    /// A port's `device_owner` set to a `network:` owner, on update.
    NetworkPortUpdateDeviceOwner,
    /// A port's `binding:host_id`, on update.
    NetworkPortUpdateBinding,
    /// Seeing another project's quota, or every project's (`GET /v2.0/quotas`).
    NetworkQuotaShow,
    /// Resetting a project's quota to the defaults.
    NetworkQuotaDelete,
    /// `GET`/`HEAD /v3/auth/tokens` for another user's token.
    IdentityValidateToken,
    /// Publishing an image (`visibility: public`).
    ImagePublicize,
    // Issue 17, item 6: cinder's quota API and the volume attributes its policy hides.
    /// Seeing a project's block storage quotas.
    VolumeQuotaShow,
    /// Setting a project's block storage quotas.
    VolumeQuotaUpdate,
    /// Resetting a project's block storage quotas to the defaults.
    VolumeQuotaDelete,
    /// `os-vol-tenant-attr:tenant_id` in a volume's view (omitted, not refused).
    VolumeTenantAttribute,
    /// `os-vol-host-attr:host` and the `os-vol-mig-status-attr:*` keys (omitted, not refused).
    VolumeHostAttribute,
    // Issue 18: keystone's admin API and the reader/member personas of every service.
    /// A keystone admin call, named by its policy (`identity:create_project`, ...).
    IdentityAdmin(&'static str),
    /// `identity:get_project`: the admin, or a caller scoped to that project.
    IdentityGetProject,
    /// `identity:get_user` and `identity:list_user_projects`: the admin, or the user itself.
    IdentityGetUser,
    /// Any state-changing call of a service's API ([`write_action`] says which).
    ProjectMemberWrite(Service),
    // Issue 17, item 3: nova's server groups (`os_compute_api:os-server-groups:*`); create and
    // index need only the persona every write and read needs.
    /// Seeing one group: its project's readers, or the admin.
    ComputeServerGroupShow,
    /// Deleting a group: its project's members, or the admin.
    ComputeServerGroupDelete,
    /// `all_projects` on the list: every project's groups (others get their own, as in nova).
    ComputeServerGroupListAllProjects,
    // Issue 17, item 5: `os_compute_api:os-simple-tenant-usage:*`.
    /// Every project's usage.
    ComputeUsageList,
    /// One project's usage: its readers, or the admin.
    ComputeUsageShow,
    // Issue 16: the resizes, as nova's migrations.
    /// `GET /os-migrations`.
    ComputeMigrationsIndex,
    // novabox's own (issue 23: fault injection and the test clock), admin only.
    /// `/novabox/v1/faults` and `/novabox/v1/clock`: breaking the cloud on purpose.
    NovaboxFaults,
    // Issue 17, item 2: the list filters and the other callers' rows they reach.
    /// Listing every project's servers (`all_tenants`); others get their own, as asked.
    ComputeServersAllTenants,
    /// Every server list filter of nova's schema, not only those nova gives every user.
    ComputeServersAllFilters,
    /// Listing another user's keypairs (`GET /os-keypairs?user_id=`, 2.10).
    ComputeKeypairsOtherUser,
    // Issue 19, item 4: neutron's provider attributes of a network, by their policy name
    // (`create_network:provider:network_type`, `get_network:provider:segmentation_id`, ...).
    NetworkProviderAttribute(&'static str),
    // Issue 22: nova's remote consoles (2.6's `remote-consoles` and the older actions).
    /// Getting a console URL of a server: its project's members, or the admin.
    ComputeRemoteConsoles,
    // Issue 19: external networks, routers' gateways and floating IPs (neutron's admin_only rules).
    /// `router:external` on a new network.
    NetworkCreateExternal,
    /// `router:external` changed on a network.
    NetworkUpdateExternal,
    /// `enable_snat` in a new router's `external_gateway_info`.
    NetworkCreateRouterSnat,
    /// `enable_snat` in a router update's `external_gateway_info`.
    NetworkUpdateRouterSnat,
    /// `external_fixed_ips` chosen in a new router's gateway.
    NetworkCreateRouterFixedIps,
    /// `external_fixed_ips` chosen in a router update's gateway.
    NetworkUpdateRouterFixedIps,
    /// A floating IP's address chosen by the caller.
    NetworkFloatingIpAddress,
    // Issue 17, item 5: `os_compute_api:os-instance-actions:*` beyond seeing the server.
    /// An action's events with their traceback and host (before 2.51, the events at all).
    ComputeInstanceActionsEvents,
    /// The events' `details` (2.84).
    ComputeInstanceActionsEventsDetails,
    // Issue 17, item 5: nova's host aggregates, by their policy name
    // (`os_compute_api:os-aggregates:create`, `...:add_host`, ...): admin only.
    ComputeAggregates(&'static str),
}

impl Action {
    /// The name of the action in its service's policy file.
    pub fn name(self) -> &'static str {
        match self {
            Action::ComputeForcedHost => "os_compute_api:servers:create:forced_host",
            Action::ComputeRequestedDestination => "compute:servers:create:requested_destination",
            Action::ComputeFlavorPrivate => "os_compute_api:os-flavor-access",
            Action::ComputeFlavorManage => "os_compute_api:os-flavor-manage:create",
            Action::ComputeFlavorAccessAdd => "os_compute_api:os-flavor-access:add_tenant_access",
            Action::ComputeFlavorAccessRemove => "os_compute_api:os-flavor-access:remove_tenant_access",
            Action::ComputeLockOverride => "os_compute_api:os-lock-server:unlock:unlock_override",
            Action::ComputeResetState => "os_compute_api:os-admin-actions:reset_state",
            Action::NetworkPortFixedIps => "create_port:fixed_ips:ip_address",
            Action::NetworkPortMacAddress => "create_port:mac_address",
            Action::NetworkPortSecurity => "create_port:port_security_enabled",
            Action::NetworkPortDeviceOwner => "create_port:device_owner",
            Action::NetworkPortBinding => "create_port:binding:host_id",
            Action::NetworkQuotaManage => "update_quota",
            Action::NetworkPortUpdateFixedIps => "update_port:fixed_ips:ip_address",
            Action::NetworkPortUpdateMacAddress => "update_port:mac_address",
            Action::NetworkPortUpdateSecurity => "update_port:port_security_enabled",
            Action::NetworkPortUpdateDeviceOwner => "update_port:device_owner",
            Action::NetworkPortUpdateBinding => "update_port:binding:host_id",
            Action::NetworkQuotaShow => "get_quota",
            Action::NetworkQuotaDelete => "delete_quota",
            Action::IdentityValidateToken => "identity:validate_token",
            Action::ImagePublicize => "publicize_image",
            Action::VolumeQuotaShow => "volume_extension:quotas:show",
            Action::VolumeQuotaUpdate => "volume_extension:quotas:update",
            Action::VolumeQuotaDelete => "volume_extension:quotas:delete",
            Action::VolumeTenantAttribute => "volume_extension:volume_tenant_attribute",
            Action::VolumeHostAttribute => "volume_extension:volume_host_attribute",
            Action::IdentityAdmin(name) => name,
            Action::NetworkProviderAttribute(name) => name,
            Action::ComputeAggregates(name) => name,
            Action::IdentityGetProject => "identity:get_project",
            Action::IdentityGetUser => "identity:get_user",
            // The base rule of each service's defaults; upstream names the call's own policy.
            Action::ProjectMemberWrite(Service::Compute | Service::Volume) => "project_member_api",
            Action::ProjectMemberWrite(_) => "project_member",
            Action::NovaboxFaults => "novabox:faults",
            Action::ComputeServersAllTenants => "os_compute_api:servers:index:get_all_tenants",
            Action::ComputeServersAllFilters => "os_compute_api:servers:allow_all_filters",
            Action::ComputeKeypairsOtherUser => "os_compute_api:os-keypairs:index",
            Action::ComputeServerGroupShow => "os_compute_api:os-server-groups:show",
            Action::ComputeServerGroupDelete => "os_compute_api:os-server-groups:delete",
            Action::ComputeServerGroupListAllProjects => "os_compute_api:os-server-groups:index:all_projects",
            Action::ComputeUsageList => "os_compute_api:os-simple-tenant-usage:list",
            Action::ComputeUsageShow => "os_compute_api:os-simple-tenant-usage:show",
            Action::ComputeRemoteConsoles => "os_compute_api:os-remote-consoles",
            Action::NetworkCreateExternal => "create_network:router:external",
            Action::NetworkUpdateExternal => "update_network:router:external",
            Action::NetworkCreateRouterSnat => "create_router:external_gateway_info:enable_snat",
            Action::NetworkUpdateRouterSnat => "update_router:external_gateway_info:enable_snat",
            Action::NetworkCreateRouterFixedIps => "create_router:external_gateway_info:external_fixed_ips",
            Action::NetworkUpdateRouterFixedIps => "update_router:external_gateway_info:external_fixed_ips",
            Action::NetworkFloatingIpAddress => "create_floatingip:floating_ip_address",
            Action::ComputeInstanceActionsEvents => "os_compute_api:os-instance-actions:events",
            Action::ComputeInstanceActionsEventsDetails => "os_compute_api:os-instance-actions:events:details",
            Action::ComputeMigrationsIndex => "os_compute_api:os-migrations:index",
        }
    }

    pub fn service(self) -> Service {
        use Action::*;
        match self {
            ComputeForcedHost
            | ComputeRequestedDestination
            | ComputeFlavorPrivate
            | ComputeFlavorManage
            | ComputeFlavorAccessAdd
            | ComputeFlavorAccessRemove
            | ComputeLockOverride
            | ComputeResetState => Service::Compute,
            NetworkPortFixedIps
            | NetworkPortMacAddress
            | NetworkPortSecurity
            | NetworkPortDeviceOwner
            | NetworkPortBinding
            | NetworkQuotaManage
            | NetworkPortUpdateFixedIps
            | NetworkPortUpdateMacAddress
            | NetworkPortUpdateSecurity
            | NetworkPortUpdateDeviceOwner
            | NetworkPortUpdateBinding
            | NetworkQuotaShow
            | NetworkQuotaDelete => Service::Network,
            IdentityValidateToken | IdentityAdmin(_) | IdentityGetProject | IdentityGetUser => Service::Identity,
            ImagePublicize => Service::Image,
            VolumeQuotaShow | VolumeQuotaUpdate | VolumeQuotaDelete | VolumeTenantAttribute | VolumeHostAttribute => {
                Service::Volume
            }
            ProjectMemberWrite(service) => service,
            // Its callers use nova's clients and read nova's wording.
            NovaboxFaults => Service::Compute,
            ComputeServersAllTenants | ComputeServersAllFilters | ComputeKeypairsOtherUser => Service::Compute,
            ComputeServerGroupShow | ComputeServerGroupDelete | ComputeServerGroupListAllProjects => Service::Compute,
            ComputeUsageList | ComputeUsageShow => Service::Compute,
            NetworkProviderAttribute(_) => Service::Network,
            ComputeRemoteConsoles => Service::Compute,
            NetworkCreateExternal
            | NetworkUpdateExternal
            | NetworkCreateRouterSnat
            | NetworkUpdateRouterSnat
            | NetworkCreateRouterFixedIps
            | NetworkUpdateRouterFixedIps
            | NetworkFloatingIpAddress => Service::Network,
            ComputeInstanceActionsEvents | ComputeInstanceActionsEventsDetails => Service::Compute,
            ComputeMigrationsIndex => Service::Compute,
            ComputeAggregates(_) => Service::Compute,
        }
    }

    /// The table: the rule of each action, as the upstream default policy has it.
    pub fn rule(self) -> Rule {
        use Action::*;
        match self {
            ComputeForcedHost
            | ComputeRequestedDestination
            | ComputeFlavorPrivate
            | ComputeFlavorManage
            | ComputeFlavorAccessAdd
            | ComputeFlavorAccessRemove
            | ComputeLockOverride
            | ComputeResetState
            | NetworkPortBinding
            | NetworkQuotaManage
            | ImagePublicize => Rule::Admin,
            NetworkPortFixedIps | NetworkPortMacAddress | NetworkPortSecurity | NetworkPortDeviceOwner => {
                Rule::AdminOrNetworkOwner
            }
            // neutron's default lets a manager of the caller's own project see quotas too;
            // novabox gives no one the manager role, so it is the admin.
            NetworkPortUpdateBinding | NetworkQuotaShow | NetworkQuotaDelete => Rule::Admin,
            // neutron asks a manager of the network's project for a MAC change; novabox gives
            // no one that role, so the network owner's members decide, as on create.
            NetworkPortUpdateFixedIps
            | NetworkPortUpdateMacAddress
            | NetworkPortUpdateSecurity
            | NetworkPortUpdateDeviceOwner => Rule::AdminOrNetworkOwner,
            VolumeQuotaShow => Rule::AdminOrOwner,
            VolumeQuotaUpdate | VolumeQuotaDelete | VolumeTenantAttribute | VolumeHostAttribute => Rule::Admin,
            IdentityValidateToken | IdentityGetUser => Rule::AdminOrTokenSubject,
            IdentityAdmin(_) => Rule::Admin,
            IdentityGetProject => Rule::AdminOrOwner,
            ProjectMemberWrite(_) => Rule::ProjectMember,
            NovaboxFaults => Rule::Admin,
            ComputeServersAllTenants | ComputeServersAllFilters => Rule::Admin,
            // nova's ADMIN_OR_OWNER on the keypairs' user.
            ComputeKeypairsOtherUser => Rule::AdminOrTokenSubject,
            ComputeServerGroupShow | ComputeServerGroupDelete => Rule::AdminOrOwner,
            ComputeServerGroupListAllProjects => Rule::Admin,
            ComputeUsageList => Rule::Admin,
            ComputeUsageShow => Rule::AdminOrOwner,
            NetworkProviderAttribute(_) => Rule::Admin,
            // nova's PROJECT_MEMBER_OR_ADMIN: the member persona every POST needs is checked
            // with the token; the project is the server's.
            ComputeRemoteConsoles => Rule::AdminOrOwner,
            NetworkCreateExternal
            | NetworkUpdateExternal
            | NetworkCreateRouterSnat
            | NetworkUpdateRouterSnat
            | NetworkCreateRouterFixedIps
            | NetworkUpdateRouterFixedIps
            | NetworkFloatingIpAddress => Rule::Admin,
            ComputeInstanceActionsEvents | ComputeInstanceActionsEventsDetails => Rule::Admin,
            ComputeMigrationsIndex => Rule::Admin,
            ComputeAggregates(_) => Rule::Admin,
        }
    }
}

/// What an action is taken on: whichever owners the rule needs. Empty fields never match.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// The project that owns the resource.
    pub project_id: Option<&'a str>,
    /// The project that owns the resource's network (for ports).
    pub network_project_id: Option<&'a str>,
    /// The user a token was issued to.
    pub user_id: Option<&'a str>,
}

/// A caller the table said no to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", denial_message(*.0))]
pub struct Denied(pub Action);

/// Whether `caller` may take `action` on `target`.
pub fn check(caller: &Context, action: Action, target: &Target<'_>) -> Result<(), Denied> {
    let same = |owner: Option<&str>, mine: Option<&str>| matches!((owner, mine), (Some(o), Some(m)) if !o.is_empty() && o == m);
    let allowed = match action.rule() {
        Rule::Anyone => true,
        Rule::Admin => caller.is_admin,
        Rule::AdminOrOwner => caller.is_admin || same(target.project_id, caller.project_id.as_deref()),
        Rule::AdminOrNetworkOwner => caller.is_admin || same(target.network_project_id, caller.project_id.as_deref()),
        Rule::AdminOrTokenSubject => caller.is_admin || same(target.user_id, caller.user_id.as_deref()),
        Rule::ProjectMember => caller.is_admin || caller.roles.iter().any(|r| r == "member"),
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied(action))
    }
}

/// The persona action a request to `service` needs, if any: every call that changes state
/// needs the member role, except what upstream lets any user do for itself (nova's keypairs
/// belong to the user, not the project). Keystone's calls are checked one by one instead.
pub fn write_action(service: Service, method: &axum::http::Method, path: &str) -> Option<Action> {
    let reads = [axum::http::Method::GET, axum::http::Method::HEAD, axum::http::Method::OPTIONS];
    if service == Service::Identity || reads.contains(method) {
        return None;
    }
    if service == Service::Compute && path.contains("/os-keypairs") {
        return None;
    }
    Some(Action::ProjectMemberWrite(service))
}

/// The 403's text, in the words of the service whose policy said no.
fn denial_message(action: Action) -> String {
    let name = action.name();
    match action.service() {
        Service::Compute | Service::Volume => format!("Policy doesn't allow {name} to be performed."),
        Service::Network => format!("(rule:{name}) is disallowed by policy"),
        Service::Identity => format!("You are not authorized to perform the requested action: {name}."),
        Service::Image => format!("You are not authorized to complete {name} action."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(project: &str, user: &str, admin: bool) -> Context {
        Context {
            project_id: Some(project.into()),
            user_id: Some(user.into()),
            is_admin: admin,
            roles: if admin { vec!["admin".into()] } else { vec!["member".into()] },
            ..Context::default()
        }
    }

    #[test]
    fn admin_only_actions_refuse_members_in_their_service_words() {
        let member = caller("p1", "u1", false);
        let err = check(&member, Action::ComputeForcedHost, &Target::default()).unwrap_err();
        assert_eq!(err.to_string(), "Policy doesn't allow os_compute_api:servers:create:forced_host to be performed.");
        assert!(check(&caller("p1", "u1", true), Action::ComputeForcedHost, &Target::default()).is_ok());
    }

    #[test]
    fn network_owner_rules_look_at_the_network_not_the_port() {
        let alt = caller("alt", "u2", false);
        let shared_of_demo = Target { project_id: Some("alt"), network_project_id: Some("demo"), user_id: None };
        let err = check(&alt, Action::NetworkPortSecurity, &shared_of_demo).unwrap_err();
        assert_eq!(err.to_string(), "(rule:create_port:port_security_enabled) is disallowed by policy");
        let own = Target { network_project_id: Some("alt"), ..shared_of_demo };
        assert!(check(&alt, Action::NetworkPortSecurity, &own).is_ok());
    }

    #[test]
    fn remote_consoles_are_for_the_servers_project_or_an_admin() {
        let server_of_p1 = Target { project_id: Some("p1"), ..Target::default() };
        assert!(check(&caller("p1", "u1", false), Action::ComputeRemoteConsoles, &server_of_p1).is_ok());
        assert!(check(&caller("p9", "u9", true), Action::ComputeRemoteConsoles, &server_of_p1).is_ok());
        let err = check(&caller("p2", "u2", false), Action::ComputeRemoteConsoles, &server_of_p1).unwrap_err();
        assert_eq!(err.to_string(), "Policy doesn't allow os_compute_api:os-remote-consoles to be performed.");
    }

    #[test]
    fn token_validation_is_for_the_subject_or_an_admin() {
        let u1 = caller("p1", "u1", false);
        assert!(check(&u1, Action::IdentityValidateToken, &Target { user_id: Some("u1"), ..Target::default() }).is_ok());
        let err = check(&u1, Action::IdentityValidateToken, &Target { user_id: Some("u2"), ..Target::default() });
        assert_eq!(
            err.unwrap_err().to_string(),
            "You are not authorized to perform the requested action: identity:validate_token."
        );
        // An empty owner never matches an empty caller.
        let nobody = Context { user_id: Some(String::new()), ..caller("p1", "", false) };
        assert!(
            check(&nobody, Action::IdentityValidateToken, &Target { user_id: Some(""), ..Target::default() }).is_err()
        );
    }
}
