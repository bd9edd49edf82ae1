// Creates xterm.js terminals with the app's theme and add-ons (fit, search,
// web links, serialize), and keeps their colours in step with the system theme.
import { FitAddon } from "@xterm/addon-fit";
import { SearchAddon } from "@xterm/addon-search";
import { SerializeAddon } from "@xterm/addon-serialize";
import { WebLinksAddon } from "@xterm/addon-web-links";
import { Terminal, type ITheme } from "@xterm/xterm";

export interface Term {
  term: Terminal;
  fit: FitAddon;
  search: SearchAddon;
  serialize: SerializeAddon;
  dispose(): void;
}

function theme(): ITheme {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string) => css.getPropertyValue(name).trim();
  return { background: v("--term-bg"), foreground: v("--term-fg"), cursor: v("--accent"), selectionBackground: v("--border") };
}

export function createTerm(el: HTMLElement, cols: number, rows: number): Term {
  const term = new Terminal({
    cols,
    rows,
    fontFamily: getComputedStyle(document.documentElement).getPropertyValue("--mono"),
    fontSize: 13,
    scrollback: 5000,
    theme: theme(),
    allowProposedApi: true,
  });
  const fit = new FitAddon();
  const search = new SearchAddon();
  const serialize = new SerializeAddon();
  term.loadAddon(fit);
  term.loadAddon(search);
  term.loadAddon(serialize);
  term.loadAddon(new WebLinksAddon());
  term.open(el);
  const media = matchMedia("(prefers-color-scheme: dark)");
  const onScheme = () => (term.options.theme = theme());
  media.addEventListener("change", onScheme);
  return {
    term,
    fit,
    search,
    serialize,
    dispose() {
      media.removeEventListener("change", onScheme);
      term.dispose();
    },
  };
}

/** Writes and resolves once xterm has parsed the bytes, so a resize that
 * follows applies after them. */
export function writeAsync(term: Terminal, data: Uint8Array | string): Promise<void> {
  return new Promise((resolve) => term.write(data, resolve));
}
