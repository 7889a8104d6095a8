import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Coalescer, type Timers } from "../src/pure/coalesce";
import { DEFAULTS, readSettings, restartReason, sameServerOptions, toServerOptions } from "../src/pure/settings";

const variables = { workspaceFolder: "/ws", userHome: "/home/ana", env: {} };

function getter(values: Record<string, unknown>): (name: string) => unknown {
  return (name) => values[name];
}

describe("readSettings", () => {
  it("gives the defaults for an empty configuration", () => {
    assert.deepEqual(readSettings(getter({})), DEFAULTS);
  });

  it("reads every setting and normalises the interpreter to words", () => {
    const settings = readSettings(
      getter({
        interpreter: " /opt/py/bin/python ",
        configPath: " ${workspaceFolder}/cfg/quantlens.toml ",
        runOnSave: false,
        inlayHints: false,
        minimumSeverity: "Warning",
        workerTimeoutS: 90,
        workerMemoryLimitMb: 2048,
        logLevel: "debug",
      }),
    );
    assert.deepEqual(settings, {
      interpreter: ["/opt/py/bin/python"],
      configPath: "${workspaceFolder}/cfg/quantlens.toml",
      runOnSave: false,
      inlayHints: false,
      minimumSeverity: "warning",
      workerTimeoutS: 90,
      workerMemoryLimitMb: 2048,
      logLevel: "debug",
    });
  });

  it("replaces values of the wrong type or range by their defaults", () => {
    const settings = readSettings(
      getter({
        interpreter: ["/py", 3, ""],
        runOnSave: "yes",
        minimumSeverity: "fatal",
        workerTimeoutS: -1,
        workerMemoryLimitMb: Number.POSITIVE_INFINITY,
        logLevel: 7,
      }),
    );
    assert.deepEqual(settings, { ...DEFAULTS, interpreter: ["/py"] });
  });
});

describe("toServerOptions", () => {
  it("maps to the server's camelCase options without the interpreter", () => {
    const options = toServerOptions(
      { ...DEFAULTS, interpreter: ["/py"], configPath: "${workspaceFolder}/q.toml", workerTimeoutS: 30, minimumSeverity: "error" },
      variables,
    );
    assert.deepEqual(options, {
      configPath: "/ws/q.toml",
      runOnSave: true,
      inlayHints: true,
      minimumSeverity: "error",
      workerTimeoutS: 30,
      workerMemoryLimitMb: null,
      logLevel: "info",
    });
    assert.equal("interpreter" in options, false);
  });

  it("sends no config path when none is set (the server discovers one)", () => {
    assert.equal(toServerOptions(DEFAULTS, variables).configPath, null);
  });

  it("compares options field by field", () => {
    const a = toServerOptions(DEFAULTS, variables);
    assert.equal(sameServerOptions(a, { ...a }), true);
    assert.equal(sameServerOptions(a, { ...a, inlayHints: false }), false);
  });
});

describe("restartReason", () => {
  it("needs no restart for settings the server applies itself", () => {
    const next = { ...DEFAULTS, runOnSave: false, inlayHints: false, minimumSeverity: "error" as const, logLevel: "debug" as const };
    assert.equal(restartReason(DEFAULTS, next), undefined);
    assert.equal(restartReason(DEFAULTS, { ...DEFAULTS, workerTimeoutS: 10, workerMemoryLimitMb: 512 }), undefined);
  });

  it("restarts for the interpreter and the config path", () => {
    assert.equal(restartReason(DEFAULTS, { ...DEFAULTS, interpreter: ["/py"] }), "the interpreter setting changed");
    assert.equal(restartReason({ ...DEFAULTS, interpreter: ["/py", "-X"] }, { ...DEFAULTS, interpreter: ["/py"] }), "the interpreter setting changed");
    assert.equal(restartReason(DEFAULTS, { ...DEFAULTS, configPath: "q.toml" }), "the config path changed");
  });

  it("restarts when a worker limit is cleared (the server keeps the old one on null)", () => {
    assert.equal(restartReason({ ...DEFAULTS, workerTimeoutS: 10 }, DEFAULTS), "the worker timeout was cleared");
    assert.equal(restartReason({ ...DEFAULTS, workerMemoryLimitMb: 100 }, DEFAULTS), "the worker memory limit was cleared");
  });
});

/** Timers driven by hand: `advance` runs what is due. */
function fakeTimers(): Timers & { advance(ms: number): void; pending(): number } {
  let now = 0;
  let next = 0;
  const due = new Map<number, { at: number; callback: () => void }>();
  return {
    set(callback, ms) {
      next += 1;
      due.set(next, { at: now + ms, callback });
      return next;
    },
    clear(handle) {
      due.delete(handle as number);
    },
    advance(ms) {
      now += ms;
      for (const [id, timer] of [...due].sort((a, b) => a[1].at - b[1].at)) {
        if (timer.at <= now) {
          due.delete(id);
          timer.callback();
        }
      }
    },
    pending: () => due.size,
  };
}

describe("Coalescer", () => {
  it("runs once, a quiet period after the last of a burst", () => {
    const timers = fakeTimers();
    let runs = 0;
    const coalescer = new Coalescer(() => (runs += 1), 1000, timers);
    coalescer.touch();
    timers.advance(600);
    coalescer.touch();
    timers.advance(600);
    assert.equal(runs, 0, "the second touch restarted the wait");
    timers.advance(400);
    assert.equal(runs, 1);
    timers.advance(5000);
    assert.equal(runs, 1);
    assert.equal(timers.pending(), 0);
  });

  it("runs again for a later burst, and not after dispose", () => {
    const timers = fakeTimers();
    let runs = 0;
    const coalescer = new Coalescer(() => (runs += 1), 100, timers);
    coalescer.touch();
    timers.advance(100);
    coalescer.touch();
    timers.advance(100);
    assert.equal(runs, 2);
    coalescer.touch();
    coalescer.dispose();
    timers.advance(1000);
    assert.equal(runs, 2);
  });
});
