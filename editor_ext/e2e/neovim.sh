#!/usr/bin/env bash
# Checks the README's Neovim stanza as written: its `lua` block becomes the init.lua of a
# headless Neovim opened on a copy of fixtures/two_branch_concat/model.py, with the repo's venv
# first on PATH so that its `cmd = { "quantlens", "serve" }` starts this checkout's server.
# neovim_check.lua then waits for the diagnostics, prints them and fails unless the planted
# unbalanced-concat warning is on model.py line 44. Exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv_bin="${QUANTLENS_VENV_BIN:-$repo/.venv/bin}"
timeout_s="${QUANTLENS_NVIM_TIMEOUT_S:-300}"

root=$(mktemp -d "${TMPDIR:-/tmp}/quantlens-nvim-XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/xdg/config" "$root/xdg/data" "$root/xdg/state" "$root/xdg/cache"
cp -r "$repo/fixtures/two_branch_concat" "$root/project"
rm -rf "$root/project/.quantlens"

# the first ```lua block after the line that introduces the Neovim stanza
awk '/^Neovim/ { found = 1 } found && /^```lua$/ { inside = 1; next } inside && /^```$/ { exit } inside { print }' \
  "$repo/README.md" > "$root/init.lua"
if ! grep -q 'name = "quantlens"' "$root/init.lua"; then
  echo "FAILED: no Neovim stanza (a \`\`\`lua block after a line starting 'Neovim') in README.md" >&2
  exit 1
fi
echo "init.lua (the README's stanza, $(wc -l < "$root/init.lua") lines); $(nvim --version | head -1)"

cd "$root/project"
status=0
PATH="$venv_bin:$PATH" XDG_CONFIG_HOME="$root/xdg/config" XDG_DATA_HOME="$root/xdg/data" \
  XDG_STATE_HOME="$root/xdg/state" XDG_CACHE_HOME="$root/xdg/cache" \
  QUANTLENS_NVIM_TIMEOUT_MS="$(( (timeout_s - 30) * 1000 ))" \
  timeout "$timeout_s" nvim --headless -n -i NONE -u "$root/init.lua" \
  -c "luafile $here/neovim_check.lua" model.py || status=$?
if [ "$status" -ne 0 ]; then
  echo "FAILED (exit $status); the LSP log:" >&2
  find "$root/xdg" -name 'lsp.log' -exec tail -c 4000 {} \; >&2
fi
exit "$status"
