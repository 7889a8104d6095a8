// End-to-end check of the packaged extension in a real VS Code: code-server (VS Code 1.100)
// with quantlens.vsix installed, on a copy of fixtures/two_branch_concat, driven by Debian's
// headless Chromium through playwright-core. Every check reads what a user would see (the
// squiggle, the Problems panel, the hover, the inlay hint, the Layers view, the notifications,
// the report webview) and each step leaves a screenshot in e2e/screenshots/.
//
// Run by `make e2e-vscode`, which builds the .vsix and installs code-server first. Environment:
// QUANTLENS_PYTHON (the interpreter with quantlens installed; default the repo's .venv),
// CHROMIUM (default /usr/bin/chromium), E2E_KEEP=1 to keep the throwaway folder.

import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../..");
const VSIX = join(REPO, "editor_ext/quantlens.vsix");
const FIXTURE = join(REPO, "fixtures/two_branch_concat");
const CODE_SERVER = join(HERE, "node_modules/.bin/code-server");
const SCREENSHOTS = join(HERE, "screenshots");
const PYTHON = process.env.QUANTLENS_PYTHON ?? join(REPO, ".venv/bin/python");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** The fixture's planted problem: model.py line 44 (`torch.cat`, point cat_0) gets unbalanced-concat. */
const LAYER_LINE = 44;
const LAYER_MARK = "# @cat";
const POINT = "cat_0";
const RULE = "unbalanced-concat";

/** The first diagnostics need a worker run (torch import, calibration, simulation) on 2 cores. */
const FIRST_RUN_MS = 240_000;
const RUN_MS = 120_000;
const UI_MS = 30_000;
const TOTAL_MS = 9 * 60_000;

const started = Date.now();

async function main() {
  for (const [what, path] of [["the .vsix (make ext)", VSIX], ["code-server (e2e/install.sh)", CODE_SERVER], ["Chromium", CHROMIUM], ["the interpreter", PYTHON]]) {
    if (!existsSync(path)) {
      throw new Error(`missing ${what}: ${path}`);
    }
  }
  const root = mkdtempSync(join(tmpdir(), "quantlens-e2e-"));
  const dirs = layout(root);
  rmSync(SCREENSHOTS, { recursive: true, force: true });
  mkdirSync(SCREENSHOTS, { recursive: true });
  let server;
  let browser;
  const watchdog = setTimeout(() => fail(new Error(`the run took over ${TOTAL_MS / 60_000} minutes`)), TOTAL_MS);
  const fail = async (error) => {
    console.error(`\nFAILED after ${seconds()}: ${error instanceof Error ? error.stack : error}`);
    await browser?.pages()[0]?.screenshot({ path: join(SCREENSHOTS, "failure.png") }).catch(() => {});
    dumpLogs(dirs, server);
    server?.stop();
    await browser?.close().catch(() => {});
    console.error(`kept ${root} (the workspace, the user data and its logs)`);
    process.exit(1);
  };
  try {
    installExtension(dirs);
    server = await startCodeServer(dirs);
    browser = await chromium.launchPersistentContext(dirs.chromium, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1600, height: 1000 },
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
    });
    const page = browser.pages()[0] ?? (await browser.newPage());
    page.setDefaultTimeout(UI_MS);
    await page.goto(`${server.url}/?folder=${encodeURIComponent(dirs.workspace)}`);
    await page.locator(".monaco-workbench").waitFor();
    step("workbench loaded");
    await checkAll(page);
    console.log(`\nPASSED in ${seconds()}; screenshots in ${SCREENSHOTS}`);
  } catch (error) {
    await fail(error);
  }
  clearTimeout(watchdog);
  await browser.close();
  server.stop();
  if (process.env.E2E_KEEP !== "1") {
    rmSync(root, { recursive: true, force: true });
  } else {
    console.log(`kept ${root}`);
  }
}

/** The user-visible checks, in the order a user meets them. */
async function checkAll(page) {
  await openFile(page, "model.py");
  await goToLine(page, LAYER_LINE);

  // (a) the squiggle on the layer line and the Problems entry
  const squiggle = page.locator(".monaco-editor .squiggly-warning");
  await squiggle.first().waitFor({ timeout: FIRST_RUN_MS });
  await expectOnLine(page, squiggle.first(), LAYER_MARK);
  await command(page, "View: Focus Problems (Errors, Warnings, Infos)");
  const problems = page.locator(".markers-panel");
  await problems.getByText(RULE).first().waitFor();
  await problems.getByText(POINT).first().waitFor();
  await shot(page, "01-squiggle-and-problems", `squiggle on line ${LAYER_LINE}, Problems lists ${RULE} on ${POINT}`);

  // (b) the hover over the layer line
  await focusEditor(page, "model.py");
  const hover = await hoverOver(page, squiggle.first());
  // the diagnostic's message names the point too: the server's own hover has its statistics
  await hover.getByText(POINT, { exact: true }).first().waitFor();
  await hover.getByText(/cumulative SQNR/).first().waitFor();
  await shot(page, "02-hover", `hover over line ${LAYER_LINE} names ${POINT}`);
  await page.keyboard.press("Escape");

  // (c) the inlay hint at the end of the layer line
  const line = viewLine(page, LAYER_MARK);
  await expectText(line, /u?int8 t=\S+ -?[\d.]+dB/, "the inlay hint at the end of the layer line");
  await shot(page, "03-inlay-hint", `inlay hint on line ${LAYER_LINE}: ${(await line.textContent()).replace(/\u00a0/g, " ").match(/u?int8 t=.*/)?.[0]}`);

  // (d) the Layers view in the Explorer
  const layers = await layersView(page);
  const row = layers.locator(".monaco-list-row").filter({ has: page.getByText(POINT, { exact: true }) });
  await expectText(row, /cat · iso [\d.]+ dB · cum [\d.]+ dB/, `the ${POINT} row of the Layers view`);
  const rows = await layers.locator(".monaco-list-row").allTextContents();
  if (rows.length < 6) {
    throw new Error(`the Layers view lists ${rows.length} rows: ${rows.join(" | ")}`);
  }
  const names = await layers.locator(".monaco-list-row .label-name").allTextContents();
  await shot(page, "04-layers-view", `Layers view lists ${rows.length} points: ${names.join(", ")}`);

  // (e) Quantize Now with its progress, then Show Report
  await command(page, "quantlens: Quantize Now");
  const toasts = page.locator(".notifications-toasts");
  await toasts.getByText(/quantlens: (calibrating|measuring)/).first().waitFor({ timeout: RUN_MS });
  await shot(page, "05-quantize-progress", "Quantize Now: the progress notification");
  const done = toasts.locator(".notification-toast").filter({ has: page.getByRole("button", { name: "Show Report" }) });
  await done.first().waitFor({ timeout: RUN_MS });
  const summary = await done.first().locator(".notification-list-item-message").textContent();
  await shot(page, "06-quantize-done", `Quantize Now done: ${summary}`);
  await command(page, "quantlens: Show Report");
  await page.locator(".tab").getByText("quantlens report").first().waitFor();
  const report = page.frameLocator("iframe.webview.ready").frameLocator("#active-frame");
  await report.getByText(POINT).first().waitFor();
  await report.getByText("Summary", { exact: true }).first().waitFor();
  await shot(page, "07-report", "the report webview: its summary");
  const plot = report.locator("img").first();
  await plot.scrollIntoViewIfNeeded();
  await expectLoaded(plot);
  await shot(page, "08-report-plot", `the report webview: a plot (${await plot.getAttribute("alt")})`);

  // (f) ignoring the rule in quantlens.toml clears the warning
  await openFile(page, "quantlens.toml");
  await page.keyboard.press("Control+End");
  await page.keyboard.type(`\nignore = ["${RULE}"]\n`);
  await save(page);
  await command(page, "View: Focus Problems (Errors, Warnings, Infos)");
  await waitGone(problems.getByText(RULE), RUN_MS, `${RULE} in the Problems panel after the config edit`);
  // model.py stays visible in the first group: the warning squiggle goes, the rest is re-published
  // (the line's outliers-iqr, whose fix was re-simulated and did not help, is a hint)
  await waitGone(squiggle, UI_MS, "the warning squiggle after the config edit");
  await expectOnLine(page, page.locator(".monaco-editor .squiggly-hint").first(), LAYER_MARK);
  const left = (await problems.locator(".monaco-list-row").allTextContents()).filter((row) => !row.startsWith("model.py"));
  await shot(page, "09-config-edit", `after ignore = ["${RULE}"] in quantlens.toml, no ${RULE} and no warning squiggle; Problems: ${left.join(" | ")}`);
}

// ---------------------------------------------------------------- the UI, as a user drives it

/** Runs a palette command by its title (F1, type, Enter on the matching entry). */
async function command(page, title) {
  await quickInput(page, `>${title}`, title);
}

async function openFile(page, name) {
  await quickInput(page, name, name);
  await page.locator(".editor-group-container.active .tab.active").getByText(name, { exact: true }).waitFor();
  await focusEditor(page, name);
}

async function goToLine(page, line) {
  await quickInput(page, `:${line}`, null);
}

/** F1, replace the palette's text with `text`, wait for an entry labelled `label` (if given), Enter. */
async function quickInput(page, text, label) {
  await page.keyboard.press("Escape");
  await page.keyboard.press("F1");
  const widget = page.locator(".quick-input-widget");
  const input = widget.locator(".quick-input-box input");
  await input.waitFor();
  await input.fill(text);
  if (label !== null) {
    await widget.locator(".quick-input-list .monaco-list-row").filter({ hasText: label }).first().waitFor();
  }
  await page.keyboard.press("Enter");
  await widget.waitFor({ state: "hidden" });
}

/** Clicking an editor's tab focuses its text (clicking the text itself would move the cursor). */
async function focusEditor(page, name) {
  await page.locator(".editor-group-container.active .tab").getByText(name, { exact: true }).first().click();
  await page.locator(".editor-group-container.active .monaco-editor.focused").waitFor();
}

/** Saves the active editor and waits for its tab to be clean. */
async function save(page) {
  await page.keyboard.press("Control+S");
  const dirty = page.locator(".editor-group-container.active .tab.active.dirty");
  try {
    await dirty.waitFor({ state: "detached", timeout: 5_000 });
  } catch {
    await command(page, "File: Save");
    await dirty.waitFor({ state: "detached" });
  }
}

/** Moves the mouse onto `target` (the editor's text layer lies over it) until a hover shows. */
async function hoverOver(page, target) {
  const box = await target.boundingBox();
  if (box === null) {
    throw new Error("the squiggle has no box to hover over");
  }
  const hover = page.locator(".monaco-hover:not(.hidden)").filter({ hasText: /\S/ });
  for (let attempt = 0; attempt < 5; attempt++) {
    await page.mouse.move(box.x + 2 + attempt * 3, box.y + box.height / 2 - 4);
    await page.mouse.move(box.x + box.width / 2 + attempt * 3, box.y + box.height / 2 - 4, { steps: 5 });
    try {
      await hover.first().waitFor({ timeout: 5_000 });
      return hover.first();
    } catch {
      await page.mouse.move(0, 0);
    }
  }
  throw new Error("no hover over the layer line");
}

/** The rendered line that holds `mark`, in whichever editor group shows it (model.py is open in one). */
function viewLine(page, mark) {
  return page.locator(".monaco-editor .view-line").filter({ hasText: mark }).first();
}

async function expectOnLine(page, target, mark) {
  const line = viewLine(page, mark);
  const [a, b] = [await target.boundingBox(), await line.boundingBox()];
  if (a === null || b === null || Math.abs(a.y + a.height / 2 - (b.y + b.height / 2)) > b.height) {
    throw new Error(`the squiggle (${JSON.stringify(a)}) is not on the line "${mark}" (${JSON.stringify(b)})`);
  }
}

async function expectText(locator, pattern, what) {
  const deadline = Date.now() + UI_MS;
  let text = "";
  while (Date.now() < deadline) {
    text = (await locator.first().textContent().catch(() => "")) ?? "";
    text = text.replace(/\u00a0/g, " "); // the editor renders spaces as no-break spaces
    if (pattern.test(text)) {
      return;
    }
    await sleep(250);
  }
  throw new Error(`${what}: ${pattern} not in "${text}"`);
}

async function waitGone(locator, timeout, what) {
  try {
    await locator.first().waitFor({ state: "detached", timeout });
  } catch {
    throw new Error(`still there after ${timeout / 1000} s: ${what}`);
  }
}

/** The "quantlens: Layers" pane of the Explorer, expanded. */
async function layersView(page) {
  const pane = page.locator(".pane").filter({ has: page.locator(".pane-header").getByText("quantlens: Layers") });
  const header = pane.locator(".pane-header").first();
  await header.waitFor();
  if ((await header.getAttribute("aria-expanded")) !== "true") {
    await header.click();
  }
  // room for every row: fold the folder's tree above it (its header stays), then move the
  // mouse off the rows so that no tooltip covers them
  const folders = page.locator(".pane-header[aria-expanded='true']").filter({ hasText: /two_branch_concat/i });
  if ((await folders.count()) > 0) {
    await folders.first().click();
  }
  await page.mouse.move(20, 600); // the empty part of the activity bar
  return pane.locator(".pane-body");
}

/** A report plot is an <img> (an inline PNG): it must have decoded, within the webview's CSP. */
async function expectLoaded(image) {
  const deadline = Date.now() + UI_MS;
  while (!(await image.evaluate((img) => img.complete && img.naturalWidth > 0))) {
    if (Date.now() > deadline) {
      throw new Error(`the report's plot did not load: ${await image.getAttribute("src")}`);
    }
    await sleep(250);
  }
}

async function shot(page, name, claim) {
  await sleep(300); // let animations (hover fade-in, toasts) settle
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
  step(`${claim}  [${name}.png]`);
}

// ---------------------------------------------------------------- code-server

function layout(root) {
  const dirs = {
    root,
    config: join(root, "config"),
    data: join(root, "data"),
    tmp: join(root, "tmp"),
    userData: join(root, "user-data"),
    extensions: join(root, "extensions"),
    chromium: join(root, "chromium"),
    workspace: join(root, "two_branch_concat"),
  };
  for (const dir of Object.values(dirs)) {
    mkdirSync(dir, { recursive: true });
  }
  cpSync(FIXTURE, dirs.workspace, { recursive: true, filter: (source) => !/\.quantlens|__pycache__|quantlens-report/.test(source) });
  mkdirSync(join(dirs.userData, "User"), { recursive: true });
  writeFileSync(join(dirs.userData, "User/settings.json"), JSON.stringify(userSettings(), null, 2));
  return dirs;
}

/** A quiet VS Code (no welcome page, tips, updates, trust prompt) with quantlens on the repo's venv. */
function userSettings() {
  return {
    "quantlens.interpreter": PYTHON,
    "security.workspace.trust.enabled": false,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "workbench.welcomePage.walkthroughs.openOnInstall": false,
    "workbench.enableExperiments": false,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "extensions.ignoreRecommendations": true,
    "editor.inlayHints.enabled": "on",
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "editor.minimap.enabled": false,
    "files.autoSave": "off",
    "window.restoreWindows": "none",
  };
}

function environment(dirs) {
  return { ...process.env, XDG_CONFIG_HOME: dirs.config, XDG_DATA_HOME: dirs.data, TMPDIR: dirs.tmp, HOME: dirs.root };
}

function codeServerArgs(dirs) {
  return ["--user-data-dir", dirs.userData, "--extensions-dir", dirs.extensions, "--disable-telemetry", "--disable-update-check"];
}

function installExtension(dirs) {
  const out = spawnSync(CODE_SERVER, [...codeServerArgs(dirs), "--install-extension", VSIX], { env: environment(dirs), encoding: "utf8", timeout: 120_000 });
  if (out.status !== 0 || !readdirSync(dirs.extensions).some((name) => name.startsWith("quantlens.quantlens-"))) {
    throw new Error(`--install-extension failed (${out.status}):\n${out.stdout}\n${out.stderr}`);
  }
  step(`installed ${VSIX}: ${readdirSync(dirs.extensions).filter((n) => n.startsWith("quantlens.")).join(", ")}`);
}

async function startCodeServer(dirs) {
  const port = await freePort();
  const args = [...codeServerArgs(dirs), "--bind-addr", `127.0.0.1:${port}`, "--auth", "none", "--disable-workspace-trust", "--disable-getting-started-override", "--ignore-last-opened", dirs.workspace];
  const child = spawn(CODE_SERVER, args, { env: environment(dirs), stdio: ["ignore", "pipe", "pipe"], detached: true });
  let log = "";
  child.stdout.on("data", (chunk) => (log += chunk));
  child.stderr.on("data", (chunk) => (log += chunk));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`code-server exited (${child.exitCode}):\n${log}`);
    }
    if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) {
      step(`code-server on ${url}`);
      return { url, stop: () => stopGroup(child), log: () => log };
    }
    await sleep(250);
  }
  stopGroup(child);
  throw new Error(`code-server did not answer on ${url} within 60 s:\n${log}`);
}

/** code-server forks its VS Code server and extension hosts (and they the language server): end the group. */
function stopGroup(child) {
  try {
    process.kill(-child.pid, "SIGTERM");
  } catch {
    // already gone
  }
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

/** On failure: the tails of code-server's output and of the extension host's and quantlens's logs. */
function dumpLogs(dirs, server) {
  if (server !== undefined) {
    console.error(`\n----- code-server's output (last 4000 characters)\n${server.log().slice(-4000)}`);
  }
  const logs = join(dirs.userData, "logs");
  if (!existsSync(logs)) {
    return;
  }
  for (const file of walk(logs).filter((f) => /quantlens|exthost\.log|remoteagent\.log/.test(f))) {
    const text = readFileSync(file, "utf8");
    console.error(`\n----- ${file} (last 4000 characters)\n${text.slice(-4000)}`);
  }
}

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

function step(text) {
  console.log(`[${seconds()}] ${text}`);
}

function seconds() {
  return `${((Date.now() - started) / 1000).toFixed(1)} s`;
}

function sleep(ms) {
  return new Promise((done) => setTimeout(done, ms));
}

await main();
