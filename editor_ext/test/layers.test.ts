import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  groupByProject,
  type LayerRow,
  layerDescription,
  layerIcon,
  layerTooltip,
  parseLayers,
  revealLine,
  sortLayers,
} from "../src/pure/layers";

function row(fields: Partial<LayerRow>): LayerRow {
  return {
    project: "/ws/p",
    name: "layer",
    op: "Conv2d",
    kind: "module",
    source: { file: "/ws/p/model.py", line: 25, column: 0 },
    isolated_sqnr_db: 30,
    cumulative_sqnr_db: 30,
    quantized: true,
    bits: 8,
    finding: null,
    estimated: false,
    ...fields,
  };
}

describe("sortLayers", () => {
  it("puts the lowest cumulative SQNR first, points without numbers last, ties by name", () => {
    const rows = [
      row({ name: "head", cumulative_sqnr_db: 12.5 }),
      row({ name: "float_tail", cumulative_sqnr_db: null, isolated_sqnr_db: null }),
      row({ name: "stem", cumulative_sqnr_db: 39.1 }),
      row({ name: "b_branch", cumulative_sqnr_db: 20, isolated_sqnr_db: 25 }),
      row({ name: "a_branch", cumulative_sqnr_db: 20, isolated_sqnr_db: 25 }),
      row({ name: "concat", cumulative_sqnr_db: 20, isolated_sqnr_db: 18 }),
      row({ name: "a_float", cumulative_sqnr_db: null, isolated_sqnr_db: null }),
      row({ name: "deep", cumulative_sqnr_db: -3 }),
    ];
    assert.deepEqual(
      sortLayers(rows).map((r) => r.name),
      ["deep", "head", "concat", "a_branch", "b_branch", "stem", "a_float", "float_tail"],
    );
  });

  it("does not change its input", () => {
    const rows = [row({ name: "b", cumulative_sqnr_db: 2 }), row({ name: "a", cumulative_sqnr_db: 1 })];
    sortLayers(rows);
    assert.deepEqual(rows.map((r) => r.name), ["b", "a"]);
  });

  it("groups by project, groups ordered by their most damaged layer", () => {
    const rows = [
      row({ project: "/a", name: "x", cumulative_sqnr_db: 30 }),
      row({ project: "/b", name: "y", cumulative_sqnr_db: 5 }),
      row({ project: "/a", name: "z", cumulative_sqnr_db: 10 }),
    ];
    assert.deepEqual(
      groupByProject(rows).map((g) => [g.project, g.rows.map((r) => r.name)]),
      [["/b", ["y"]], ["/a", ["z", "x"]]],
    );
  });
});

describe("layer text", () => {
  it("describes op and both SQNRs to one decimal", () => {
    assert.equal(layerDescription(row({ op: "Linear", isolated_sqnr_db: 31.234, cumulative_sqnr_db: 18.96 })), "Linear · iso 31.2 dB · cum 19.0 dB");
  });

  it("marks missing numbers, unquantized and estimated points", () => {
    assert.equal(
      layerDescription(row({ op: "add", quantized: false, isolated_sqnr_db: null, cumulative_sqnr_db: null, estimated: true })),
      "add · not quantized · iso – · cum – · estimated",
    );
  });

  it("puts the place, the numbers and the worst finding in the tooltip", () => {
    const tooltip = layerTooltip(
      row({ name: "blocks.0.attn", op: "Linear", finding: { rule: "outlier-channels", severity: "warning", message: "3 channels dominate" } }),
    );
    assert.equal(
      tooltip,
      [
        "blocks.0.attn (Linear, module)",
        "/ws/p/model.py:25",
        "isolated SQNR 30.0 dB, cumulative SQNR 30.0 dB; 8-bit activations",
        "worst finding: warning outlier-channels: 3 channels dominate",
      ].join("\n"),
    );
  });

  it("picks the icon by the worst finding's severity", () => {
    const finding = (severity: "info" | "warning" | "error") => ({ rule: "r", severity, message: "m" });
    assert.deepEqual(layerIcon(row({ finding: finding("error") })), { id: "error", color: "problemsErrorIcon.foreground" });
    assert.deepEqual(layerIcon(row({ finding: finding("warning") })), { id: "warning", color: "problemsWarningIcon.foreground" });
    assert.deepEqual(layerIcon(row({ finding: finding("info") })), { id: "info", color: "problemsInfoIcon.foreground" });
    assert.deepEqual(layerIcon(row({})), { id: "pass", color: "testing.iconPassed" });
    assert.deepEqual(layerIcon(row({ quantized: false })), { id: "circle-outline", color: undefined });
  });

  it("reveals the 0-based line, or the file's top when the line is unknown", () => {
    assert.equal(revealLine(row({})), 24);
    assert.equal(revealLine(row({ source: { file: "/m.py", line: 0, column: 0 } })), undefined);
    assert.equal(revealLine(row({ source: null })), undefined);
  });
});

describe("parseLayers", () => {
  it("reads the server's rows and drops malformed ones", () => {
    const raw = [
      {
        project: "/ws/p", name: "stem", op: "Conv2d+BatchNorm2d+ReLU", kind: "module",
        source: { file: "/ws/p/model.py", line: 25, column: 0 }, isolated_sqnr_db: 39.1, cumulative_sqnr_db: 39.1,
        quantized: true, bits: 8, finding: { rule: "r", severity: "error", message: "m" }, estimated: false,
      },
      { name: 3 },
      "junk",
      { project: "/ws/p", name: "bare" },
    ];
    const rows = parseLayers(raw);
    assert.equal(rows.length, 2);
    assert.deepEqual(rows[0], raw[0]);
    assert.deepEqual(rows[1], row({
      name: "bare", op: "", kind: "", source: null, isolated_sqnr_db: null, cumulative_sqnr_db: null, bits: null,
    }));
    assert.deepEqual(parseLayers(null), []);
  });
});
