#!/usr/bin/env bash
# Installs what the operations tests (test/ops: systemd units, metrics, `devlease top`) need, only what is
# missing, from Debian's own packages:
#   systemd   systemd-analyze verify, systemd-socket-activate
#   tmux      `devlease top` driven in a terminal, its screen captured
#   promtool  Prometheus's metrics checker, from Debian's `prometheus` package
#
# systemd and tmux are apt-installed after a simulation shows the install upgrades and removes nothing.
# promtool is extracted from the `prometheus` .deb into the cache rather than installed: installing the
# package would add and start a Prometheus server (and a user, and its web UI's JavaScript) on the host for
# the sake of one checker binary, which needs only libc. Cache: ${DEVLEASE_CACHE:-$HOME/.cache/devlease}/prometheus.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cache="${DEVLEASE_CACHE:-$HOME/.cache/devlease}"
log() { echo "ops-deps: $*" >&2; }
fail() { echo "ops-deps: $*" >&2; exit 1; }

missing=()
command -v systemd-analyze >/dev/null && command -v systemd-socket-activate >/dev/null || missing+=(systemd)
command -v tmux >/dev/null || missing+=(tmux)
promtool="$cache/prometheus/usr/bin/promtool"
need_promtool=1
if command -v promtool >/dev/null || [ -x "$promtool" ]; then need_promtool=0; fi
[ ${#missing[@]} -eq 0 ] && [ $need_promtool -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || fail "missing: ${missing[*]} ${need_promtool:+promtool}; installing needs root"

apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  sim=$(apt-get install -s --no-install-recommends "${missing[@]}" 2>&1) || { echo "$sim" >&2; fail "apt-get cannot install ${missing[*]}"; }
  # `Inst pkg [old-version]` is an upgrade; `Remv` a removal: neither is allowed on the host.
  bad=$(echo "$sim" | awk '/^Remv / {print $2} /^Inst [^ ]+ \[/ {print $2}')
  [ -z "$bad" ] || fail "installing ${missing[*]} would upgrade or remove host packages: $(echo $bad); refusing"
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $need_promtool -eq 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  log "extracting promtool from Debian's prometheus package into $cache/prometheus"
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) || fail "apt-get download prometheus failed"
  rm -rf "$cache/prometheus" && mkdir -p "$cache/prometheus"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$cache/prometheus/usr/bin" && cp "$tmp/x/usr/bin/promtool" "$cache/prometheus/usr/bin/"
  "$promtool" --version >/dev/null || fail "the extracted promtool does not run"
fi
