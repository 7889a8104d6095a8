import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { quantizeOutcomes, reportPath } from "../src/pure/commands";
import { MessageGate, type HeldMessage } from "../src/pure/messageGate";
import { contentSecurityPolicy, rewriteImageSources, webviewHtml } from "../src/pure/reportHtml";

const toUri = (relative: string) => `https://file+.vscode-resource.test/report/${relative}`;

describe("report HTML for a webview", () => {
  it("rewrites relative image sources and keeps data, absolute and remote ones", () => {
    const html = [
      "<img src='overview.png' alt='o'>",
      '<img alt="x" src="plots/a&amp;b.png">',
      "<img src='data:image/png;base64,AAAA'>",
      '<img src="/etc/passwd.png">',
      '<img src="https://example.org/x.png">',
      '<a href="overview.png">link</a>',
    ].join("\n");
    assert.equal(
      rewriteImageSources(html, toUri),
      [
        "<img src='https://file+.vscode-resource.test/report/overview.png' alt='o'>",
        '<img alt="x" src="https://file+.vscode-resource.test/report/plots/a&amp;b.png">',
        "<img src='data:image/png;base64,AAAA'>",
        '<img src="/etc/passwd.png">',
        '<img src="https://example.org/x.png">',
        '<a href="overview.png">link</a>',
      ].join("\n"),
    );
  });

  it("puts a policy without scripts first in <head>", () => {
    const page = webviewHtml('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><style>p{}</style></head><body></body></html>', "vscode-resource:", toUri);
    const policy = contentSecurityPolicy("vscode-resource:");
    assert.equal(policy, "default-src 'none'; img-src vscode-resource: data:; style-src vscode-resource: 'unsafe-inline'; font-src vscode-resource:");
    assert.ok(page.startsWith(`<!DOCTYPE html>\n<html lang="en"><head><meta http-equiv="Content-Security-Policy" content="${policy}">`));
    assert.equal(/script-src/.test(page), false);
  });

  it("wraps a fragment that has no <head>", () => {
    const page = webviewHtml("<p>hi</p>", "csp:", toUri);
    assert.match(page, /^<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy"[^>]*><style>[^<]*<\/style><\/head><body><p>hi<\/p><\/body><\/html>$/);
  });
});

describe("quantizeOutcomes", () => {
  it("reads the answer of quantlens.quantizeNow per project, in path order", () => {
    const answer = {
      "/ws/b": { report: "/ws/b/.quantlens/report/index.html", summary: "quantlens: output SQNR 21.3 dB, 2 warning; report: x", problems: [] },
      "/ws/a": { cancelled: true },
      "/ws/c": { report: null, summary: "quantlens: the run failed: boom", problems: [{ message: "boom" }] },
    };
    assert.deepEqual(quantizeOutcomes(answer), [
      { project: "/ws/a", kind: "cancelled", message: "quantlens: the run for /ws/a was cancelled", summary: undefined, report: undefined },
      {
        project: "/ws/b", kind: "done", message: "quantlens: output SQNR 21.3 dB, 2 warning; report: x",
        summary: "quantlens: output SQNR 21.3 dB, 2 warning; report: x", report: "/ws/b/.quantlens/report/index.html",
      },
      { project: "/ws/c", kind: "failed", message: "quantlens: the run failed: boom", summary: "quantlens: the run failed: boom", report: undefined },
    ]);
    assert.deepEqual(quantizeOutcomes(null), []);
    assert.deepEqual(quantizeOutcomes([1]), []);
  });

  it("reads the report path of quantlens.showReport", () => {
    assert.equal(reportPath({ report: "/r/index.html", uri: "file:///r/index.html" }), "/r/index.html");
    assert.equal(reportPath({ report: null }), undefined);
    assert.equal(reportPath(undefined), undefined);
  });
});

describe("MessageGate", () => {
  it("shows messages at once when nothing holds them", () => {
    const shown: HeldMessage[] = [];
    const gate = new MessageGate((m) => shown.push(m));
    gate.receive({ type: 3, message: "a" });
    assert.deepEqual(shown, [{ type: 3, message: "a" }]);
  });

  it("drops the summary the command shows itself, once, and shows the rest in order", () => {
    const shown: string[] = [];
    const gate = new MessageGate((m) => shown.push(m.message));
    gate.hold();
    gate.receive({ type: 2, message: "unknown quantlens setting 'x'" });
    gate.receive({ type: 3, message: "summary" });
    gate.receive({ type: 3, message: "summary" });
    assert.deepEqual(shown, []);
    gate.release(["summary"]);
    assert.deepEqual(shown, ["unknown quantlens setting 'x'", "summary"]);
    gate.receive({ type: 3, message: "later" });
    assert.deepEqual(shown.at(-1), "later");
  });

  it("keeps holding while another command still waits", () => {
    const shown: string[] = [];
    const gate = new MessageGate((m) => shown.push(m.message));
    gate.hold();
    gate.hold();
    gate.receive({ type: 3, message: "first" });
    gate.receive({ type: 3, message: "second" });
    gate.release(["first"]);
    assert.deepEqual(shown, []);
    gate.release(["second"]);
    assert.deepEqual(shown, []);
  });
});
