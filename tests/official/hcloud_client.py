"""The official Python hcloud library against the Hetzner stand-in: server types, images, locations and
datacenters; create with labels, SSH keys and user-data; describe; label selectors (set-based too);
pagination; delete with its `deleting` state; and the API's error shapes.
Usage: hcloud_client.py ENDPOINT TOKEN. One line per check; exits non-zero on the first failure."""
import sys
import warnings

warnings.simplefilter("ignore", DeprecationWarning)  # datacenters: deprecated by Hetzner, still served

from hcloud import APIException, Client
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.ssh_keys import SSHKey

client = Client(token=sys.argv[2], api_endpoint=sys.argv[1], poll_interval=0.05)


def check(what, cond):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok {what}", flush=True)


def refused(code, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except APIException as e:
        return e.code == code, e
    return False, None


types = client.server_types.get_all()
check("server types", {t.name for t in types} >= {"cx22", "cax11"} and all(isinstance(t.disk, int) for t in types))
cx22 = client.server_types.get_by_name("cx22")
check("a server type's locations say where it is available", all(l.available is not None for l in cx22.locations))
check("locations", [l.name for l in client.locations.get_all()] == ["fsn1", "nbg1", "hel1"])
check("datacenters", client.datacenters.get_by_name("fsn1-dc14").location.name == "fsn1")
check("images by name and architecture", client.images.get_by_name_and_architecture("debian-12", "arm").architecture == "arm")

key = client.ssh_keys.create(name="py-ops", public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbcdefghijklmnopqrstuvwxyz0123456789ABCDEFG ops@example")
created = []
for i in range(7):
    r = client.servers.create(
        name=f"py-{i}", server_type=ServerType(name="cx22"), image=Image(name="debian-12"),
        location=Location(name="hel1" if i % 2 else "fsn1"), ssh_keys=[SSHKey(name="py-ops")],
        labels={"managed-by": "outpost", "tier": "web" if i < 4 else "db", "n": str(i)},
        user_data="#cloud-config\nruncmd: [true]\n")
    r.action.wait_until_finished(max_retries=200)
    created.append(r.server)
one = client.servers.get_by_name("py-1")
check("create, then describe", one.status == "running" and one.labels["tier"] == "web" and one.location.name == "hel1")
check("public IPv4 with its id", one.public_net.ipv4.ip.startswith("203.0.113.") and one.public_net.primary_ipv4.id > 0)
check("the image it runs", one.image.name == "debian-12")

sel = lambda s: sorted(x.name for x in client.servers.get_all(label_selector=s))
check("an equality selector", sel("tier=db") == ["py-4", "py-5", "py-6"])
check("a set-based selector", sel("tier in (db),n notin (5)") == ["py-4", "py-6"])
check("existence and absence", sel("managed-by,!nothing") == [f"py-{i}" for i in range(7)])
page = client.servers.get_list(page=2, per_page=3)
check("pagination", [s.name for s in page.servers] == ["py-3", "py-4", "py-5"] and page.meta.pagination.next_page == 3)
check("get_all follows every page", len(client.servers.get_all()) == 7)

ok, e = refused("invalid_input", client.servers.create, name="Not A Hostname", server_type=ServerType(name="cx22"), image=Image(name="debian-12"))
check("an invalid server name is refused (invalid_input)", ok and e.details["fields"][0]["name"] == "name")
ok, _ = refused("invalid_input", client.servers.create, name="x1", server_type=ServerType(name="cx22"), image=Image(name="windows-95"))
check("an unknown image is refused", ok)
ok, _ = refused("invalid_input", client.servers.create, name="x2", server_type=ServerType(name="cx22"), image=Image(name="debian-12"), ssh_keys=[SSHKey(name="nobody")])
check("an unknown SSH key name is refused", ok)
ok, _ = refused("invalid_input", client.servers.create, name="x3", server_type=ServerType(name="cx22"), image=Image(name="debian-12"), ssh_keys=[SSHKey(id=999999)])
check("an unknown SSH key id is refused, not dropped", ok)
ok, _ = refused("invalid_input", client.servers.create, name="x4", server_type=ServerType(name="cx22"), image=Image(name="debian-12"), labels={"bad key": "v"})
check("an invalid label key is refused", ok)
ok, _ = refused("uniqueness_error", client.servers.create, name="py-0", server_type=ServerType(name="cx22"), image=Image(name="debian-12"))
check("a name in use is refused (uniqueness_error)", ok)
ok, _ = refused("invalid_input", client.servers.get_all, label_selector="tier in db")
check("a malformed selector is refused", ok)
ok, _ = refused("not_found", client.servers.get_by_id, 424242)
check("a missing server is not_found", ok)

action = client.servers.delete(client.servers.get_by_name("py-0"))
check("a deleted server is deleting first", client.servers.get_by_name("py-0").status == "deleting")
ok, _ = refused("locked", client.servers.delete, client.servers.get_by_name("py-0"))
check("deleting it again is locked", ok)
action.wait_until_finished(max_retries=200)
check("then it is gone", client.servers.get_by_name("py-0") is None)
check("its actions are listed", len(client.actions.get_all()) > 0)
bad = Client(token="wrong", api_endpoint=sys.argv[1])
ok, _ = refused("unauthorized", bad.servers.get_all)
check("a wrong token is unauthorized", ok)
print("all checks passed")
