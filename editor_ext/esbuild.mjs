// Bundles the extension into dist/extension.js (the only code in the .vsix), or, with
// --tests, each test file with the pure modules it imports into out/test/ for `node --test`.
// `vscode` is external in both: a test that reached it would fail, which keeps the tested
// modules free of VS Code.
import { readdirSync } from "node:fs";
import * as esbuild from "esbuild";

const production = process.argv.includes("--production");
const tests = process.argv.includes("--tests");

const common = {
  bundle: true,
  platform: "node",
  target: "node18",
  format: "cjs",
  external: ["vscode"],
  logLevel: "warning",
};

if (tests) {
  await esbuild.build({
    ...common,
    entryPoints: readdirSync("test").filter((f) => f.endsWith(".test.ts")).map((f) => `test/${f}`),
    outdir: "out/test",
    sourcemap: "inline",
  });
} else {
  await esbuild.build({
    ...common,
    entryPoints: ["src/extension.ts"],
    outfile: "dist/extension.js",
    minify: production,
    sourcemap: production ? false : "linked",
    sourcesContent: false,
  });
}
