/**
 * The HTML report (daemon/report/html.py) made fit for a webview: relative image sources
 * point at webview URIs, and a content security policy allows images and the page's inline
 * style but no script.
 */

/** `cspSource` is `webview.cspSource`; `toWebviewUri` maps a path relative to the report's folder. */
export function webviewHtml(html: string, cspSource: string, toWebviewUri: (relative: string) => string): string {
  return withPolicy(rewriteImageSources(html, toWebviewUri), cspSource);
}

export function contentSecurityPolicy(cspSource: string): string {
  return [
    "default-src 'none'",
    `img-src ${cspSource} data:`,
    `style-src ${cspSource} 'unsafe-inline'`,
    `font-src ${cspSource}`,
  ].join("; ");
}

/** `src="plot.png"` → `src="<webview uri>"`; data:, http(s):, absolute and anchor sources are kept. */
export function rewriteImageSources(html: string, toWebviewUri: (relative: string) => string): string {
  return html.replace(/(<img\b[^>]*?\ssrc\s*=\s*)(["'])(.*?)\2/gi, (whole, head: string, quote: string, src: string) =>
    isRelative(src) ? `${head}${quote}${escapeAttribute(toWebviewUri(decodeEntities(src)))}${quote}` : whole,
  );
}

function isRelative(src: string): boolean {
  return src !== "" && !/^([a-z][a-z0-9+.-]*:|\/|#)/i.test(src);
}

/** The policy goes first in <head>, so it applies before anything the page loads. */
function withPolicy(html: string, cspSource: string): string {
  const meta =
    `<meta http-equiv="Content-Security-Policy" content="${escapeDoubleQuoted(contentSecurityPolicy(cspSource))}">` +
    // the report has dark text and no background: on a dark theme the webview's would hide it
    "<style>html, body { background: #fff; }</style>";
  if (/<head\b[^>]*>/i.test(html)) {
    return html.replace(/<head\b[^>]*>/i, (head) => `${head}${meta}`);
  }
  return `<!DOCTYPE html><html><head>${meta}</head><body>${html}</body></html>`;
}

function decodeEntities(text: string): string {
  return text.replace(/&amp;/g, "&").replace(/&#39;/g, "'").replace(/&quot;/g, '"');
}

function escapeDoubleQuoted(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;");
}

function escapeAttribute(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
