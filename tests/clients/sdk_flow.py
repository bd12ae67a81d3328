"""The openstacksdk flow of the compatibility tests, unchanged SDK calls against novabox.

Usage: python sdk_flow.py CLOUD IMAGE_FILE
Exits non-zero (with the reason) when any step does not behave as OpenStack would.
"""
import sys
import time

import openstack


def wait(conn, server_id, status, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = conn.compute.get_server(server_id)
        if s.status == status:
            return s
        if s.status == "ERROR":
            raise SystemExit(f"server went to ERROR: {s.fault}")
        time.sleep(0.2)
    raise SystemExit(f"server {server_id} did not reach {status}")


def main():
    cloud, image_file = sys.argv[1], sys.argv[2]
    conn = openstack.connect(cloud=cloud)

    flavors = {f.name: f for f in conn.compute.flavors()}
    assert "m1.nano" in flavors, f"m1.nano missing from {sorted(flavors)}"

    image = conn.image.create_image(
        name="sdk-image", filename=image_file, disk_format="raw", container_format="bare", wait=True
    )
    image = conn.image.get_image(image.id)
    assert image.status == "active", image.status
    assert any(i.id == image.id for i in conn.image.images()), "new image not listed"

    nets = [n for n in conn.network.networks()]
    assert any(n.name == "private" for n in nets), [n.name for n in nets]
    net = conn.network.find_network("private")

    kp = conn.compute.create_keypair(name="sdk-key")
    assert kp.private_key and "PRIVATE KEY" in kp.private_key

    server = conn.compute.create_server(
        name="sdk-vm", image_id=image.id, flavor_id=flavors["m1.nano"].id,
        networks=[{"uuid": net.id}], key_name="sdk-key",
    )
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120, interval=0.2)
    assert "private" in server.addresses, server.addresses
    assert any(s.id == server.id for s in conn.compute.servers()), "server not listed"

    output = conn.compute.get_server_console_output(server)["output"]
    assert "sdk-vm" in output, output

    conn.compute.stop_server(server)
    wait(conn, server.id, "SHUTOFF")
    conn.compute.start_server(server)
    wait(conn, server.id, "ACTIVE")
    conn.compute.reboot_server(server, "SOFT")
    wait(conn, server.id, "ACTIVE")

    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=120, interval=0.2)
    conn.compute.delete_keypair("sdk-key")
    conn.image.delete_image(image)
    print("sdk flow: ok")


if __name__ == "__main__":
    main()
