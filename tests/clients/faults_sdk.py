"""openstacksdk against injected faults (issue 23, docs/faults.md), unchanged SDK calls.

Usage:
  python faults_sdk.py nvh CLOUD IMAGE_FILE   # a build the test made fail with NoValidHost
  python faults_sdk.py retry CLOUD            # a 429 with Retry-After the test injected
Prints one result line; exits non-zero with the reason when the SDK does not behave as
against a real cloud failing that way.
"""
import sys
import time

import openstack
from openstack import exceptions


def nvh(cloud, image_file):
    conn = openstack.connect(cloud=cloud)
    image = conn.image.create_image(
        name="faults-image", filename=image_file, disk_format="raw", container_format="bare", wait=True
    )
    flavor = conn.compute.find_flavor("m1.nano")
    net = conn.network.find_network("private")
    server = conn.compute.create_server(
        name="doomed", image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": net.id}]
    )
    try:
        conn.compute.wait_for_server(server, status="ACTIVE", wait=60)
    except exceptions.ResourceFailure as e:
        print(f"wait_for_server raised: {e}")
    else:
        raise SystemExit("wait_for_server returned an ACTIVE server; the injected fault did not fire")
    failed = conn.compute.get_server(server.id)
    print(f"server {failed.id} status {failed.status} fault {failed.fault}")
    # The rule fired once: the next build goes through.
    again = conn.compute.create_server(
        name="fine", image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": net.id}]
    )
    again = conn.compute.wait_for_server(again, status="ACTIVE", wait=60)
    print(f"second server {again.status}")


def retry(cloud):
    # keystoneauth retries 429 and 503 when asked to, sleeping what Retry-After says.
    conn = openstack.connect(cloud=cloud, status_code_retries=3)
    started = time.monotonic()
    flavors = [f.name for f in conn.compute.flavors()]
    took = time.monotonic() - started
    assert "m1.nano" in flavors, flavors
    print(f"flavors listed after a retry in {took:.2f} s")


def main():
    mode = sys.argv[1]
    if mode == "nvh":
        nvh(sys.argv[2], sys.argv[3])
    elif mode == "retry":
        retry(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
