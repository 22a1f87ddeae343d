"""The reproduction report (``book/reproduction.md``): the homeworks' numbers beside the book's.

The page is plain Markdown, not a notebook: every number and status on it is pasted from a chapter
with a cross-document glue role, ``{glue:text}`vae.md::subset_nelbo:.2f```. The strict build fails
when a pasted key is missing from that chapter's executed notebook; these tests catch it without
a build, by reading which keys each chapter's code cells glue, and check that nothing on the page
is typed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import pytest

from nbval_replay import BOOK, REPO, toc_files
from test_prose_numbers import DECIMAL, prose

PAGE = BOOK / "reproduction.md"

# a glue role of any kind: {glue}`...`, {glue:text}`...`, {glue:md}`...`
GLUE_ROLE = re.compile(r"\{glue(?::(\w+))?\}`([^`]*)`")
# a number typed into the prose: digits not inside a name (ROUGE-1, t5-small, A_3)
NUMBER = re.compile(r"(?<![\w.\-])[-+−]?\d[\d,]*(?:\.\d+)?(?![\w])")
ANY = "[A-Za-z0-9_]+"  # what an f-string's unresolved field may stand for in a key


# --- which keys a chapter glues ------------------------------------------------------------------

def _code_cells(chapter: Path) -> list[str]:
    cells = [c.source for c in jupytext.read(chapter).cells if c.cell_type == "code"]
    # IPython magics and shell escapes are not Python
    return ["\n".join("" if line.lstrip().startswith(("%", "!")) else line
                      for line in src.splitlines()) for src in cells]


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


class _Glued(ast.NodeVisitor):
    """The keys passed to ``glue`` (or to a function of the chapter that passes its first
    argument on to ``glue``, like ``put``): exact keys from string literals, and patterns from
    f-strings, whose fields are expanded where a loop binds them to literal values (``for k in
    ("kl", "rec")``, ``for k, v in REF.items()``, ``KEY3[s]`` with ``KEY3`` a literal dict) and
    stand for any identifier otherwise. A key passed as a variable counts when a loop binds the
    variable to literal values; otherwise it is not counted (so a test can only fail safe)."""

    def __init__(self, literals: dict[str, object], gluers: set[str]):
        self.literals, self.gluers = literals, gluers
        self.scopes: list[dict[str, list]] = [{}]
        self.exact: set[str] = set()
        self.patterns: list[re.Pattern] = []

    def bound(self, name: str):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def values(self, node) -> list | None:
        """The values an expression takes, when they are literal."""
        if isinstance(node, ast.Name):
            if self.bound(node.id) is not None:
                return self.bound(node.id)
            value = self.literals.get(node.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            # REF.items(), REF.keys(), REF.values() of a literal dict
            d = (self.literals.get(node.func.value.id)
                 if isinstance(node.func.value, ast.Name) else None)
            if not isinstance(d, dict) or node.args:
                return None
            return {"items": list(d.items()), "keys": list(d),
                    "values": list(d.values())}.get(node.func.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            inner = self.values(node.args[0]) if len(node.args) == 1 else None
            if inner is None:
                return None
            if node.func.id in ("sorted", "list", "tuple", "reversed"):
                return inner
            return list(enumerate(inner)) if node.func.id == "enumerate" else None
        else:
            value = _literal(node)
        if isinstance(value, dict):
            return list(value)
        if isinstance(value, (list, tuple, set, frozenset)):
            return list(value)
        return None

    def bind(self, target, values: list) -> dict[str, list]:
        if isinstance(target, ast.Name):
            return {target.id: values}
        if isinstance(target, (ast.Tuple, ast.List)):
            out = {}
            for i, elt in enumerate(target.elts):
                part = [v[i] for v in values if isinstance(v, (tuple, list)) and len(v) > i]
                out.update(self.bind(elt, part))
            return out
        return {}

    def visit_For(self, node):
        vals = self.values(node.iter)
        self.scopes.append(self.bind(node.target, vals) if vals is not None else {})
        for child in node.body:
            self.visit(child)
        self.scopes.pop()
        for child in node.orelse:
            self.visit(child)

    def field(self, node: ast.FormattedValue) -> str:
        """A regular expression for one field of an f-string."""
        if node.format_spec is None and node.conversion == -1:
            vals = None
            if isinstance(node.value, ast.Name):
                vals = self.bound(node.value.id)
            elif isinstance(node.value, ast.Subscript) and isinstance(node.value.value, ast.Name):
                d = self.literals.get(node.value.value.id)
                vals = list(d.values()) if isinstance(d, dict) else None
            if vals and all(isinstance(v, (str, int)) for v in vals):
                return "(?:" + "|".join(re.escape(str(v)) for v in vals) + ")"
        return ANY

    def visit_Call(self, node):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name in self.gluers and node.args:
            key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                self.exact.add(key.value)
            elif isinstance(key, ast.JoinedStr):
                rx = "".join(re.escape(part.value) if isinstance(part, ast.Constant)
                             else self.field(part) for part in key.values)
                self.patterns.append(re.compile(rx))
            elif isinstance(key, ast.Name) and self.bound(key.id):
                self.exact.update(str(v) for v in self.bound(key.id))
        self.generic_visit(node)


def glued_keys(chapter: Path) -> tuple[set[str], list[re.Pattern]]:
    """The keys a chapter's code cells glue: ``(exact keys, patterns)``."""
    trees = [ast.parse(src) for src in _code_cells(chapter)]
    literals: dict[str, object] = {}
    gluers = {"glue"}
    for tree in trees:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)):
                value = _literal(node.value)
                if value is not None:
                    literals[node.targets[0].id] = value
            # a wrapper: def put(name, value, ...): ... glue(name, ...)
            if isinstance(node, ast.FunctionDef) and node.args.args:
                first = node.args.args[0].arg
                if any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                       and c.func.id == "glue" and c.args and isinstance(c.args[0], ast.Name)
                       and c.args[0].id == first for c in ast.walk(node)):
                    gluers.add(node.name)
    visitor = _Glued(literals, gluers)
    for tree in trees:
        visitor.visit(tree)
    return visitor.exact, visitor.patterns


def is_glued(key: str, glued: tuple[set[str], list[re.Pattern]]) -> bool:
    exact, patterns = glued
    return key in exact or any(rx.fullmatch(key) for rx in patterns)


# --- what the page pastes ------------------------------------------------------------------------

def page_roles() -> list[tuple[str, str]]:
    """``(kind, content)`` of every glue role on the page (kind ``""`` for ``{glue}``)."""
    return [(m.group(1) or "", m.group(2)) for m in GLUE_ROLE.finditer(PAGE.read_text("utf-8"))]


def split_role(kind: str, content: str) -> tuple[str | None, str, str | None]:
    """``(document, key, format spec)`` as myst-nb reads the role: ``{glue:text}`` splits off
    the format spec at the last colon first, then the document at ``::``."""
    spec = None
    if kind == "text":
        parts = content.rsplit(":", 1)
        content, spec = parts if len(parts) == 2 else (content, "s")
    doc, sep, key = content.partition("::")
    return (doc, key, spec) if sep else (None, content, spec)


def cross_references() -> list[tuple[str, str]]:
    refs = []
    for kind, content in page_roles():
        doc, key, _ = split_role(kind, content)
        if doc is not None and (doc, key) not in refs:
            refs.append((doc, key))
    return refs


# --- the tests -----------------------------------------------------------------------------------

def test_the_page_is_in_the_back_matter_before_the_bibliography():
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    back = next(p for p in toc["parts"] if p["caption"] == "Back matter")
    files = [c["file"] for c in back["chapters"]]
    assert "book/reproduction" in files, files
    assert files.index("book/reproduction") < files.index("book/bibliography"), files
    assert PAGE in toc_files()
    body = PAGE.read_text("utf-8")
    assert body.startswith("(reproduction)=\n# "), "a label, then the title"


def test_every_paste_names_another_document_and_a_format():
    """A plain page has no glue data of its own: every role pastes from a chapter. And
    ``{glue:text}`` needs a format spec after a document's key: without one myst-nb splits
    ``vae.md::key`` at its last colon and looks for the key ``vae.md:`` in this page."""
    roles = page_roles()
    assert roles, "the page pastes its numbers"
    for kind, content in roles:
        assert kind in ("text", ""), f"{{glue:{kind}}} cannot paste from another document"
        doc, key, spec = split_role(kind, content)
        assert doc, f"{content!r}: no document (use `chapter.md::key`)"
        assert re.fullmatch(r"[A-Za-z_]\w*", key), f"{content!r}: not a glue key"
        if kind == "text":
            assert spec and re.fullmatch(r"[^:]*[a-zA-Z%]", spec), f"{content!r}: no format"


@pytest.mark.parametrize("doc,key", cross_references(),
                         ids=[f"{d}::{k}" for d, k in cross_references()])
def test_every_pasted_key_is_glued_by_its_chapter(doc, key):
    chapter = (PAGE.parent / doc).resolve()
    assert chapter.exists(), f"{doc}: no such page"
    assert chapter in [p.resolve() for p in toc_files()], f"{doc} is not in _toc.yml"
    assert is_glued(key, glued_keys(chapter)), f"{doc} glues no {key!r}"


def test_no_number_is_typed_into_the_page():
    text = prose(PAGE.read_text("utf-8"))
    decimals = [m.group(0) for m in DECIMAL.finditer(text)]
    assert not decimals, f"decimal numbers typed into the page (glue them): {decimals}"
    numbers = [m.group(0) for m in NUMBER.finditer(text)]
    assert not numbers, f"numbers typed into the page (glue them): {numbers}"


def test_every_row_links_to_a_section_that_exists():
    labels = set()
    for path in BOOK.glob("*.md"):
        text = path.read_text("utf-8")
        labels |= set(re.findall(r"^\(([\w-]+)\)=\s*$", text, flags=re.M))
    rows = [line for line in PAGE.read_text("utf-8").splitlines()
            if line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line)
            and not line.startswith("| Quantity")]
    assert rows
    for row in rows:
        targets = re.findall(r"\{ref\}`(?:[^`<]*<)?([\w-]+)>?`", row)
        assert targets, f"a row without a link to the chapter: {row[:80]!r}"
        assert set(targets) <= labels, set(targets) - labels


def test_the_key_reader_expands_loops_wrappers_and_dicts(tmp_path):
    chapter = tmp_path / "toy.md"
    chapter.write_text(
        "---\nkernelspec:\n  display_name: Python 3\n  language: python\n"
        "  name: python3\n---\n"
        "```{code-cell} ipython3\n"
        "%matplotlib inline\n"
        "REF = {'nelbo': 1, 'kl': 2}\n"
        "KEYS = {'a b': 'ab', 'c': 'c'}\n"
        "def put(name, value):\n    glue(name, round(value, 4), display=False)\n"
        "for k, (m, s) in REF.items():\n    glue(f'ref_{k}', m, display=False)\n"
        "for where in ('subset', 'test'):\n"
        "    for key in ('x', 'y'):\n        put(f'{where}_{key}', 1.0)\n"
        "for s in KEYS:\n    glue(f'cl_{KEYS[s]}', 1, display=False)\n"
        "for zd in sorted(by_z):\n    glue(f'z{zd}_k', 1, display=False)\n"
        "glues = {'n_a': 1, 'n_b': 2}\n"
        "for name, v in glues.items():\n    glue(name, v, display=False)\n"
        "put('plain', 3.0)\n"
        "```\n", encoding="utf-8")
    glued = glued_keys(chapter)
    for key in ("ref_nelbo", "ref_kl", "subset_x", "test_y", "cl_ab", "cl_c", "z64_k",
                "n_a", "n_b", "plain"):
        assert is_glued(key, glued), key
    for key in ("ref_rec", "subset_z", "train_x", "cl_d", "z64_j", "n_c", "plainer"):
        assert not is_glued(key, glued), key


def test_the_role_reader_splits_as_myst_nb_does():
    assert split_role("text", "vae.md::subset_nelbo:.2f") == ("vae.md", "subset_nelbo", ".2f")
    assert split_role("text", "key:.1f") == (None, "key", ".1f")
    assert split_role("", "vae.md::repro_kl") == ("vae.md", "repro_kl", None)
    # no format: myst-nb would look for "vae.md:" here
    assert split_role("text", "vae.md::repro_kl")[0] != "vae.md"
