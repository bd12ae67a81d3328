"""tempest against novabox, configured as DevStack's lib/tempest configures it.

Run through scripts/tempest, with the python of .build/tempest-venv (it needs PyYAML and
python-subunit, both tempest's own dependencies). DevStack's configure_tempest reads the cloud
with `openstack --os-cloud devstack-admin ...`; this reads the same facts from the API with the
admin entry of clouds.yaml. Where DevStack takes a value from its own settings (lockout,
feature flags), the value here is DevStack's default unless novabox's configuration or API says
otherwise; each such departure is commented and listed in docs/compatibility.md.
"""

import argparse
import configparser
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import yaml

# The image DevStack's stack.sh uploads before lib/tempest runs (cirros); the fake driver
# never reads its bytes, so a small raw file stands in for it.
IMAGE_NAME = "cirros-0.6.3-x86_64-disk"
# DevStack's TEMPEST_FLAVOR_RAM and TEMPEST_FLAVOR_ALT_RAM (MiB).
FLAVORS = [("m1.nano", "42", 128), ("m1.micro", "84", 192)]
# DevStack's default FIXED_RANGE (IPV4_ADDRS_SAFE_TO_USE) and BUILD_TIMEOUT.
FIXED_RANGE = "10.0.0.0/22"
BUILD_TIMEOUT = 196


class Cloud:
    """An admin session on the cloud: a project-scoped token and its catalog."""

    def __init__(self, auth):
        self.auth_url = auth["auth_url"].rstrip("/")
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": auth["username"],
                            "domain": domain_ref(auth, "user"),
                            "password": auth["password"],
                        }
                    },
                },
                "scope": {"project": {"name": auth["project_name"], "domain": domain_ref(auth, "project")}},
            }
        }
        req = urllib.request.Request(
            self.auth_url + "/auth/tokens",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            self.token = resp.headers["X-Subject-Token"]
            self.token_body = json.load(resp)["token"]
        self.endpoints = {}
        for service in self.token_body.get("catalog", []):
            for ep in service["endpoints"]:
                if ep["interface"] == "public":
                    self.endpoints[service["type"]] = ep["url"].rstrip("/")

    def call(self, method, service, path, body=None, data=None, content_type="application/json"):
        """Returns (status, parsed body or None); HTTP errors are returned, not raised."""
        url = self.endpoints[service] + path
        headers = {"X-Auth-Token": self.token}
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = resp.read()
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text) if text else None
            except ValueError:
                return e.code, text.decode(errors="replace")

    def get(self, service, path):
        status, body = self.call("GET", service, path)
        if status != 200:
            raise SystemExit(f"tempest: GET {service} {path} answered {status}: {body}")
        return body


def domain_ref(auth, which):
    if auth.get(f"{which}_domain_id"):
        return {"id": auth[f"{which}_domain_id"]}
    return {"name": auth.get(f"{which}_domain_name", "Default")}


def load_cloud(clouds_yaml, name):
    candidates = [clouds_yaml] if clouds_yaml else []
    if os.environ.get("OS_CLIENT_CONFIG_FILE"):
        candidates.append(os.environ["OS_CLIENT_CONFIG_FILE"])
    candidates += ["clouds.yaml", os.path.expanduser("~/.config/openstack/clouds.yaml"), "/etc/openstack/clouds.yaml"]
    for path in candidates:
        if path and os.path.exists(path):
            with open(path) as f:
                clouds = (yaml.safe_load(f) or {}).get("clouds", {})
            if name in clouds:
                return clouds[name]
            raise SystemExit(f"tempest: no cloud {name!r} in {path}")
    raise SystemExit("tempest: no clouds.yaml found (give --clouds-yaml)")


def active_images(cloud):
    images = cloud.get("image", "/v2/images?status=active")["images"]
    # DevStack's get_active_images leaves out kernels and ramdisks.
    return [i for i in images if i.get("disk_format") not in ("aki", "ari")]


def ensure_image(cloud):
    """The images DevStack finds in glance; one is uploaded, as stack.sh does, when none is."""
    images = active_images(cloud)
    if images:
        return images
    status, image = cloud.call(
        "POST",
        "image",
        "/v2/images",
        {"name": IMAGE_NAME, "disk_format": "raw", "container_format": "bare", "visibility": "public"},
    )
    if status != 201:
        raise SystemExit(f"tempest: cannot create the test image: {status} {image}")
    data = bytes((i * 2654435761 >> 24) & 0xFF for i in range(1024 * 1024))
    status, body = cloud.call(
        "PUT", "image", f"/v2/images/{image['id']}/file", data=data, content_type="application/octet-stream"
    )
    if status != 204:
        raise SystemExit(f"tempest: cannot upload the test image: {status} {body}")
    print(f"tempest: uploaded image {IMAGE_NAME} ({image['id']}), as DevStack's stack.sh does", file=sys.stderr)
    return active_images(cloud)


def ensure_flavors(cloud, image):
    """flavor_ref and flavor_ref_alt as DevStack picks them: m1.nano (42) and m1.micro (84),
    made when missing with a disk the size of the image in GiB (at least 1)."""
    flavors = cloud.get("compute", "/flavors")["flavors"]
    by_name = {f["name"]: f["id"] for f in flavors}
    disk = max(1, -(-int(image.get("size") or 0) // (1 << 30)))
    refs = []
    for name, fid, ram in FLAVORS:
        if name not in by_name:
            body = {"flavor": {"name": name, "id": fid, "ram": ram, "disk": disk, "vcpus": 1}}
            status, made = cloud.call("POST", "compute", "/flavors", body)
            if status != 200:
                raise SystemExit(f"tempest: cannot create flavor {name}: {status} {made}")
            by_name[name] = made["flavor"]["id"]
            print(f"tempest: created flavor {name} ({by_name[name]}), as DevStack does", file=sys.stderr)
        refs.append(by_name[name])
    return refs


def network_facts(cloud):
    """The public network (if the cloud has one), the extensions neutron lists, and whether
    it has routers (tempest's isolated networks need them)."""
    exts = sorted(e["alias"] for e in cloud.get("network", "/v2.0/extensions")["extensions"])
    public = None
    if "external-net" in exts:
        nets = cloud.get("network", "/v2.0/networks?router:external=True")["networks"]
        named = [n for n in nets if n["name"] == "public"]
        public = (named or nets or [None])[0]
    status, _ = cloud.call("GET", "network", "/v2.0/routers")
    return public, exts, status == 200


def max_microversions(cloud):
    """The highest microversion compute and block storage advertise. DevStack writes `latest`
    because its nova and cinder are the release tempest tests; its NOTE says a cloud behind that
    writes its own maximum, which is what novabox is until it reaches nova's and cinder's."""
    root = lambda url: url.split("/v2.1")[0].split("/v3")[0] + "/"
    out = {}
    for service, key in (("compute", "compute"), ("volumev3", "volume")):
        if service not in cloud.endpoints:
            continue
        req = urllib.request.Request(root(cloud.endpoints[service]))
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read())  # the version list answers 300
        versions = doc.get("versions") or [doc.get("version", {})]
        current = [v for v in versions if v.get("status") == "CURRENT"] or versions
        out[key] = current[0].get("version") or "latest"
    return out


def novabox_config(args):
    """The home's effective configuration (defaults filled in), as `novabox config show` prints it."""
    if not args.home:
        return {}
    out = subprocess.run(
        [args.novabox, "--home", args.home, "config", "show", "--json"], check=True, stdout=subprocess.PIPE
    ).stdout
    return json.loads(out)


def write_conf(args):
    auth = load_cloud(args.clouds_yaml, args.cloud)
    cloud = Cloud(auth["auth"] if "auth" in auth else auth)
    a = auth["auth"]
    api = novabox_config(args).get("api", {})

    images = ensure_image(cloud)
    image_ref = images[0]["id"]
    image_ref_alt = images[1]["id"] if len(images) > 1 else image_ref
    flavor_ref, flavor_ref_alt = ensure_flavors(cloud, images[0])
    public, net_exts, has_routers = network_facts(cloud)
    domain = cloud.get("identity", f"/v3/domains/{cloud.token_body['project']['domain']['id']}")["domain"]
    user_domain = cloud.token_body["user"]["domain"]["name"]
    micro = max_microversions(cloud)

    ws = os.path.abspath(args.workspace)
    conf = configparser.ConfigParser(interpolation=None)
    conf.optionxform = str
    sections = {
        "DEFAULT": {"use_syslog": "False", "use_stderr": "False", "log_file": "tempest.log", "debug": "True"},
        "oslo_concurrency": {"lock_path": os.path.join(ws, "tempest_lock")},
        "auth": {
            "admin_username": a["username"],
            "admin_password": a["password"],
            "admin_project_name": a["project_name"],
            "admin_domain_name": user_domain,
            # TEMPEST_ALLOW_TENANT_ISOLATION's default: tempest makes its own projects and users.
            "use_dynamic_credentials": "True",
            # Tempest's isolated networks come with a router each; without routers the classes
            # that ask for a network cannot set up, so those boot on the shared network instead
            # ([compute] fixed_network_name below).
            "create_isolated_networks": str(has_routers),
        },
        "identity": {
            "uri_v3": cloud.auth_url,
            "auth_version": "v3",
            "region": auth.get("region_name", "RegionOne"),
            # DevStack writes keystone's lockout options (2 attempts, 10 s); these are the
            # cloud's own (without --home, DevStack's, which tempest then assumes).
            "user_lockout_failure_attempts": str(api.get("lockout_failure_attempts", 2)),
            "user_lockout_duration": str(api.get("lockout_duration_secs", 10)),
            # novabox keeps no password history (keystone's unique_last_password_count), so
            # tempest must not expect a reused password to be refused.
            "user_unique_last_password_count": "0",
            "default_domain_id": domain["id"],
        },
        "identity-feature-enabled": {
            # DevStack's KEYSTONE_SECURITY_COMPLIANCE_ENABLED: the lockout and self-service
            # password change tests run (with the lockout values above).
            "security_compliance": "True",
            "project_tags": "True",
            "application_credentials": "True",
            # novabox's application credentials have no access rules (docs/identity.md).
            "access_rules": "False",
        },
        "image-feature-enabled": {"import_image": "False", "os_glance_reserved": "True"},
        "compute": {
            "image_ref": image_ref,
            "image_ref_alt": image_ref_alt,
            "flavor_ref": flavor_ref,
            "flavor_ref_alt": flavor_ref_alt,
            "build_timeout": str(BUILD_TIMEOUT),
            "max_microversion": micro.get("compute", "latest"),
        },
        "compute-feature-enabled": {
            # DevStack's values for a libvirt/qemu job (not LXC, no VNC, SPICE or serial proxy).
            "personality": "False",
            "resize": "True",
            "live_migration": "False",
            "change_password": "False",
            "block_migration_for_live_migration": "False",
            "live_migrate_back_and_forth": "False",
            "attach_encrypted_volume": "True",
            "hostname_fqdn_sanitization": "True",
            "nova_policy_roles": "admin,manager,member,reader,service",
            "shelve_migrate": "True",
            "stable_rescue": "True",
            "swap_volume": "True",
        },
        "network": {
            "project_network_cidr": FIXED_RANGE,
            "project_networks_reachable": "false",
            "public_network_id": public["id"] if public else "",
            "floating_network_name": public["name"] if public else "",
            "public_router_id": "",
            "default_network": FIXED_RANGE,
        },
        "network-feature-enabled": {
            # DevStack writes the extensions `tempest verify-config` reads from the API, less
            # metering and l3_agent_scheduler when those agents do not run.
            "api_extensions": ",".join(e for e in net_exts if e not in ("metering", "l3_agent_scheduler")),
            "ipv6": "True",
            "ipv6_subnet_attributes": "True",
            "port_security": "True",
        },
        "validation": {
            # Guests on the fake driver answer no ssh; DevStack's default is True.
            "run_validation": "False",
            "connect_method": "floating",
            "ip_version_for_ssh": "4",
            "ssh_timeout": str(BUILD_TIMEOUT),
            "image_ssh_user": "cirros",
            "image_alt_ssh_user": "cirros",
            "network_for_ssh": "private",
        },
        "volume": {"build_timeout": str(BUILD_TIMEOUT), "max_microversion": micro.get("volume", "latest")},
        "volume-feature-enabled": {
            "manage_snapshot": "False",
            "manage_volume": "False",
            "extend_attached_volume": "False",
            "volume_revert": "False",
            "extend_attached_encrypted_volume": "False",
            "backup": "False",
            "api_extensions": "all",
        },
        "placement": {"max_microversion": "latest"},
        "object-storage-feature-enabled": {"discoverable_apis": "all"},
        "service_available": {
            "key": str("identity" in cloud.endpoints),
            "glance": str("image" in cloud.endpoints),
            "nova": str("compute" in cloud.endpoints),
            "neutron": str("network" in cloud.endpoints),
            "cinder": str("volumev3" in cloud.endpoints or "block-storage" in cloud.endpoints),
            "swift": str("object-store" in cloud.endpoints),
            "horizon": "False",
        },
    }
    if not has_routers:
        sections["compute"]["fixed_network_name"] = args.fixed_network
    for name, values in sections.items():
        if name != "DEFAULT":
            conf.add_section(name)
        for k, v in values.items():
            conf.set(name, k, v)

    registry = os.path.join(ws, "..", os.path.basename(ws) + "-workspaces.yaml")
    if not os.path.exists(os.path.join(ws, "etc")):
        subprocess.run(
            [tempest_bin("tempest"), "init", "--workspace-path", os.path.abspath(registry), ws],
            check=True,
            stdout=sys.stderr,
        )
    with open(os.path.join(ws, "etc", "tempest.conf"), "w") as f:
        f.write("# Written by novabox's scripts/tempest as DevStack's lib/tempest writes it.\n")
        conf.write(f)
    print(f"tempest: wrote {os.path.join(ws, 'etc', 'tempest.conf')}", file=sys.stderr)
    if not has_routers:
        print("tempest: the cloud has no routers; isolated networks are off", file=sys.stderr)


def tempest_bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def counts(ws):
    """Reads the last stestr run of the workspace: outcome counts and the failed test ids."""
    import subunit
    import testtools

    raw = subprocess.run(
        [tempest_bin("stestr"), "last", "--subunit"], cwd=ws, stdout=subprocess.PIPE, check=False
    ).stdout
    tests = {}

    def on_test(test):
        tests[test["id"]] = test

    stream = subunit.ByteStreamToStreamResult(__import__("io").BytesIO(raw), non_subunit_name="stdout")
    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    stream.run(result)
    result.stopTestRun()
    summary = {"passed": 0, "failed": 0, "skipped": 0, "passes": [], "failures": [], "skips": {}}
    for tid, test in tests.items():
        status = test["status"]
        if tid.startswith("setUpClass") or tid.startswith("tearDownClass"):
            # A class fixture's error or skip stands for the class's tests, which never ran.
            status = status if status in ("fail", "skip") else None
        if status in ("success", "xfail"):
            summary["passed"] += 1
            summary["passes"].append(tid)
        elif status == "skip":
            summary["skipped"] += 1
            reason = test["details"].get("reason")
            summary["skips"][tid] = reason.as_text() if reason else ""
        elif status in ("fail", "uxsuccess"):
            summary["failed"] += 1
            summary["failures"].append(tid)
    return summary


def run(args):
    ws = os.path.abspath(args.workspace)
    cmd = [tempest_bin("tempest"), "run"] + args.rest
    # tempest and stestr find the venv's scripts on PATH.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    code = subprocess.run(cmd, cwd=ws, env=env).returncode
    summary = counts(ws)
    summary["exit"] = code
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
    print(
        f"tempest totals: passed={summary['passed']} failed={summary['failed']} skipped={summary['skipped']}",
        flush=True,
    )
    for tid in summary["failures"]:
        print(f"tempest failed: {tid}")
    return code


def main():
    p = argparse.ArgumentParser(prog="scripts/tempest")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("configure", help="make a workspace and write its tempest.conf")
    c.add_argument("--workspace", required=True)
    c.add_argument("--clouds-yaml")
    c.add_argument("--cloud", default="novabox-admin")
    c.add_argument("--home", help="the novabox home, for its lockout settings")
    c.add_argument("--novabox", default="novabox", help="the novabox binary that reads --home's configuration")
    c.add_argument("--fixed-network", default="private", help="the shared network when there are no routers")
    r = sub.add_parser("run", help="tempest run in the workspace, then the counts")
    r.add_argument("--workspace", required=True)
    r.add_argument("--summary", help="write the counts, failures and skip reasons here as JSON")
    r.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.command == "configure":
        write_conf(args)
        return 0
    if args.rest and args.rest[0] == "--":
        args.rest = args.rest[1:]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
