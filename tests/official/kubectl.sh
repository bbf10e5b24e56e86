#!/usr/bin/env bash
# kubectl against the Kubernetes stand-in (started with its Deployment controller): discovery, server-side
# apply, rollout status, logs, a rolling update, delete. Usage: kubectl.sh KUBECONFIG DIR.
# kubectl validates manifests against the OpenAPI schema, which the stand-in does not serve: --validate=false.
set -euo pipefail
export KUBECONFIG=$1
dir=$2
k() { timeout 30 kubectl "$@"; }
check() { echo "ok $*"; }

k version -o json | grep -q '"gitVersion": "v1.33' && check "kubectl reads /version"
k get namespaces -o name | grep -qx namespace/kube-system && check "get namespaces"
k api-resources -o name | grep -qx deployments.apps && check "api-resources from discovery"
cat > "$dir/web.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 2
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "nginx:1.27"}]
YAML
k apply --server-side --validate=false -f "$dir/web.yaml" | grep -q "deployment.apps/web serverside-applied" && check "apply --server-side"
k -n shop rollout status deployment/web --timeout=20s | grep -q "successfully rolled out" && check "rollout status"
[ "$(k -n shop get pods -l app=web -o name | wc -l)" = 2 ] && check "two pods by label"
k -n shop logs deployment/web | grep -q "listening" && check "logs"
k -n shop set image deployment/web web=nginx:1.28 >/dev/null
k -n shop rollout status deployment/web --timeout=20s | grep -q "successfully rolled out" && check "a rolling update rolls out"
[ "$(k -n shop get deployment web -o jsonpath='{.spec.template.spec.containers[0].image}')" = nginx:1.28 ] && check "jsonpath reads the new image"
[ "$(k -n shop get pods -l app=web -o jsonpath='{.items[*].spec.containers[0].image}')" = "nginx:1.28 nginx:1.28" ] && check "only new pods remain"
k -n shop get deployment web -o json | grep -q '"updatedReplicas": 2' && check "status counts updated replicas"
if k -n shop get deployment nope 2>"$dir/err"; then exit 1; fi
grep -q 'deployments.apps "nope" not found' "$dir/err" && check "NotFound in kubectl's words"
k -n shop delete deployment web --wait=true | grep -q deleted && check "delete waits until gone"
[ "$(k -n shop get pods -o name | wc -l)" = 0 ] && check "the deployment's pods went with it"
k delete namespace shop >/dev/null && check "delete namespace"
echo "all checks passed"
