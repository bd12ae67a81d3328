//! neutron's error type and HTTP status for each refusal of the network module, in one
//! place: every handler that gets a [`NetworkError`] (directly or inside a `DbError`) answers
//! with this.

use axum::http::StatusCode;

use crate::api::fault::ApiError;
use crate::network::NetworkError;

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> ApiError {
        use NetworkError as E;
        let (status, kind) = match &e {
            E::NetworkNotFound(_) => (StatusCode::NOT_FOUND, "NetworkNotFound"),
            E::SubnetNotFound(_) => (StatusCode::NOT_FOUND, "SubnetNotFound"),
            E::SubnetNotOnNetwork { .. } => {
                // neutron validates a port's fixed_ips before looking anything up.
                return ApiError::bad_request(format!("Invalid input for operation: {e}")).with_kind("InvalidInput");
            }
            E::PortNotFound(_) => (StatusCode::NOT_FOUND, "PortNotFound"),
            E::SecurityGroupNotFound(_) => (StatusCode::NOT_FOUND, "SecurityGroupNotFound"),
            E::SecurityGroupRuleNotFound(_) => (StatusCode::NOT_FOUND, "SecurityGroupRuleNotFound"),
            E::MacAddressInUse { .. } => (StatusCode::CONFLICT, "MacAddressInUse"),
            E::InvalidIpForSubnet(_) => (StatusCode::BAD_REQUEST, "InvalidIpForSubnet"),
            E::IpAddressAlreadyAllocated { .. } => (StatusCode::CONFLICT, "IpAddressAlreadyAllocated"),
            E::IpAddressGenerationFailure { .. } => (StatusCode::CONFLICT, "IpAddressGenerationFailure"),
            E::NetworkInUse(_) => (StatusCode::CONFLICT, "NetworkInUse"),
            E::SubnetInUse(_) => (StatusCode::CONFLICT, "SubnetInUse"),
            E::SecurityGroupInUse(_) => (StatusCode::CONFLICT, "SecurityGroupInUse"),
            E::SecurityGroupRuleExists(_) => (StatusCode::CONFLICT, "SecurityGroupRuleExists"),
            E::SubnetOverlap { .. } => (StatusCode::BAD_REQUEST, "InvalidInput"),
            // nova checks this before neutron would; only the conductor meets it.
            E::PortNotFree(_) => (StatusCode::CONFLICT, "Conflict"),
            E::OverQuota(_) => (StatusCode::CONFLICT, "OverQuota"),
            E::VlanIdInUse { .. } => (StatusCode::CONFLICT, "VlanIdInUse"),
            E::FlatNetworkInUse(_) => (StatusCode::CONFLICT, "FlatNetworkInUse"),
            E::NoNetworkAvailable => (StatusCode::SERVICE_UNAVAILABLE, "NoNetworkAvailable"),
            // Issue 19: routers and floating IPs.
            E::RouterNotFound(_) => (StatusCode::NOT_FOUND, "RouterNotFound"),
            E::RouterInUse(_) => (StatusCode::CONFLICT, "RouterInUse"),
            E::RouterInterfaceNotFound { .. } => (StatusCode::NOT_FOUND, "RouterInterfaceNotFound"),
            E::RouterInterfaceNotFoundForSubnet { .. } => (StatusCode::NOT_FOUND, "RouterInterfaceNotFoundForSubnet"),
            E::FloatingIpNotFound(_) => (StatusCode::NOT_FOUND, "FloatingIPNotFound"),
            E::ExternalGatewayForFloatingIpNotFound { .. } => {
                (StatusCode::NOT_FOUND, "ExternalGatewayForFloatingIPNotFound")
            }
            E::FloatingIpPortAlreadyAssociated { .. } => (StatusCode::CONFLICT, "FloatingIPPortAlreadyAssociated"),
            E::RouterExternalGatewayInUseByFloatingIp { .. } => {
                (StatusCode::CONFLICT, "RouterExternalGatewayInUseByFloatingIp")
            }
            E::RouterInterfaceInUseByFloatingIp { .. } => (StatusCode::CONFLICT, "RouterInterfaceInUseByFloatingIP"),
            E::RouterInterfaceInUseByRoute { .. } => (StatusCode::CONFLICT, "RouterInterfaceInUseByRoute"),
            E::PortInUse { .. } => (StatusCode::CONFLICT, "PortInUse"),
            E::ServicePortInUse { .. } => (StatusCode::CONFLICT, "ServicePortInUse"),
            E::BadRequest { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
        };
        ApiError::new(status, e.to_string()).with_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_neutrons_type_and_status() {
        let e: ApiError = NetworkError::IpAddressGenerationFailure { network_id: "n1".into() }.into();
        assert_eq!((e.status, e.kind), (StatusCode::CONFLICT, Some("IpAddressGenerationFailure")));
        assert_eq!(e.message, "No more IP addresses available on network n1.");
        let e: ApiError = NetworkError::SubnetNotOnNetwork { subnet_id: "s".into(), network_id: "n".into() }.into();
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, Some("InvalidInput")));
        assert_eq!(e.message, "Invalid input for operation: Subnet s could not be found on network n.");
        let e: ApiError =
            crate::db::DbError::from(NetworkError::InvalidIpForSubnet("10.0.0.1".parse().unwrap())).into();
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, Some("InvalidIpForSubnet")), "through DbError too");
    }
}
