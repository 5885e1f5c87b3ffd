"""Random edits of the example documents, as data and as YAML text: the loader either accepts the
result or rejects it with located one-line issues; it never fails any other way."""

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetagent.documents import DocumentError, known_ids, load_file
from hetagent.spec import SpecError, parse_document

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*/*.yaml"))
TEXTS = [path.read_text() for path in EXAMPLES]
DOCUMENTS = [yaml.safe_load(text) for text in TEXTS]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        ["${inputs.x}", "${nodes.a.outputs.text}", "${", "$${", "512Mi", "llm", "h100"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def containers(data: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every dict and list inside `data` with its path."""
    found = []
    if isinstance(data, dict | list):
        found.append((path, data))
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for key, value in items:
            found += containers(value, (*path, key))
    return found


@st.composite
def mutated_documents(draw) -> dict:
    document = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(DOCUMENTS))))
    for _ in range(draw(st.integers(1, 4))):
        _, target = draw(st.sampled_from(containers(document)))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        action = draw(st.sampled_from(["replace", "delete", "add"] if keys else ["add"]))
        if action == "add":
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=12) | st.sampled_from(keys or ["x"]))] = (
                    draw(values)
                )
            else:
                target.append(draw(values))
        elif action == "delete":
            del target[draw(st.sampled_from(keys))]
        else:
            target[draw(st.sampled_from(keys))] = draw(values)
    return document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_examples_are_valid_or_rejected_with_paths(document):
    try:
        parse_document(document, known=known_ids())
    except SpecError as error:
        assert error.issues
        for issue in error.issues:
            assert issue.message
            # only a document that is not a mapping at all has no path to name
            assert issue.loc or not isinstance(document, dict)


def test_the_examples_are_loaded():
    assert len(DOCUMENTS) >= 9, "expected the example agents and clusters"


# YAML that has broken the loader before, or could: keys that are not strings, anchors and
# aliases (recursive, merged), tags, references, and characters YAML treats specially.
SNIPPETS = [
    "{[1, 2]: x}", "? [a]\n: b\n", "{1: x}", "{null: x}", "&a ", "*a", "&a [*a]", "<<: *a\n",
    "{<<: {k: 1}}", "!!binary x", "!!python/object:os.system x", "!!set {a}", "${", "$${",
    "${inputs.question}", "${nodes.x.outputs.text.y}", "[", "]", "{", "}", ": ", "- ", "? ", "|",
    ">", "'", '"', "#", "%YAML 1.1\n---\n", "---\n", "...\n", "\t", "\n", "  ", "\x00",
    "\x07", "\x85", "\u2028", "\ufeff", "\U0001f600", "\\u0000", "\\x", ".inf", ".nan",
    "true", "-0", "1e999", "9" * 40, "0x1f", "2001-12-14", "~", "512Mi", "500m", "nan",
]  # fmt: skip


@st.composite
def mutated_texts(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 40)))
        action = draw(st.sampled_from(["insert", "replace", "delete"]))
        new = draw(st.sampled_from(SNIPPETS) | st.text(max_size=6)) if action != "delete" else ""
        text = text[:start] + new + text[start if action == "insert" else end :]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_texts())
def test_mutated_example_texts_are_valid_or_rejected_on_located_single_lines(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_file(path)
        except DocumentError as error:
            assert error.issues
            for issue in error.issues:
                assert len(str(issue).splitlines()) == 1, str(issue)
                assert issue.issue.message
                assert issue.line or issue.issue.path, str(issue)
