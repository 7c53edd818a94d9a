#!/usr/bin/env bash
# Source this file, then call `apt_private SUITE...` to get a private apt
# configuration (APT_CONFIG) that knows only the named Debian suites. The
# machine's own apt sources, lists and installed packages are never touched:
# use it only with `apt-get download` / `apt-cache`, then `dpkg-deb -x`.
#
# The mirror address is read from the machine's own Debian sources, so this
# file names no host. Cache root: ${DEVLEASE_CACHE:-$HOME/.cache/devlease}.

apt_private() {
  if [ $# -eq 0 ]; then echo "apt_private: name at least one suite (e.g. trixie-backports)" >&2; return 2; fi
  local root="${DEVLEASE_CACHE:-$HOME/.cache/devlease}/apt-$(echo "$*" | tr ' ' '+')"
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  fi
  if [ -z "$uri" ]; then echo "apt_private: no Debian mirror found in the machine's apt sources" >&2; return 1; fi
  mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/etc/sources.list.d" "$root/etc/preferences.d"
  : >"$root/etc/sources.list"
  local s
  for s in "$@"; do echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $s main" >>"$root/etc/sources.list"; done
  cat >"$root/apt.conf" <<CONF
Dir::Etc::SourceList "$root/etc/sources.list";
Dir::Etc::SourceParts "$root/etc/sources.list.d";
Dir::Etc::Preferences "$root/etc/preferences";
Dir::Etc::PreferencesParts "$root/etc/preferences.d";
Dir::State::Lists "$root/lists";
Dir::Cache "$root/cache";
Dir::State::status "/var/lib/dpkg/status";
APT::Get::List-Cleanup "false";
APT::Sandbox::User "root";
CONF
  export APT_CONFIG="$root/apt.conf"
  # Refresh lists at most once a day.
  if [ -z "$(find "$root/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n1)" ]; then
    apt-get update -qq -o APT::Update::Error-Mode=any >&2 || { echo "apt_private: apt-get update failed for $*" >&2; return 1; }
  fi
}

# apt_private_download DEST PKG... : download .debs into DEST (no install).
apt_private_download() {
  local dest="$1"; shift
  mkdir -p "$dest" && (cd "$dest" && apt-get download -qq "$@" >&2)
}
