#!/usr/bin/env bash
# Installs (or finds cached) QEMU 11.1 from Debian trixie-backports, the first
# Debian QEMU with the vfio-user client device `vfio-user-pci`, without
# touching the machine: not its libc, dpkg database or apt sources. Prints
# the path of a wrapper that runs it (stdout; progress goes to stderr).
#
#   bash scripts/qemu11/install.sh        # -> <cache>/qemu11-<key>/bin/qemu-system-x86_64
#
# How (facts: docs/VM-TESTS.md):
#   - a private apt configuration with an EMPTY dpkg status file, its own
#     lists and archives, sources = the machine's Debian mirror (read from the
#     machine's sources, so no host is named here) with trixie +
#     trixie-backports and APT::Default-Release "trixie": apt resolves the
#     whole dependency closure as if nothing were installed;
#   - `apt-get install --download-only` of qemu-system-x86/-common/-data, all
#     at backports' version, and backports' seabios (11.1 needs > 1.17.0);
#   - `dpkg-deb -x` of every package into one root; absolute symlinks made
#     relative inside it;
#   - bin/qemu-system-x86_64 in the root runs QEMU through the root's own
#     dynamic loader (trixie's QEMU needs trixie's glibc), checked with the
#     loader's --list to resolve every library inside the root.
# Cache: ${DEVLEASE_CACHE:-$HOME/.cache/devlease}/qemu11-<key>/ where <key>
# hashes this script and the QEMU version; `.complete` marks a finished root,
# which is built in a scratch folder and renamed into place.
set -euo pipefail

cache="${DEVLEASE_CACHE:-$HOME/.cache/devlease}"
suite="${DEVLEASE_QEMU11_SUITE:-trixie-backports}"
base_suite="${suite%-backports}"
qemu_min=10.1 # vfio-user-pci entered QEMU in 10.1
packages=(qemu-system-x86 qemu-system-common qemu-system-data)
apt_dir="$cache/qemu11-apt"

log() { echo "qemu11: $*" >&2; }
fail() { echo "qemu11: $*" >&2; exit 1; }

for t in apt-get apt-cache dpkg-deb sha256sum; do
  command -v "$t" >/dev/null || fail "$t is missing: this installer needs Debian's apt and dpkg tools"
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "$keyring is missing (package debian-archive-keyring): cannot verify the $suite mirror"

newest_cached() {
  local d
  for d in $(ls -1dt "$cache"/qemu11-*/ 2>/dev/null); do
    [ -f "$d/.complete" ] && { echo "${d%/}"; return 0; }
  done
  return 1
}

# --- the private apt configuration ---
mirror=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || fail "no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,state}
: >"$apt_dir/state/status" # empty: nothing counts as installed
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$base_suite" "$keyring" "$mirror" "$suite" >"$apt_dir/etc/sources.list"
cat >"$apt_dir/apt.conf" <<CONF
Dir::Etc "$apt_dir/etc";
Dir::Etc::SourceList "$apt_dir/etc/sources.list";
Dir::Etc::SourceParts "$apt_dir/etc/sources.list.d";
Dir::Etc::Parts "$apt_dir/etc/apt.conf.d";
Dir::Etc::Preferences "$apt_dir/etc/preferences";
Dir::Etc::PreferencesParts "$apt_dir/etc/preferences.d";
Dir::State "$apt_dir/state";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/state/status";
Dir::State::extended_states "$apt_dir/state/extended_states";
Dir::Cache "$apt_dir/cache";
Dir::Cache::archives "$apt_dir/archives";
Dir::Log "$apt_dir/log";
APT::Default-Release "$base_suite";
APT::Get::List-Cleanup "false";
APT::Install-Recommends "false";
APT::Sandbox::User "root";
Debug::NoLocking "true";
CONF
export APT_CONFIG="$apt_dir/apt.conf"

# Lists are refreshed at most once a day; offline, the newest cached root serves.
if [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n1)" ]; then
  log "refreshing package lists of $base_suite + $suite from $mirror"
  if ! apt-get update -qq -o APT::Update::Error-Mode=any >&2; then
    if cached=$(newest_cached); then
      log "apt-get update failed; using cached $(basename "$cached")"
      echo "$cached/bin/qemu-system-x86_64"; exit 0
    fi
    fail "apt-get update of $base_suite + $suite failed (network down?) and no QEMU 11 is cached"
  fi
fi

version=$(apt-cache madison qemu-system-x86 | awk -F'|' -v s="$suite" '$3 ~ s"/" {gsub(/ /,"",$2); print $2; exit}')
[ -n "$version" ] || fail "qemu-system-x86 not found in $suite on $mirror"
upstream=$(echo "$version" | sed -E 's/^[0-9]+://; s/[+~-].*//')
dpkg --compare-versions "$upstream" ge "$qemu_min" ||
  fail "$suite has qemu-system-x86 $version; vfio-user-pci needs QEMU >= $qemu_min"

key=$(printf '%s\0' "$(cat "${BASH_SOURCE[0]}")" "$version" | sha256sum | cut -c1-16)
out="$cache/qemu11-$key"
if [ -f "$out/.complete" ]; then echo "$out/bin/qemu-system-x86_64"; exit 0; fi

start=$SECONDS
tmp=$(mktemp -d "$cache/.tmp-qemu11.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pins=()
for p in "${packages[@]}"; do pins+=("$p=$version"); done
log "downloading qemu-system-x86 $version and its dependency closure"
apt-get install -y -qq --download-only "${pins[@]}" "seabios/$suite" >&2 ||
  fail "apt-get could not resolve or download ${pins[*]} seabios/$suite (see apt's message above)"
debs=("$apt_dir"/archives/*.deb)
[ -e "${debs[0]}" ] || fail "apt-get downloaded nothing into $apt_dir/archives"

# Exactly what this apt run resolves to (the archives folder may hold other
# versions): the simulation's "Inst NAME (VERSION ... [ARCH])" lines; a .deb
# file name spells the epoch's colon as %3a.
root="$tmp/root"
mkdir -p "$root"
n=0
while read -r name ver arch; do
  deb="$apt_dir/archives/${name}_${ver/:/%3a}_${arch}.deb"
  [ -f "$deb" ] || fail "$name $ver was resolved but not downloaded (no $deb)"
  dpkg-deb -x "$deb" "$root"
  n=$((n + 1))
done < <(apt-get install -s -qq "${pins[@]}" "seabios/$suite" |
  sed -nE 's/^Inst ([^ ]+) \(([^ ]+) .*\[([a-z0-9]+)\]\).*/\1 \2 \3/p')
[ "$n" -gt 0 ] || fail "apt-get's simulation named no packages to extract"

# Absolute symlinks point at the host's files: point them inside the root.
while IFS= read -r link; do
  target=$(readlink "$link")
  case "$target" in /*) ln -sfnr "$root$target" "$link" ;; esac
done < <(find "$root" -type l)

libdir="$root/usr/lib/x86_64-linux-gnu"
ldso="$libdir/ld-linux-x86-64.so.2"
for f in "$ldso" "$root/usr/bin/qemu-system-x86_64" "$root/usr/share/seabios/bios-256k.bin" "$libdir/qemu"; do
  [ -e "$f" ] || fail "the extracted packages lack ${f#"$root"}"
done

# The wrapper finds the root from its own path, so the root may be renamed.
mkdir -p "$root/bin"
cat >"$root/bin/qemu-system-x86_64" <<'WRAP'
#!/bin/sh
# QEMU from Debian trixie-backports, run by its own glibc's loader (written
# by scripts/qemu11/install.sh). -L: QEMU looks for its data relative to
# /proc/self/exe, which is the loader here.
root=$(cd "$(dirname "$0")/.." && pwd)
lib="$root/usr/lib/x86_64-linux-gnu"
export GCONV_PATH="$lib/gconv" QEMU_MODULE_DIR="$lib/qemu"
exec "$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib:$root/lib/x86_64-linux-gnu" \
  --argv0 qemu-system-x86_64 "$root/usr/bin/qemu-system-x86_64" \
  -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" "$@"
WRAP
chmod 755 "$root/bin/qemu-system-x86_64"

# Every library must resolve inside the root, none from the host.
listing=$("$ldso" --inhibit-cache --library-path "$libdir:$root/lib/x86_64-linux-gnu" --list "$root/usr/bin/qemu-system-x86_64") ||
  fail "the loader cannot list qemu-system-x86_64's libraries:\n$listing"
outside=$(echo "$listing" | awk -v r="$root" '/=>/ && ($3 == "not" || index($3, r) != 1) {print $1 " => " $3}')
[ -z "$outside" ] || fail "libraries not found inside the root: $(echo "$outside" | tr '\n' ' ')"
"$root/bin/qemu-system-x86_64" -device help 2>&1 | grep -q '"vfio-user-pci"' ||
  fail "qemu-system-x86_64 $version runs but has no vfio-user-pci device"

printf 'version=%s\npackages=%s\n' "$version" "$n" >"$root/.inputs"
touch "$root/.complete"
rm -rf "$out"
mv "$root" "$out"
for d in "$cache"/qemu11-*/; do
  d="${d%/}"
  [ "$d" != "$out" ] && [ -f "$d/.complete" ] && rm -rf "$d"
done
log "QEMU $version ready in $((SECONDS - start)) s ($n packages, $(du -sh "$out" | cut -f1)) -> $out"
echo "$out/bin/qemu-system-x86_64"
