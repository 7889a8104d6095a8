#!/usr/bin/env bash
# Installs the named Debian packages that are not installed yet (CI and a fresh machine start
# without them); does nothing, and needs no network, when all are there.
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "apt: installing ${missing[*]}"
sudo=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
