import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { importCheckMessage, importCheckResult } from "../src/pure/importCheck";
import {
  describeInterpreter,
  expandVariables,
  importCheckCommand,
  installCommand,
  resolveInterpreter,
  serverCommand,
  shellQuote,
} from "../src/pure/interpreter";

const variables = { workspaceFolder: "/ws/proj", userHome: "/home/ana", env: { VENV: "/opt/venv" } };

describe("resolveInterpreter", () => {
  it("prefers the Python extension's environment over the setting", () => {
    const found = resolveInterpreter({ pythonExtension: "/ws/.venv/bin/python", setting: ["/usr/bin/python3.12"], variables });
    assert.deepEqual(found, { command: ["/ws/.venv/bin/python"], source: "python extension" });
  });

  it("uses the setting, with variables expanded, when the Python extension has none", () => {
    const found = resolveInterpreter({
      pythonExtension: undefined,
      setting: ["${workspaceFolder}/.venv/bin/python", "-X", "utf8"],
      variables,
    });
    assert.deepEqual(found, { command: ["/ws/proj/.venv/bin/python", "-X", "utf8"], source: "setting" });
  });

  it("treats an empty extension path as absent", () => {
    const found = resolveInterpreter({ pythonExtension: "  ", setting: ["${env:VENV}/bin/python"], variables });
    assert.deepEqual(found, { command: ["/opt/venv/bin/python"], source: "setting" });
  });

  it("falls back to python3 on PATH", () => {
    assert.deepEqual(resolveInterpreter({ setting: [], variables }), { command: ["python3"], source: "default" });
    assert.deepEqual(resolveInterpreter({ setting: ["   "], variables }), { command: ["python3"], source: "default" });
  });
});

describe("expandVariables", () => {
  it("replaces known variables and keeps unknown ones as written", () => {
    assert.equal(expandVariables("${userHome}/x:${env:VENV}:${env:MISSING}:${cwd}", variables), "/home/ana/x:/opt/venv::${cwd}");
  });

  it("keeps ${workspaceFolder} when there is no folder", () => {
    assert.equal(expandVariables("${workspaceFolder}/py", { env: {} }), "${workspaceFolder}/py");
  });
});

describe("command lines", () => {
  const interpreter = { command: ["/opt/my env/python", "-X", "utf8"], source: "setting" as const };

  it("runs the server module after the interpreter's own arguments", () => {
    assert.deepEqual(serverCommand(interpreter), {
      command: "/opt/my env/python",
      args: ["-X", "utf8", "-m", "quantlens.daemon.cli", "serve"],
    });
  });

  it("checks the import with the same interpreter and arguments", () => {
    assert.deepEqual(importCheckCommand(interpreter), {
      command: "/opt/my env/python",
      args: ["-X", "utf8", "-c", "import quantlens.daemon.server"],
    });
  });

  it("quotes what a shell would split or expand", () => {
    assert.equal(installCommand(interpreter), "'/opt/my env/python' -X utf8 -m pip install quantlens");
    assert.equal(shellQuote("it's"), "'it'\\''s'");
    assert.equal(shellQuote("$HOME"), "'$HOME'");
    assert.equal(describeInterpreter({ command: ["/usr/bin/python3"], source: "default" }), "/usr/bin/python3");
  });
});

describe("the import check", () => {
  const python = { command: ["/usr/bin/python3"], source: "default" as const };

  it("passes when the import exits 0", () => {
    assert.deepEqual(importCheckResult(null, ""), { ok: true });
  });

  it("names the install command when quantlens is missing", () => {
    const stderr = 'Traceback (most recent call last):\n  File "<string>", line 1\nModuleNotFoundError: No module named \'quantlens\'\n';
    const check = importCheckResult({ code: 1 }, stderr);
    assert.deepEqual(check, { ok: false, reason: "not installed", detail: "ModuleNotFoundError: No module named 'quantlens'" });
    assert.ok(!check.ok);
    assert.deepEqual(importCheckMessage(check, python), {
      text: "quantlens is not installed for /usr/bin/python3: /usr/bin/python3 -m pip install quantlens",
      offerInstall: true,
    });
  });

  it("tells a missing interpreter from a missing package", () => {
    const check = importCheckResult({ code: "ENOENT" }, "");
    assert.deepEqual(check, { ok: false, reason: "not found", detail: "ENOENT" });
    assert.ok(!check.ok);
    const message = importCheckMessage(check, python);
    assert.equal(message.offerInstall, false);
    assert.match(message.text, /^quantlens: cannot run \/usr\/bin\/python3 \(ENOENT\)/);
  });

  it("reports a timeout (execFile kills the child)", () => {
    const check = importCheckResult({ code: null, killed: true, signal: "SIGTERM" }, "");
    assert.equal(check.ok ? "ok" : check.reason, "timed out");
  });

  it("reports another failure with the last line of stderr", () => {
    const check = importCheckResult({ code: 1 }, "RuntimeError: numpy is broken\n\n");
    assert.deepEqual(check, { ok: false, reason: "failed", detail: "RuntimeError: numpy is broken" });
  });
});
