"""Tests of the book itself: the build, the table of contents, and the rules every chapter follows."""

import ast
import html
import html.parser
import importlib
import inspect
import json
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest
import yaml

import lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [chapter["file"] for part in TOC["parts"] for chapter in part["chapters"]]
NOTEBOOKS = sorted(ROOT.glob("book/*/*.ipynb"))


def load(path):
    return json.loads(path.read_text())


def code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"])


def test_toc_lists_three_parts_and_eight_chapters_that_exist():
    assert len(TOC["parts"]) == 4  # three parts and the back matter
    chapters = [chapter["file"] for part in TOC["parts"][:3] for chapter in part["chapters"]]
    assert len(chapters) == 8
    for entry in CHAPTERS + [TOC["root"]]:
        assert any((ROOT / f"{entry}{suffix}").exists() for suffix in (".md", ".ipynb")), entry


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\$ (.+)$", readme, flags=re.M)
    assert commands[:2] == ["make book", "make test"], commands[:2]
    assert re.search(r"^make test$", ci, flags=re.M), ci


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
class TestChapterNotebook:
    def test_is_in_the_toc(self, path):
        assert str(path.relative_to(ROOT).with_suffix("")) in CHAPTERS

    def test_colab_install_and_badge_use_the_configured_repository(self, path):
        url = CONFIG["repository"]["url"]
        notebook = load(path)
        assert f'REPOSITORY = "{url}"' in source(code_cells(notebook)[0])
        header = "".join(notebook["cells"][0]["source"])
        colab = url.replace("https://github.com", "https://colab.research.google.com/github")
        assert f"{colab}/blob/{CONFIG['repository']['branch']}/{path.relative_to(ROOT)}" in header

    def test_tensorflow_is_imported_in_one_ignored_cell(self, path):
        cells = code_cells(load(path))
        importing = [c for c in cells if re.search(r"^import (tensorflow|keras)\b", source(c), flags=re.M)]
        assert len(importing) == 1
        assert "nbval-ignore-output" in importing[0]["metadata"].get("tags", [])
        assert 'os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"' in source(importing[0])

    def test_committed_executed_without_errors_or_stderr(self, path):
        for cell in code_cells(load(path)):
            assert cell["execution_count"] is not None, source(cell)[:80]
            for output in cell["outputs"]:
                assert output["output_type"] != "error", source(cell)[:80]
                assert output.get("name") != "stderr", source(cell)[:80]

    def test_defines_nothing_that_lib_already_has(self, path):
        lib_names = set()
        for module in pkgutil.iter_modules(lib.__path__):
            members = inspect.getmembers(importlib.import_module(f"lib.{module.name}"))
            lib_names |= {name for name, obj in members if inspect.isfunction(obj) or inspect.isclass(obj)}
        for cell in code_cells(load(path)):
            for node in ast.walk(ast.parse(source(cell))):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    assert node.name not in lib_names, f"{path.name} re-defines lib's {node.name}"

    def test_fit_is_silent(self, path):
        for cell in code_cells(load(path)):
            for call in re.findall(r"\.fit\([^)]*\)", source(cell), flags=re.S):
                assert "verbose=0" in call, call


CODE_LINE_LIMIT = 88
"""The longest code line that fits the page's 688 px column in the theme's code font, without a scroll bar."""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_fit_the_column(path):
    too_long = [f"cell {index}, {len(line)} characters: {line.strip()[:60]}"
                for index, cell in enumerate(load(path)["cells"]) if cell["cell_type"] == "code"
                for line in source(cell).splitlines() if len(line) > CODE_LINE_LIMIT]
    assert not too_long, f"{len(too_long)} code lines wider than {CODE_LINE_LIMIT} characters:\n" + "\n".join(too_long)


def test_every_page_is_built(built_book):
    for entry in CHAPTERS + [TOC["root"]]:
        assert (built_book / f"{entry}.html").exists(), entry
    assert (built_book / "index.html").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_page_has_figures_glued_numbers_and_exercises(built_book, path):
    page = (built_book / path.relative_to(ROOT).with_suffix(".html")).read_text()
    assert "{glue" not in page, "a glue reference was not replaced"
    assert re.search(r'<img [^>]*src="[^"]+\.png"', page), "no figure on the page"
    assert "Exercise" in page and "solution" in page
    assert "colab.research.google.com" in page


def test_gelu_page_shows_the_fitted_constants(built_book):
    page = (built_book / "book/part1-building-blocks/gelu.html").read_text()
    assert re.search(r"0\.04471\d+", page)
    assert re.search(r"1\.70\d+", page)


def solution_probes(path):
    """Lines of code that a chapter has only inside its gated solutions (one per solution code cell)."""
    inside, in_solution, outside = False, [], []
    for cell in load(path)["cells"]:
        text = source(cell)
        if cell["cell_type"] == "markdown":
            # A markdown cell may end one solution and start the next; the last marker wins.
            markers = re.findall(r"\{solution-(start|end)\}", text)
            if markers:
                inside = markers[-1] == "start"
        elif cell["cell_type"] == "code":
            (in_solution if inside else outside).append(text)
    seen_outside = {line.strip() for text in outside for line in text.splitlines()}
    probes = []
    for text in in_solution:
        lines = [line.strip() for line in text.splitlines()
                 if len(line.strip()) > 25 and line.strip() not in seen_outside and not line.strip().startswith("#")]
        if lines:
            probes.append(max(lines, key=len))
    return probes


def page_text(page):
    """The text a reader sees: tags dropped and entities decoded (code keeps its characters)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.fixture(scope="module")
def student_book(tmp_path_factory):
    """Build the student edition as `make student` does: the same config with hide_solutions true."""
    output = tmp_path_factory.mktemp("student")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["sphinx"]["config"]["hide_solutions"] = True
    # Local extensions are found relative to the config file, which now lives elsewhere.
    config["sphinx"]["local_extensions"] = {name: str(ROOT / folder)
                                            for name, folder in config["sphinx"]["local_extensions"].items()}
    (output / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True))
    command = [str(pathlib.Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT),
               "--config", str(output / "_config.yml"), "--path-output", str(output), "-W", "-n", "--keep-going"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    yield output / "_build" / "html"
    shutil.rmtree(output, ignore_errors=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_edition_keeps_exercises_and_drops_solutions(built_book, student_book, path):
    relative = path.relative_to(ROOT).with_suffix(".html")
    teacher, student = (built_book / relative).read_text(), (student_book / relative).read_text()
    exercises = teacher.count('class="exercise admonition"')
    assert exercises >= 2
    assert student.count('class="exercise admonition"') == exercises
    assert teacher.count('class="solution dropdown admonition"') == exercises
    assert not [names for names in re.findall(r'class="([^"]*)"', student) if "solution" in names.split()]
    probes = solution_probes(path)
    assert probes, "no solution code found in the notebook"
    for probe in probes:
        assert probe in page_text(teacher), probe
        assert probe not in page_text(student), probe


def test_citations_tell_the_eight_articles_apart(built_book):
    pages = [page.read_text() for page in built_book.glob("book/**/*.html")]
    labels = {label for page in pages for label in re.findall(r"Su, (2020\w?)\b", page)}
    assert "2020" not in labels, "an article is cited as plain 'Su, 2020'"
    references = page_text((built_book / "book/references.html").read_text())
    for word in ("GELUs", "BERT", "ALBERT", "CRF", "MEMM", "Transformer", "Chinese", "Markov"):
        assert re.search(rf"\b{word}\b", references), word
    assert not re.search(r"Published \d{4}-\d\d-\d\d", references)


def test_theme_chrome_one_search_field_an_author_line_and_the_book_css(built_book):
    page = (built_book / "book/part1-building-blocks/gelu.html").read_text()
    header = re.search(r'<header id="pst-header".*?</header>', page, flags=re.S).group(0)
    assert "search" not in header, "the theme's second search bar is back"
    assert page.count("search-button-field") == 1
    assert re.search(r"By the kexue2020-book contributors, from eight 2020 articles by Su Jianlin", page)
    assert "The book&#39;s authors" not in page and "The book's authors" not in page
    assert re.search(r'<link [^>]*href="\.\./\.\./_static/book\.css', page)
    css = (built_book / "_static" / "book.css").read_text()
    assert "table.table thead:not(:has(th > p:not(:empty)))" in css and "overflow-wrap: anywhere" in css
    # The summary card's empty header row is what that rule hides.
    assert re.search(r'<thead>\s*<tr class="row-odd"><th class="head"><p></p></th>\s*<th class="head"><p></p></th>',
                     page)


class _TableAncestors(html.parser.HTMLParser):
    """For every <table>, the classes of the elements it sits in."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.tables = [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag == "table":
            self.tables.append(set().union(*self.stack) if self.stack else set())
        self.stack.append(classes)

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()


def test_output_tables_are_styled_and_scroll_inside_the_column(built_book):
    css = (built_book / "_static" / "book.css").read_text()
    rules = dict(re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S)))
    rules = {selector.strip(): body for selector, body in rules.items()}
    wrapper = rules[".bd-content .bd-article .output.text_html"]
    assert "overflow-x: auto" in wrapper and "max-width: 100%" in wrapper
    cells = rules[".bd-content .bd-article .output.text_html table th,\n.bd-content .bd-article .output.text_html table td"]
    assert "padding: 0.3rem 0.75rem" in cells and "text-align: right" in cells and "border-bottom: 1px" in cells
    outputs = 0
    for path in NOTEBOOKS:
        parser = _TableAncestors()
        parser.feed((built_book / path.relative_to(ROOT).with_suffix(".html")).read_text())
        for ancestors in parser.tables:
            # Every table is either an output table (styled and scrolled by the rules above) or a prose
            # table in the theme's scrolling container.
            assert {"output", "text_html"} <= ancestors or "pst-scrollable-table-container" in ancestors
            outputs += {"output", "text_html"} <= ancestors
    assert outputs >= 40


def test_mathjax_is_bundled_and_no_page_loads_a_script_from_the_network(built_book):
    bundled = built_book / "_static" / "mathjax" / "tex-svg-full.js"
    assert bundled.stat().st_size > 1_000_000  # the whole of MathJax, not a pointer to it
    pages = sorted(built_book.glob("**/*.html"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        assert not re.search(r"""<script[^>]*\ssrc=["']?(https?:)?//""", text), page.name
        assert "mathjax@" not in text and "cdn.jsdelivr.net" not in text, page.name
    gelu = (built_book / "book/part1-building-blocks/gelu.html").read_text()
    assert re.search(r'<script defer="defer" src="\.\./\.\./_static/mathjax/tex-svg-full\.js(\?v=\w+)?"></script>', gelu)
    # MyST's MathJax configuration (which elements to typeset) is kept, and math is on the page.
    assert 'window.MathJax = {"options": {"processHtmlClass": "tex2jax_process|mathjax_process|math|output_area"}}' in gelu
    assert '<div class="math notranslate nohighlight">' in gelu


RAW_REPRS = ("<matplotlib", "dtype=", "dtype:", "Eq(", "np.float64(", "Name: ", "<IPython.core.display",
             "<pandas.io.formats.style.Styler")
"""What a Python object's repr leaves on a page where a figure, a typeset formula or a table belongs."""


class _OutputText(html.parser.HTMLParser):
    """The text of a page's cell outputs (``cell_output`` blocks), without the Python listings of ``show_source``.

    A listing is code the reader is meant to read (it may well say ``dtype=``); everything else in an output
    is a result, and a result is never a repr.
    """

    VOID = _TableAncestors.VOID

    def __init__(self):
        super().__init__()
        self.stack, self.outputs = [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        inside = any("cell_output" in entry for entry in self.stack)
        if "cell_output" in classes and not inside:
            self.outputs.append("")
        self.stack.append(classes)

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        inside = any("cell_output" in entry for entry in self.stack)
        listing = any("highlight-python" in entry or "highlight-ipython3" in entry for entry in self.stack)
        if inside and not listing:
            self.outputs[-1] += data


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_raw_python_reprs_on_any_page(built_book, path):
    parser = _OutputText()
    parser.feed((built_book / path.relative_to(ROOT).with_suffix(".html")).read_text())
    assert parser.outputs, "no cell outputs found: has myst-nb's HTML changed?"
    found = [f"{marker!r} in: {' '.join(text[max(0, text.index(marker) - 60):text.index(marker) + 60].split())}"
             for text in parser.outputs for marker in RAW_REPRS if marker in text]
    assert not found, f"raw Python reprs on {path.stem}.html:\n" + "\n".join(found)
