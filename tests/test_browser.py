"""The built book opened in a real browser: every page in headless Chromium, at a desktop width and a phone width.

The HTML checks of ``test_book.py`` read the files; this reads the page as a reader sees it, after the theme's
CSS, its JavaScript and MathJax have run. On every page, at 1280 px and at 390 px wide, it fails on:

* math left as TeX (a ``$``, ``\\(``, ``\\[`` or ``\\begin{`` in the visible text outside code) or a MathJax error;
* an element wider than the content column (one that sticks out of the article, or a display equation or table
  wider than the column even if it scrolls inside it); code blocks that scroll sideways inside the column are
  allowed, since a listing cannot be re-flowed;
* a figure whose text would be too small to read (the rule is at :data:`FIGURE_TEXT_PT`);
* a console error (a script error, a resource that failed to load, a MathJax warning logged as an error).

Chromium is Debian's ``chromium`` package (or any Chromium/Chrome on the PATH, or the one ``$CHROMIUM`` names),
driven by Playwright's Python package at that executable (Playwright's own browser download is not used). Without
Chromium or Playwright the tests skip and say so. Solutions (collapsed dropdowns) are opened before measuring, so
their code and equations are checked too.
"""

import functools
import http.server
import os
import pathlib
import re
import shutil
import struct
import threading
import time
from urllib.parse import unquote, urljoin, urlparse

import pytest

WIDTHS = {"desktop": 1280, "phone": 390}
"""Viewport widths in CSS px: a laptop, and a phone (iPhone 12 to 15)."""

FIGURE_TEXT_PT = 9
"""The smallest text the book's figures draw, in points: annotations at ``fontsize=9`` (tick labels, axis labels
and legends are 10 pt, ``lib.plotting.BOOK_STYLE``).

The rule: a PNG drawn at ``dpi`` pixels per inch and shown at ``displayed`` CSS px for ``natural`` pixels of width
shows 9 pt text at ``9 / 72 * dpi * displayed / natural`` CSS px. That must be at least
:data:`MIN_FIGURE_TEXT_PX` at that width. The dpi is the PNG's own (its ``pHYs`` chunk, which matplotlib
writes; 100, the inline backend's, if it has none)."""

MIN_FIGURE_TEXT_PX = {"desktop": 11.0, "phone": 6.0}
"""The smallest readable figure text, in CSS px. On a desktop, the theme's small print (0.7 rem of a 16 px
body: footnotes, the figure numbers in captions). On a phone a figure as wide as the page shows its 10 pt tick
labels at about 6 px however it is drawn (a 390 px screen holds 3.5 in at 100 dpi); the rule there catches a
figure drawn wider than the book's 6.9 in, or with text smaller than 9 pt, which a reader cannot read even by
turning the phone."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium():
    """The Chromium executable: ``$CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on the PATH, else None."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else shutil.which(named)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def png_dpi(path):
    """The pixels per inch a PNG says it was drawn at (its ``pHYs`` chunk), or None."""
    data = pathlib.Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"pHYs":
            x_per_metre, _, unit = struct.unpack(">IIB", data[position + 8:position + 17])
            return x_per_metre * 0.0254 if unit == 1 else None
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


# Run in the page once MathJax has finished: everything the checks need, as plain data.
MEASURE = r"""
() => {
  const OVERHANG = 4;
  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const column = article.getBoundingClientRect();
  const style = (element) => getComputedStyle(element);
  const describe = (element) => {
    let name = element.tagName.toLowerCase();
    if (element.id) name += "#" + element.id;
    const classes = [...element.classList].slice(0, 3);
    if (classes.length) name += "." + classes.join(".");
    const section = element.closest("section[id]");
    const text = (element.innerText || element.textContent || "").trim().replace(/\s+/g, " ").slice(0, 70);
    return {name, section: section ? section.id : "", text};
  };
  const visible = (element) => {
    const rect = element.getBoundingClientRect();
    return rect.width > 0 && rect.height > 0 && style(element).visibility !== "hidden";
  };
  const scrolls = (element) => ["auto", "scroll"].includes(style(element).overflowX);
  const clips = (element) => ["auto", "scroll", "hidden", "clip"].includes(style(element).overflowX);
  const assistive = (element) => element.closest("mjx-assistive-mml") !== null;  // for screen readers, clipped
  const isCode = (element) => element.matches("pre, code, div.highlight, div[class*='highlight-']");

  // 1. Elements that stick out of the article's column (outermost only; inside a clipping box that fits the
  //    column, a wide element is scrolled or clipped, not sticking out: that is step 2's business).
  const sticking = [];
  const walk = (element) => {
    for (const child of element.children) {
      if (!visible(child) || assistive(child)) continue;
      const rect = child.getBoundingClientRect();
      if (rect.right > column.right + 1 || rect.left < column.left - 1) {
        sticking.push({...describe(child), width: Math.round(rect.width), column: Math.round(column.width),
                       by: Math.round(Math.max(rect.right - column.right, column.left - rect.left))});
        continue;
      }
      if (clips(child)) continue;
      walk(child);
    }
  };
  walk(article);

  // 2. Boxes inside the column whose content is wider than they are (scrolled or clipped sideways).
  const scrolled = [];
  for (const element of article.querySelectorAll("*")) {
    if (!visible(element) || !clips(element) || assistive(element)) continue;
    if (element.scrollWidth <= element.clientWidth + 1) continue;
    // What is drawn: the visible descendants' extent (scrollWidth also counts MathJax's clipped copy for screen
    // readers). MathJax draws an italic letter's overhang a few px outside its box: that is not cut off.
    const box = element.getBoundingClientRect();
    let right = box.left + element.clientWidth;
    for (const inner of element.querySelectorAll("*")) {
      if (assistive(inner)) continue;
      const rect = inner.getBoundingClientRect();
      if (rect.width > 0) right = Math.max(right, rect.right + element.scrollLeft);
    }
    const content = Math.round(right - box.left);
    if (content <= element.clientWidth + OVERHANG) continue;
    const code = isCode(element) || element.querySelector(":scope > pre") !== null;
    const kind = element.matches("mjx-container") ? "equation"
               : element.querySelector("table") ? "table"
               : code ? "code" : "other";
    // A box inside a box that was already reported for the same content (a glued table in its figure).
    if (scrolled.some((outer) => outer.element.contains(element) && outer.content - outer.width <= content - element.clientWidth + 1)) continue;
    scrolled.push({element, ...describe(element), kind, scrollable: scrolls(element), width: element.clientWidth, content});
  }

  // 3. Math left as TeX in the visible text, outside code; MathJax errors.
  const tex = [];
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest("pre, code, script, style, mjx-container, .highlight, textarea")) continue;
    if (!visible(parent)) continue;
    const text = node.textContent;
    const match = text.match(/\$|\\\(|\\\[|\\begin\{/);
    if (match) {
      const at = match.index;
      tex.push({...describe(parent), text: text.slice(Math.max(0, at - 40), at + 40).replace(/\s+/g, " ")});
    }
  }
  const merrors = [...document.querySelectorAll("mjx-merror, [data-mml-node='merror']")].map(
    (element) => ({...describe(element.closest("mjx-container") || element),
                   error: (element.getAttribute("data-mjx-error") || element.textContent || "").slice(0, 100)}));

  // 4. Figures: natural and displayed width of every image in the article.
  const images = [...article.querySelectorAll("img")].filter(visible).map((image) => ({
    ...describe(image.closest("figure, .cell_output, .output") || image),
    src: image.currentSrc || image.src, natural: image.naturalWidth,
    displayed: image.getBoundingClientRect().width}));

  for (const item of scrolled) delete item.element;
  return {column: column.width, pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
          sticking, scrolled, tex, merrors, images};
}
"""

OPEN_DROPDOWNS = r"""
() => {
  for (const details of document.querySelectorAll("details")) details.open = true;
  for (const hidden of document.querySelectorAll(".toggle-hidden")) hidden.classList.remove("toggle-hidden");
  for (const button of document.querySelectorAll("button.toggle-button")) button.classList.remove("toggle-button-hidden");
}
"""

WAIT_FOR_MATHJAX = r"""
async () => {
  if (!window.MathJax) return "no MathJax on this page";
  for (let i = 0; i < 200 && !(window.MathJax.startup && window.MathJax.startup.promise); i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (!(window.MathJax.startup && window.MathJax.startup.promise)) return "MathJax never started";
  await window.MathJax.startup.promise;
  return "typeset";
}
"""

TYPESET_AGAIN = r"""
async () => {
  if (window.MathJax && window.MathJax.typesetPromise) await window.MathJax.typesetPromise();
}
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    """Serve ``directory`` over HTTP on a free port in a daemon thread; returns (base URL, server)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


def pages_of(book):
    """Every HTML page of the built book, relative to its root (the theme's own files excluded)."""
    return sorted(str(path.relative_to(book)) for path in book.glob("**/*.html")
                  if not path.relative_to(book).parts[0].startswith("_"))


def inspect_book(book, widths=WIDTHS, chromium=None):
    """Open every page of the built book at every width; return ``{(page, width name): findings}``.

    ``findings`` is what :data:`MEASURE` returns plus ``console`` (console errors and uncaught exceptions).
    """
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    base, server = serve(book)
    local = lambda url: url.startswith((base, "data:"))
    results = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                for width_name, width in widths.items():
                    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
                    # Offline, as a reader on a train: anything from the network (the Colab badge) is refused,
                    # and its failure is not counted (the book's own files all come from the local server).
                    context.route("**/*", lambda route: route.continue_() if local(route.request.url)
                                  else route.abort("internetdisconnected"))
                    # Chromium asks every site for /favicon.ico on its own; the book has none and no page links
                    # one: that 404 would be the browser's, not the book's. (The later route is tried first.)
                    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
                    for relative in pages_of(book):
                        page = context.new_page()
                        console = []
                        page.on("console", lambda message, log=console: log.append(f"console: {message.text}"[:300])
                                if message.type == "error" and local(message.location.get("url") or base) else None)
                        page.on("pageerror", lambda error, log=console: log.append(f"uncaught: {error}"[:300]))
                        page.on("requestfailed", lambda request, log=console: log.append(
                            f"failed to load: {request.url}") if local(request.url) else None)
                        page.on("response", lambda response, log=console: log.append(
                            f"HTTP {response.status}: {response.url}") if response.status >= 400 else None)
                        redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"',
                                             (book / relative).read_text(), flags=re.IGNORECASE)
                        page.goto(base + relative, wait_until="load")
                        if redirect:  # index.html sends the reader to the first page: measure that one
                            target = urljoin(base + relative, redirect.group(1))
                            page.wait_for_url(target, wait_until="load")
                        page.evaluate(WAIT_FOR_MATHJAX)
                        page.evaluate(OPEN_DROPDOWNS)
                        page.evaluate(TYPESET_AGAIN)
                        findings = page.evaluate(MEASURE)
                        findings["console"] = console
                        results[relative, width_name] = findings
                        page.close()
                    context.close()
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return results


def small_figures(book, findings, width_name):
    """The figures of one page whose 9 pt text shows smaller than :data:`MIN_FIGURE_TEXT_PX` at that width."""
    small = []
    for image in findings["images"]:
        path = book / unquote(urlparse(image["src"]).path).lstrip("/")
        if not image["natural"] or not path.exists() or path.suffix.lower() != ".png":
            continue
        dpi = png_dpi(path) or 100.0
        text_px = FIGURE_TEXT_PT / 72 * dpi * image["displayed"] / image["natural"]
        if text_px < MIN_FIGURE_TEXT_PX[width_name] - 0.05:
            small.append(f"{path.name} in #{image['section']}: {image['natural']} px drawn at {dpi:.0f} dpi, shown "
                         f"{image['displayed']:.0f} px wide: {FIGURE_TEXT_PT} pt text is {text_px:.1f} px")
    return small


def problems(book, findings, width_name):
    """Every finding on one page at one width, by kind, as lines a reader of the test's failure can act on."""
    where = lambda item: f"{item['name']} in #{item['section']}: {item['text']!r}"
    scrolled = lambda kind: [item for item in findings["scrolled"] if item["kind"] == kind]
    wide = lambda item: f"{where(item)}: {item['content']} px of content in {item['width']} px" + (
        "" if item["scrollable"] else " (cut off)")
    return {
        # Sticking out of the column, or cut off by a box that does not scroll.
        "overflow": [f"{where(item)} is {item['width']} px wide, sticks out of the {item['column']} px column "
                     f"by {item['by']} px" for item in findings["sticking"]]
                    + [wide(item) for item in scrolled("other") + scrolled("code") if not item["scrollable"]]
                    + [wide(item) for item in scrolled("other") if item["scrollable"]],
        # Wider than the column even though the reader can scroll them sideways.
        "equations": [wide(item) for item in scrolled("equation")],
        "tables": [wide(item) for item in scrolled("table")],
        "math": [f"TeX left in the text: {where(item)}" for item in findings["tex"]]
                + [f"MathJax error {item['error']!r} in {item['name']} in #{item['section']}"
                   for item in findings["merrors"]],
        "figures": small_figures(book, findings, width_name),
        "console": findings["console"],
    }


@pytest.fixture(scope="module")
def browser_findings(request):
    """The built book's pages, and ``{(page, width name): {kind: [finding, ...]}}``. Skips, before building anything,
    when there is no Chromium or no Playwright."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no Chromium found (install Debian's `chromium` package, or set $CHROMIUM): "
            "the pages were not opened in a browser"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the `playwright` Python package is not installed (pip install -r requirements.txt)")
    book = request.getfixturevalue("built_book")
    start = time.perf_counter()
    results = inspect_book(book, chromium=chromium)
    print(f"opened {len(results)} pages x widths in Chromium ({chromium}) in {time.perf_counter() - start:.1f} s")
    return pages_of(book), {key: problems(book, found, key[1]) for key, found in results.items()}


def report(findings, kind, width_name):
    found = [f"{page} at {WIDTHS[width_name]} px: {line}"
             for (page, width), kinds in sorted(findings.items()) if width == width_name
             for line in kinds[kind]]
    return f"{len(found)} found:\n" + "\n".join(found)


@pytest.mark.parametrize("width_name", WIDTHS)
def test_browser_every_page_is_opened(browser_findings, width_name):
    pages, findings = browser_findings
    assert {page for page, width in findings if width == width_name} == set(pages)
    assert len(pages) >= 10


KNOWN_TO_FAIL = {}
"""Checks that fail on the book as it stands, each with its reason (none today). Each is a strict xfail: the day a
check passes, its test fails until the entry is removed here, so the list cannot go stale."""


def _known(kind, width_name):
    reason = KNOWN_TO_FAIL.get((kind, width_name))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(kind, width_name, marks=marks, id=f"{kind}-{width_name}")


@pytest.mark.parametrize("kind, width_name", [
    _known(kind, width_name)
    for kind in ("overflow", "equations", "tables", "math", "figures", "console") for width_name in WIDTHS])
def test_browser_page_as_a_reader_sees_it(browser_findings, kind, width_name):
    _, findings = browser_findings
    assert not any(kinds[kind] for (_, width), kinds in findings.items() if width == width_name), \
        report(findings, kind, width_name)


if __name__ == "__main__":  # python tests/test_browser.py _build/html: print the findings of an existing build
    import sys

    book = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "_build/html").resolve()
    start = time.perf_counter()
    results = inspect_book(book)
    for (page, width_name), findings in sorted(results.items()):
        for kind, lines in problems(book, findings, width_name).items():
            for line in lines:
                print(f"{width_name:7} {kind:8} {page}: {line}")
    if "-v" in sys.argv:
        for (page, width_name), findings in sorted(results.items()):
            for image in findings["images"]:
                print(width_name, page, image["src"][-40:], image["natural"], round(image["displayed"]))
    print(f"{len(results)} page views in {time.perf_counter() - start:.1f} s")
