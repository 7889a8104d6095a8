import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { applyStatus, parseStatus, type ProjectStatus, statusText } from "../src/pure/status";

function status(fields: Partial<ProjectStatus>): ProjectStatus {
  return { state: "up to date", project: "/ws/a", findings: null, percentage: null, message: null, ...fields };
}

describe("parseStatus", () => {
  it("reads the server's notification", () => {
    const raw = { state: "analysing", project: "/ws/a", findings: null, percentage: 42, message: "calibrate batch 3/8" };
    assert.deepEqual(parseStatus(raw), status({ state: "analysing", percentage: 42, message: "calibrate batch 3/8" }));
  });

  it("rejects what is not a status", () => {
    assert.equal(parseStatus({ state: "sleeping", project: "/ws/a" }), undefined);
    assert.equal(parseStatus({ state: "stale" }), undefined);
    assert.equal(parseStatus(null), undefined);
    assert.equal(parseStatus("up to date"), undefined);
  });
});

describe("statusText", () => {
  it("shows the percentage while analysing", () => {
    const text = statusText({ kind: "server", projects: [status({ state: "analysing", percentage: 42.4 })] });
    assert.equal(text.text, "$(sync~spin) quantlens 42%");
    assert.equal(text.alert, undefined);
  });

  it("shows the finding count when up to date", () => {
    assert.equal(statusText({ kind: "server", projects: [status({ findings: 3 })] }).text, "$(check) quantlens: 3 findings");
    assert.equal(statusText({ kind: "server", projects: [status({ findings: 1 })] }).text, "$(check) quantlens: 1 finding");
    assert.equal(statusText({ kind: "server", projects: [status({ findings: 0 })] }).text, "$(check) quantlens: 0 findings");
  });

  it("adds the findings of every project", () => {
    const projects = [status({ project: "/ws/a", findings: 2 }), status({ project: "/ws/b", findings: 5 })];
    const text = statusText({ kind: "server", projects });
    assert.equal(text.text, "$(check) quantlens: 7 findings");
    assert.equal(text.tooltip, "quantlens: click to show the output\n/ws/a: up to date, 2 findings\n/ws/b: up to date, 5 findings");
  });

  it("shows stale and failed, with the failure's message as tooltip", () => {
    assert.equal(statusText({ kind: "server", projects: [status({ state: "stale", findings: 2 })] }).text, "$(warning) quantlens: stale");
    const failed = statusText({ kind: "server", projects: [status({ state: "failed", message: "model.py:12: NameError: nn" })] });
    assert.equal(failed.text, "$(error) quantlens: failed");
    assert.equal(failed.alert, "error");
    assert.ok(failed.tooltip.startsWith("model.py:12: NameError: nn\n"));
  });

  it("ranks running over failed over stale over up to date", () => {
    const up = status({ project: "/a", findings: 1 });
    const stale = status({ project: "/b", state: "stale" });
    const failed = status({ project: "/c", state: "failed" });
    const running = status({ project: "/d", state: "analysing", percentage: 10 });
    assert.equal(statusText({ kind: "server", projects: [up, stale] }).text, "$(warning) quantlens: stale");
    assert.equal(statusText({ kind: "server", projects: [up, stale, failed] }).text, "$(error) quantlens: failed");
    assert.equal(statusText({ kind: "server", projects: [up, failed, running] }).text, "$(sync~spin) quantlens 10%");
  });

  it("shows the slowest of several running projects, and no percentage when none is known", () => {
    const projects = [status({ project: "/a", state: "analysing", percentage: 80 }), status({ project: "/b", state: "analysing", percentage: 35 })];
    assert.equal(statusText({ kind: "server", projects }).text, "$(sync~spin) quantlens 35%");
    assert.equal(statusText({ kind: "server", projects: [status({ state: "analysing" })] }).text, "$(sync~spin) quantlens");
  });

  it("describes the extension's own states", () => {
    assert.equal(statusText({ kind: "starting" }).text, "$(sync~spin) quantlens");
    const missing = statusText({ kind: "not started", message: "quantlens is not installed for python3" });
    assert.deepEqual(missing, { text: "$(error) quantlens: not started", tooltip: "quantlens is not installed for python3", alert: "error" });
    assert.equal(statusText({ kind: "server", projects: [] }).text, "$(circle-outline) quantlens");
  });
});

describe("applyStatus", () => {
  it("keeps one entry per project, the latest", () => {
    let projects = applyStatus([], status({ project: "/b", findings: 4 }));
    projects = applyStatus(projects, status({ project: "/a", findings: 1 }));
    projects = applyStatus(projects, status({ project: "/b", state: "failed", findings: 0 }));
    assert.deepEqual(projects.map((p) => [p.project, p.state, p.findings]), [["/a", "up to date", 1], ["/b", "failed", 0]]);
  });

  it("keeps the last finding count through a run (analysing carries none)", () => {
    const done = applyStatus([], status({ findings: 6 }));
    const running = applyStatus(done, status({ state: "analysing", percentage: 50 }));
    assert.equal(running[0].findings, 6);
    assert.equal(statusText({ kind: "server", projects: running }).tooltip.split("\n")[1], "/ws/a: analysing, 50%, 6 findings");
  });
});
