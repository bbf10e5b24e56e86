#!/bin/sh
# Run once by cloud-init on a new server (rendered by hubd; values checked against strict patterns before
# they are put in): installs a pinned K3s (its install script from K3S_INSTALLER: get.k3s.io, or a file on
# the image), then agentd from the hub, verified twice (TLS against the fleet CA, then the SHA-256 below),
# then starts agentd, which enrolls with /etc/outpost/join-token.
set -eu

K3S_VERSION='{{k3s_version}}'
K3S_FLAGS='{{k3s_flags}}'
K3S_INSTALLER='{{k3s_installer}}'
AGENTD_URL='{{agentd_url}}'
AGENTD_SHA256='{{agentd_sha256}}'

# cloud-init keeps this output in /var/log/cloud-init-output.log.
log() { echo "outpost-install: $*"; }

if ! command -v k3s >/dev/null 2>&1; then
    log "installing K3s $K3S_VERSION"
    curl --fail --silent --show-error --location --retry 10 --retry-all-errors -o /tmp/k3s-install.sh "$K3S_INSTALLER"
    INSTALL_K3S_VERSION="$K3S_VERSION" INSTALL_K3S_EXEC="$K3S_FLAGS" sh /tmp/k3s-install.sh
    rm -f /tmp/k3s-install.sh
fi

log "fetching agentd from $AGENTD_URL"
tmp=/usr/local/bin/.agentd.download
curl --fail --silent --show-error --retry 10 --retry-all-errors --cacert /etc/outpost/fleet-ca.pem -o "$tmp" "$AGENTD_URL"
if ! echo "$AGENTD_SHA256  $tmp" | sha256sum -c - >/dev/null; then
    rm -f "$tmp"
    log "agentd from $AGENTD_URL does not match its SHA-256 $AGENTD_SHA256; not installed"
    exit 1
fi
install -m 0755 "$tmp" /usr/local/bin/agentd
rm -f "$tmp"

systemctl daemon-reload
systemctl enable --now outpost-agentd
log "agentd started"
