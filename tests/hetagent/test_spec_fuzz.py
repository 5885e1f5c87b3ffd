"""Random edits of the example documents: the loader either accepts the result or rejects it with
located issues; it never fails any other way."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetagent.documents import known_ids
from hetagent.spec import SpecError, parse_document

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*/*.yaml"))
DOCUMENTS = [yaml.safe_load(path.read_text()) for path in EXAMPLES]

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
    pytest.importorskip("hypothesis")
