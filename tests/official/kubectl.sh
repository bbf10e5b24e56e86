#!/usr/bin/env bash
# kubectl against the Kubernetes stand-in (started with its Deployment controller): discovery, server-side
# apply, rollout status, logs, a rolling update, delete. Usage: kubectl.sh KUBECONFIG DIR.
# kubectl validates manifests against the OpenAPI schema, which the stand-in does not serve: --validate=false.
set -euo pipefail
export KUBECONFIG=$1
dir=$2
k() { timeout 30 kubectl "$@"; }
# Every check fails the script: `CONDITION || fail WHAT; ok WHAT`. grep reads all its input (no -q): a
# client killed by a closed pipe would fail the pipeline.
ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; exit 1; }

{ k version -o json | grep '"gitVersion": "v1.33' >/dev/null; } || fail "kubectl reads /version"; ok "kubectl reads /version"
{ k get namespaces -o name | grep -x namespace/kube-system >/dev/null; } || fail "get namespaces"; ok "get namespaces"
{ k api-resources -o name | grep -x deployments.apps >/dev/null; } || fail "api-resources from discovery"; ok "api-resources from discovery"
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
{ k apply --server-side --validate=false -f "$dir/web.yaml" | grep "deployment.apps/web serverside-applied" >/dev/null; } || fail "apply --server-side"; ok "apply --server-side"
{ k -n shop rollout status deployment/web --timeout=20s | grep "successfully rolled out" >/dev/null; } || fail "rollout status"; ok "rollout status"
{ [ "$(k -n shop get pods -l app=web -o name | wc -l)" = 2 ]; } || fail "two pods by label"; ok "two pods by label"
{ k -n shop logs deployment/web | grep "listening" >/dev/null; } || fail "logs"; ok "logs"
k -n shop set image deployment/web web=nginx:1.28 >/dev/null
{ k -n shop rollout status deployment/web --timeout=20s | grep "successfully rolled out" >/dev/null; } || fail "a rolling update rolls out"; ok "a rolling update rolls out"
{ [ "$(k -n shop get deployment web -o jsonpath='{.spec.template.spec.containers[0].image}')" = nginx:1.28 ]; } || fail "jsonpath reads the new image"; ok "jsonpath reads the new image"
{ [ "$(k -n shop get pods -l app=web -o jsonpath='{.items[*].spec.containers[0].image}')" = "nginx:1.28 nginx:1.28" ]; } || fail "only new pods remain"; ok "only new pods remain"
{ k -n shop get deployment web -o json | grep '"updatedReplicas": 2' >/dev/null; } || fail "status counts updated replicas"; ok "status counts updated replicas"
if k -n shop get deployment nope 2>"$dir/err"; then exit 1; fi
{ grep 'deployments.apps "nope" not found' "$dir/err" >/dev/null; } || fail "NotFound in kubectl's words"; ok "NotFound in kubectl's words"
{ k -n shop delete deployment web --wait=true | grep deleted >/dev/null; } || fail "delete waits until gone"; ok "delete waits until gone"
{ [ "$(k -n shop get pods -o name | wc -l)" = 0 ]; } || fail "the deployment's pods went with it"; ok "the deployment's pods went with it"
{ k delete namespace shop >/dev/null; } || fail "delete namespace"; ok "delete namespace"
echo "all checks passed"
