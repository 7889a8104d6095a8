#!/usr/bin/env bash
# Installs code-server and playwright-core from the committed lock file into e2e/node_modules,
# reaching only the npm registry: the download that @vscode/ripgrep's post-install would make
# is answered from a cache pre-filled with Debian's rg, and the native modules are built
# against the system's Node headers. Skipped when the lock has not changed since.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
stamp="$here/node_modules/.installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$here/package-lock.json" ] && [ "$stamp" -nt "$here/package.json" ]; then
  exit 0
fi

# code-server 4.100.3 (the newest that runs on Node 20) installs its lib/vscode from its
# shrinkwrap, with @vscode/ripgrep 1.15.11, which looks for rg v13.0.0-10 in this cache first.
export TMPDIR="$here/.cache/tmp"
ripgrep_cache="$TMPDIR/vscode-ripgrep-cache-1.15.11"
ripgrep_tarball="$ripgrep_cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"
if [ ! -s "$ripgrep_tarball" ]; then
  mkdir -p "$ripgrep_cache"
  tar -czf "$ripgrep_tarball" -C "$(dirname "$(command -v rg)")" rg
fi

# npm 11 runs no dependency's install scripts unless allowed: package.json allows code-server's
# and argon2's. code-server's post-install installs lib/vscode from its shrinkwrap, where no
# list allows any, so their scripts are skipped there; they run afterwards in `npm rebuild`
# with a project .npmrc naming every package there that has one (npm refuses such a list
# from the command line or the environment). The Windows-only ones do nothing on Linux.
# node-pty's script runs npx; code-server's refuses to run as root without unsafe-perm.
export npm_config_yes=true npm_config_unsafe_perm=true
cd "$here"
npm ci --no-audit --no-fund
vscode="$here/node_modules/code-server/lib/vscode"
echo "allow-scripts=@parcel/watcher,@vscode/deviceid,@vscode/ripgrep,@vscode/spdlog,@vscode/windows-ca-certs,\
@vscode/windows-process-tree,@vscode/windows-registry,kerberos,native-watchdog,node-pty" > "$vscode/.npmrc"
(cd "$vscode" && npm rebuild --no-audit --no-fund)
test -x "$vscode/node_modules/@vscode/ripgrep/bin/rg"
touch "$stamp"
