#!/usr/bin/env bash
# Builds (or finds cached) sa1-guest, the static guest driver of the VM tests
# (test/vm/guest/sa1-guest/*.c), with the host's gcc and glibc (libc6-dev's
# libc.a). The guest runs it from the host's root over 9p. Prints its path.
# Cache: ${DEVLEASE_CACHE:-$HOME/.cache/devlease}/vm-guest/sa1-guest-<key>,
# key = the sources and the compiler's version.
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="${DEVLEASE_CACHE:-$HOME/.cache/devlease}/vm-guest"
command -v gcc >/dev/null || { echo "sa1-guest: gcc is missing (Debian package gcc)" >&2; exit 1; }
key=$( (cat "$src"/*.c "$src"/*.h "$src/build.sh"; gcc --version) | sha256sum | cut -c1-16)
out="$out_dir/sa1-guest-$key"
if [ -x "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$out_dir"
tmp=$(mktemp "$out_dir/.sa1-guest.XXXXXX")
trap 'rm -f "$tmp"' EXIT
gcc -static -O2 -Wall -Wextra -Werror -o "$tmp" "$src"/*.c ||
  { echo "sa1-guest: static build failed (is libc6-dev, with libc.a, installed?)" >&2; exit 1; }
chmod 755 "$tmp"
mv "$tmp" "$out"
# Older builds go after a day (not at once: another checkout's VM may be about to run one).
find "$out_dir" -maxdepth 1 -name 'sa1-guest-*' ! -path "$out" -mtime +1 -delete
echo "$out"
