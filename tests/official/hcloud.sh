#!/usr/bin/env bash
# Debian's hcloud CLI against the Hetzner stand-in. Usage: hcloud.sh ENDPOINT TOKEN DIR.
set -euo pipefail
export HCLOUD_ENDPOINT=$1 HCLOUD_TOKEN=$2
dir=$3
h() { timeout 30 hcloud "$@"; }
# Every check fails the script: `CONDITION || fail WHAT; ok WHAT`. grep reads all its input (no -q): a
# client killed by a closed pipe would fail the pipeline.
ok() { echo "ok $*"; }
fail() { echo "FAIL $*"; exit 1; }

{ h server-type list -o noheader -o columns=name,disk | grep '^cx32 *80 GB$' >/dev/null; } || fail "server types (disk as the API's integer)"; ok "server types (disk as the API's integer)"
{ h location list -o noheader -o columns=name | grep -x hel1 >/dev/null; } || fail "locations"; ok "locations"
{ h datacenter list -o noheader -o columns=name | grep -x fsn1-dc14 >/dev/null; } || fail "datacenters"; ok "datacenters"
{ h image list -o noheader -o columns=name | grep -x debian-12 >/dev/null; } || fail "images"; ok "images"
ssh-keygen -q -t ed25519 -N '' -f "$dir/cli-key" >/dev/null
{ h ssh-key create --name cli-ops --public-key-from-file "$dir/cli-key.pub" >/dev/null; } || fail "ssh-key create"; ok "ssh-key create"
printf '#cloud-config\nruncmd: [true]\n' > "$dir/user-data.yaml"
{ h server create --name cli-1 --type cx22 --image debian-12 --location nbg1 --ssh-key cli-ops \
    --label managed-by=outpost --label customer=acme --user-data-from-file "$dir/user-data.yaml" | grep "Server .* created" >/dev/null; } || fail "server create waits for its action"; ok "server create waits for its action"
{ h server create --name cli-2 --type cax11 --image debian-12 --label customer=beta >/dev/null; } || fail "an arm server from the arm image"; ok "an arm server from the arm image"
{ h server describe cli-1 | grep "Status:.*running" >/dev/null; } || fail "describe"; ok "describe"
{ [ "$(h server list -o noheader -o columns=name -l 'customer in (acme,beta)' | sort | tr '\n' ' ')" = "cli-1 cli-2 " ]; } || fail "set-based label selector"; ok "set-based label selector"
{ [ "$(h server list -o noheader -o columns=name -l 'customer=acme')" = cli-1 ]; } || fail "equality label selector"; ok "equality label selector"
if h server create --name Not_Valid --type cx22 --image debian-12 2>"$dir/err"; then exit 1; fi
{ grep "invalid input in field 'name'" "$dir/err" >/dev/null; } || fail "an invalid name is refused in the API's words"; ok "an invalid name is refused in the API's words"
if h server create --name cli-3 --type cx22 --image no-such-image 2>"$dir/err"; then exit 1; fi
{ grep "image not found" "$dir/err" >/dev/null; } || fail "an unknown image is refused"; ok "an unknown image is refused"
{ h server delete cli-1 | grep deleted >/dev/null; } || fail "delete"; ok "delete"
{ h server list -o noheader -o columns=name,status | grep -E '^cli-1 +deleting$' >/dev/null; } || fail "deleting before gone"; ok "deleting before gone"
for _ in $(seq 300); do h server describe cli-1 >/dev/null 2>&1 || break; sleep 0.1; done
if h server describe cli-1 2>"$dir/err"; then exit 1; fi
{ grep "not found" "$dir/err" >/dev/null; } || fail "then gone"; ok "then gone"
echo "all checks passed"
