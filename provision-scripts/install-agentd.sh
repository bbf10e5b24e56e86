#!/bin/sh
# Installs agentd on a customer server: binary, config, join token, systemd unit. Idempotent: running it
# again changes nothing that is already right, never overwrites an edited config, and never writes a token
# to a server that is already enrolled.
#
# Usage: install-agentd.sh --binary PATH (--token TOKEN | --token-file FILE) [--unit FILE] [--root DIR] [--no-start]
#   --root DIR   install under DIR instead of / (for images and tests); implies --no-start
set -eu

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

binary=""
token=""
token_file=""
unit="$(dirname "$0")/../systemd/outpost-agentd.service"
root=""
start=1

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --token) token=${2:?--token needs a value}; shift 2 ;;
        --token-file) token_file=${2:?--token-file needs a path}; shift 2 ;;
        --unit) unit=${2:?--unit needs a path}; shift 2 ;;
        --root) root=${2:?--root needs a directory}; start=0; shift 2 ;;
        --no-start) start=0; shift ;;
        -h|--help) usage ;;
        *) echo "install-agentd: unknown argument $1" >&2; usage ;;
    esac
done

[ -n "$binary" ] || { echo "install-agentd: --binary is required" >&2; usage; }
[ -x "$binary" ] || { echo "install-agentd: $binary is not an executable file" >&2; exit 2; }
[ -f "$unit" ] || { echo "install-agentd: unit file $unit not found (pass --unit)" >&2; exit 2; }
if [ -n "$token_file" ]; then
    [ -r "$token_file" ] || { echo "install-agentd: cannot read $token_file" >&2; exit 2; }
    token=$(cat "$token_file")
fi
case "$token" in
    outpost-join-v1.*) ;;
    "") ;;
    *) echo "install-agentd: the token must start with outpost-join-v1. (copy the whole string hubd printed)" >&2; exit 2 ;;
esac

changed=0
# install_file SRC DEST MODE: copies only when the content differs.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 0
    fi
    install -D -m "$3" "$1" "$2"
    echo "installed $2"
    changed=1
}

install_file "$binary" "$root/usr/local/bin/agentd" 0755
install_file "$unit" "$root/etc/systemd/system/outpost-agentd.service" 0644

install -d -m 0755 "$root/etc/outpost"
config="$root/etc/outpost/agentd.toml"
if [ ! -f "$config" ]; then
    umask 022
    cat > "$config" <<'TOML'
# agentd configuration; every field is optional. See `agentd --help`.
data_dir = "/var/lib/outpost-agentd"
token_file = "/etc/outpost/join-token"
log_dir = "/var/log/outpost-agentd"
report_interval_ms = 10000
TOML
    echo "wrote $config"
    changed=1
fi

if [ -f "$root/var/lib/outpost-agentd/identity.json" ]; then
    echo "already enrolled; not writing a token"
elif [ -n "$token" ]; then
    tokpath="$root/etc/outpost/join-token"
    if [ ! -f "$tokpath" ] || [ "$(cat "$tokpath")" != "$token" ]; then
        (umask 077 && printf '%s\n' "$token" > "$tokpath.tmp" && mv "$tokpath.tmp" "$tokpath")
        echo "wrote $tokpath (0600)"
        changed=1
    fi
else
    echo "install-agentd: not enrolled and no --token given" >&2
    exit 2
fi

if [ "$start" -eq 1 ]; then
    systemctl daemon-reload
    systemctl enable outpost-agentd.service
    if [ "$changed" -eq 1 ]; then systemctl restart outpost-agentd.service; else systemctl start outpost-agentd.service; fi
fi
[ "$changed" -eq 1 ] || echo "nothing to change"
