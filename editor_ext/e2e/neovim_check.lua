-- Run by neovim.sh in a headless Neovim whose init.lua is the README's stanza, on model.py of
-- fixtures/two_branch_concat: waits for the quantlens diagnostics (the first needs a worker run:
-- torch import, calibration, simulation), prints them and exits 0 only when the planted
-- unbalanced-concat warning is on line 44 (the torch.cat line, point cat_0).
local RULE, LINE, POINT = "unbalanced-concat", 44, "cat_0"
local timeout_ms = tonumber(os.getenv("QUANTLENS_NVIM_TIMEOUT_MS")) or 240000
local buf = vim.api.nvim_get_current_buf()
local started = vim.loop.hrtime()

local function out(text)
  io.stdout:write(text .. "\n")
end

local function finish(ok, why)
  out((ok and "PASSED" or "FAILED") .. ": " .. why)
  -- `cquit N` exits with N without waiting for the server; the server exits on its stdin's EOF
  vim.cmd(ok and "qall!" or "cquit 1")
end

-- the LSP code is a top-level field of vim.diagnostic items; older builds kept it in user_data.lsp
local function code(d)
  return d.code or (d.user_data and d.user_data.lsp and d.user_data.lsp.code)
end

local function planted()
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    if code(d) == RULE then
      return d
    end
  end
end

local get_clients = vim.lsp.get_clients or vim.lsp.get_active_clients -- 0.10+ / 0.7-0.9
local attached = vim.wait(30000, function()
  for _, client in ipairs(get_clients()) do
    if client.name == "quantlens" and vim.lsp.buf_is_attached(buf, client.id) then
      return true
    end
  end
  return false
end, 100)
if not attached then
  finish(false, "no quantlens client attached to model.py within 30 s (see the LSP log)")
  return
end
out("quantlens attached to model.py; waiting for its diagnostics")

local found = vim.wait(timeout_ms, function() return planted() ~= nil end, 500)
local seconds = (vim.loop.hrtime() - started) / 1e9
for _, d in ipairs(vim.diagnostic.get(buf)) do
  out(string.format("  model.py:%d:%d %s [%s] %s: %s", d.lnum + 1, d.col + 1, vim.diagnostic.severity[d.severity],
    d.source or "?", tostring(code(d)), (d.message:gsub("\n", " "))))
end
if not found then
  finish(false, string.format("no %s diagnostic after %.0f s", RULE, seconds))
  return
end
local d = planted()
if d.lnum + 1 ~= LINE or d.severity ~= vim.diagnostic.severity.WARN or not d.message:find(POINT, 1, true) then
  finish(false, string.format("%s is on line %d (severity %s), not a warning on line %d naming %s",
    RULE, d.lnum + 1, tostring(d.severity), LINE, POINT))
  return
end
finish(true, string.format("%s warning on model.py line %d after %.1f s", RULE, LINE, seconds))
