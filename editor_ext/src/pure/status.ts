/**
 * The status bar item's text, from the server's `quantlens/status` notifications (one stream
 * per project; the item shows them combined).
 */

export type ServerState = "analysing" | "up to date" | "stale" | "failed";
export const SERVER_STATES: readonly ServerState[] = ["analysing", "up to date", "stale", "failed"];

export interface ProjectStatus {
  readonly state: ServerState;
  readonly project: string;
  readonly findings: number | null;
  readonly percentage: number | null;
  readonly message: string | null;
}

/** What the extension knows before or besides the server's own states. */
export type ClientState =
  | { readonly kind: "starting" }
  /** quantlens does not import in the interpreter (or the interpreter does not run). */
  | { readonly kind: "not started"; readonly message: string }
  | { readonly kind: "stopped"; readonly message: string }
  | { readonly kind: "server"; readonly projects: readonly ProjectStatus[] };

export interface StatusText {
  readonly text: string;
  readonly tooltip: string;
  /** An error or warning background for the item. */
  readonly alert: "error" | "warning" | undefined;
}

/** A `quantlens/status` payload checked field by field; undefined when it is not one. */
export function parseStatus(raw: unknown): ProjectStatus | undefined {
  if (typeof raw !== "object" || raw === null) {
    return undefined;
  }
  const value = raw as Record<string, unknown>;
  if (!SERVER_STATES.includes(value.state as ServerState) || typeof value.project !== "string") {
    return undefined;
  }
  return {
    state: value.state as ServerState,
    project: value.project,
    findings: typeof value.findings === "number" ? value.findings : null,
    percentage: typeof value.percentage === "number" ? value.percentage : null,
    message: typeof value.message === "string" && value.message !== "" ? value.message : null,
  };
}

/**
 * The latest status per project, with `update` applied. A project's "analysing" keeps the
 * finding count of its last finished run, so the count does not blink to zero while it runs.
 */
export function applyStatus(projects: readonly ProjectStatus[], update: ProjectStatus): ProjectStatus[] {
  const previous = projects.find((p) => p.project === update.project);
  const merged = update.findings === null && previous ? { ...update, findings: previous.findings } : update;
  const others = projects.filter((p) => p.project !== update.project);
  return [...others, merged].sort((a, b) => (a.project < b.project ? -1 : a.project > b.project ? 1 : 0));
}

export function statusText(state: ClientState): StatusText {
  switch (state.kind) {
    case "starting":
      return { text: "$(sync~spin) quantlens", tooltip: "quantlens: starting the language server", alert: undefined };
    case "not started":
      return { text: "$(error) quantlens: not started", tooltip: state.message, alert: "error" };
    case "stopped":
      return { text: "$(debug-stop) quantlens: stopped", tooltip: state.message, alert: "warning" };
    case "server":
      return serverText(state.projects);
  }
}

/** Running beats finished; among finished projects the worst state shows; findings add up. */
function serverText(projects: readonly ProjectStatus[]): StatusText {
  const tooltip = ["quantlens: click to show the output", ...projects.map(projectLine)].join("\n");
  const running = projects.filter((p) => p.state === "analysing");
  if (running.length > 0) {
    const known = running.map((p) => p.percentage).filter((p): p is number => p !== null);
    const percent = known.length > 0 ? ` ${Math.round(Math.min(...known))}%` : "";
    return { text: `$(sync~spin) quantlens${percent}`, tooltip, alert: undefined };
  }
  const failed = projects.find((p) => p.state === "failed");
  if (failed) {
    const why = failed.message ?? "the last run failed";
    return { text: "$(error) quantlens: failed", tooltip: `${why}\n\n${tooltip}`, alert: "error" };
  }
  if (projects.some((p) => p.state === "stale")) {
    return { text: "$(warning) quantlens: stale", tooltip, alert: undefined };
  }
  if (projects.length === 0) {
    return { text: "$(circle-outline) quantlens", tooltip: "quantlens: no project analysed yet", alert: undefined };
  }
  const findings = projects.reduce((sum, p) => sum + (p.findings ?? 0), 0);
  return { text: `$(check) quantlens: ${plural(findings, "finding")}`, tooltip, alert: undefined };
}

function projectLine(p: ProjectStatus): string {
  const parts: string[] = [p.state];
  if (p.state === "analysing" && p.percentage !== null) {
    parts.push(`${Math.round(p.percentage)}%`);
  }
  if (p.findings !== null) {
    parts.push(plural(p.findings, "finding"));
  }
  if (p.message) {
    parts.push(p.message);
  }
  return `${p.project}: ${parts.join(", ")}`;
}

export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}
