//! One-shot host commands (`ip`, `nft`, `iptables`) and what they report, parsed. Every
//! change novabox makes to the host's network goes through `run`, so a failure names the
//! command that failed and what it printed.

use std::process::Command;

use serde::Deserialize;

use super::NetError;

/// Runs `program args..`; its stdout on success, `NetError::Command` with stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    run_input(program, args, None)
}

/// As `run`, with `input` on stdin (`nft -f -`).
pub fn run_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let shown = format!("{program} {}", args.join(" "));
    let mut child =
        cmd.spawn().map_err(|e| NetError::Missing { program: program.to_string(), detail: e.to_string() })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| NetError::Command { command: shown.clone(), detail: e.to_string() })?;
    }
    let out =
        child.wait_with_output().map_err(|e| NetError::Command { command: shown.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(NetError::Command { command: shown, detail });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `program` is on the PATH.
pub fn has(program: &str) -> bool {
    which::which(program).is_ok()
}

/// One interface as `ip -json link show` prints it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub ifalias: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
}

/// One route as `ip -json route show` prints it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub dev: Option<String>,
}

pub fn parse_links(json: &str) -> Result<Vec<Link>, NetError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json).map_err(|e| NetError::Parse { what: "ip -json link", detail: e.to_string() })
}

pub fn parse_routes(json: &str) -> Result<Vec<Route>, NetError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json).map_err(|e| NetError::Parse { what: "ip -json route", detail: e.to_string() })
}

pub fn links() -> Result<Vec<Link>, NetError> {
    parse_links(&run("ip", &["-json", "link", "show"])?)
}

pub fn routes() -> Result<Vec<Route>, NetError> {
    parse_routes(&run("ip", &["-json", "-4", "route", "show", "table", "all"])?)
}

/// True when this process may change the host's network (CAP_NET_ADMIN in its effective set).
pub fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(cap_eff)
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

fn cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let links = parse_links(
            r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]},
                {"ifindex":5,"ifname":"nbr0","ifalias":"novabox:abc123"},
                {"ifindex":6,"ifname":"tapx","master":"nbr0"}]"#,
        )
        .unwrap();
        assert_eq!(links[1].ifalias.as_deref(), Some("novabox:abc123"));
        assert_eq!(links[2].master.as_deref(), Some("nbr0"));
        let routes = parse_routes(
            r#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth0"},{"dst":"172.17.0.0/16","dev":"docker0"}]"#,
        )
        .unwrap();
        assert_eq!(routes[1].dst, "172.17.0.0/16");
        assert!(parse_links("").unwrap().is_empty());
        assert!(parse_links("not json").is_err());
    }

    #[test]
    fn reads_the_effective_capabilities() {
        assert_eq!(cap_eff("Name:\tx\nCapEff:\t0000000000001000\n"), Some(0x1000));
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }
}
