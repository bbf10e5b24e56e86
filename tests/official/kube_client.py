"""The official Kubernetes Python client against the stand-in: discovery, CRUD, selectors, pagination,
watches, optimistic concurrency, validation, patches of every kind, and quota admission.
Usage: kube_client.py KUBECONFIG. Prints one line per check; exits non-zero on the first failure."""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()


def check(what, cond):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok {what}", flush=True)


def refused(status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except ApiException as e:
        return e.status == status, e
    return False, None


v = client.VersionApi().get_code()
check("version", v.major == "1" and v.git_version.startswith("v1."))
groups = [g.name for g in client.ApisApi().get_api_versions().groups]
check("discovery lists apps", "apps" in groups)

ns = "pyclient"
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
ok, e = refused(422, core.create_namespace, client.V1Namespace(metadata=client.V1ObjectMeta(name="Not_A_Name")))
check("an invalid namespace name is refused (422)", ok and "RFC 1123" in e.body)
ok, _ = refused(404, core.create_namespaced_config_map, "nowhere", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
check("an object in a missing namespace is refused (404)", ok)

for i, tier in enumerate(["web", "web", "db", "cache", "db"]):
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"cm-{i}", labels={"tier": tier, "n": str(i)}), data={"i": str(i)}))
names = lambda items: sorted(x.metadata.name for x in items)
check("equality selector", names(core.list_namespaced_config_map(ns, label_selector="tier=web").items) == ["cm-0", "cm-1"])
check("set-based selector (in)", names(core.list_namespaced_config_map(ns, label_selector="tier in (db,cache)").items) == ["cm-2", "cm-3", "cm-4"])
check("set-based selector (notin, exists)", names(core.list_namespaced_config_map(ns, label_selector="tier notin (web,db),n").items) == ["cm-3"])
check("field selector", names(core.list_namespaced_config_map(ns, field_selector="metadata.name=cm-4").items) == ["cm-4"])
ok, _ = refused(400, core.list_namespaced_config_map, ns, field_selector="data.i=1")
check("an unsupported field selector is refused (400)", ok)
ok, _ = refused(400, core.list_namespaced_config_map, ns, label_selector="tier in web")
check("a malformed selector is refused (400)", ok)

seen, cont = [], None
while True:
    page = core.list_namespaced_config_map(ns, limit=2, _continue=cont)
    check(f"a page holds at most 2 ({len(page.items)})", len(page.items) <= 2)
    seen += [x.metadata.name for x in page.items]
    cont = page.metadata._continue
    if not cont:
        break
check("limit/continue pages through everything once", seen == [f"cm-{i}" for i in range(5)])

# A watch from the list's resource version sees a change made while it waits.
rv = core.list_namespaced_config_map(ns).metadata.resource_version
def later():
    core.patch_namespaced_config_map("cm-0", ns, {"data": {"i": "changed"}})
threading.Timer(0.5, later).start()
events = []
for ev in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10):
    events.append((ev["type"], ev["object"].metadata.name))
    break
check(f"a watch waits for and delivers the change {events}", events == [("MODIFIED", "cm-0")])

cm = core.read_namespaced_config_map("cm-1", ns)
stale = cm.metadata.resource_version
core.patch_namespaced_config_map("cm-1", ns, {"data": {"i": "newer"}})
cm.data = {"i": "stale"}
cm.metadata.resource_version = stale
ok, e = refused(409, core.replace_namespaced_config_map, "cm-1", ns, cm)
check("a replace with a stale resourceVersion is refused (409)", ok)
check("the newer value stands", core.read_namespaced_config_map("cm-1", ns).data == {"i": "newer"})

# A JSON patch (the kind that once panicked the stand-in), then requests still answer.
core.patch_namespaced_config_map("cm-2", ns, [{"op": "replace", "path": "/data/i", "value": "patched"}])
check("a JSON patch applies", core.read_namespaced_config_map("cm-2", ns).data["i"] == "patched")
ok, _ = refused(422, core.patch_namespaced_config_map, "cm-2", ns, [{"op": "test", "path": "/data/i", "value": "other"}])
check("a JSON patch whose test fails is refused (422)", ok)
check("the stand-in still answers", len(core.list_namespaced_config_map(ns).items) == 5)

# Quota admission: the plan's quota and default limits, as Outpost renders them.
core.create_namespaced_resource_quota(ns, client.V1ResourceQuota(
    metadata=client.V1ObjectMeta(name="outpost-plan"),
    spec=client.V1ResourceQuotaSpec(hard={"limits.cpu": "500m", "limits.memory": "512Mi"})))
core.create_namespaced_limit_range(ns, client.V1LimitRange(
    metadata=client.V1ObjectMeta(name="outpost-defaults"),
    spec=client.V1LimitRangeSpec(limits=[client.V1LimitRangeItem(type="Container",
        default={"cpu": "250m", "memory": "256Mi"}, default_request={"cpu": "125m", "memory": "128Mi"})])))
pod = lambda n: client.V1Pod(metadata=client.V1ObjectMeta(name=n),
                              spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")]))
created = core.create_namespaced_pod(ns, pod("p1"))
check("LimitRange defaults are applied", created.spec.containers[0].resources.limits == {"cpu": "250m", "memory": "256Mi"})
core.create_namespaced_pod(ns, pod("p2"))
ok, e = refused(403, core.create_namespaced_pod, ns, pod("p3"))
check("a third pod exceeds the quota (403)", ok and "exceeded quota: outpost-plan" in e.body)
quota = core.read_namespaced_resource_quota("outpost-plan", ns)
check(f"the quota's status counts the pods {quota.status.used}", quota.status.used["limits.memory"] == "512Mi")

# Requests no client should send are answered as the API answers them, and poison nothing.
import json
import urllib.error
import urllib.request

server = client.Configuration.get_default_copy().host


def raw(method, path, body=None, content_type="application/json"):
    req = urllib.request.Request(server + path, method=method, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


cm2 = f"/api/v1/namespaces/{ns}/configmaps/cm-2"
check("an unknown patch type is 415", raw("PATCH", cm2, b"{}", "text/plain") == 415)
check("a body that is not JSON is 400", raw("PUT", cm2, b"{not json") == 400)
check("a JSON patch that would make the object a list is refused",
      raw("PATCH", cm2, json.dumps([{"op": "replace", "path": "", "value": [1]}]).encode(), "application/json-patch+json") in (400, 422))
check("a merge patch that is a list is 400", raw("PATCH", cm2, b"[1, 2]", "application/merge-patch+json") == 400)
check("POST on an object is 405", raw("POST", cm2, b"{}") == 405)
check("an unknown resource is 404", raw("GET", "/api/v1/widgets") == 404)
check("an apply without a field manager is 400", raw("PATCH", cm2, b"{}", "application/apply-patch+yaml") == 400)
check("the object is intact after all that", core.read_namespaced_config_map("cm-2", ns).data["i"] == "patched")

core.delete_namespaced_config_map("cm-3", ns)
ok, _ = refused(404, core.read_namespaced_config_map, "cm-3", ns)
check("a deleted object is gone", ok)
core.delete_namespace(ns)
print("all checks passed")
