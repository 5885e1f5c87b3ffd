"""Runs one user tool `module:function` inside the sandbox (a subprocess of the agent).

Usage: python -m hetagent.tools._runner module:function RESULT_PATH  (arguments as JSON on stdin)

The arguments are validated against the function's hints (pydantic models are built from their
JSON), and the return value is written to RESULT_PATH as `{"value": ...}` (JSON-able via
pydantic) or `{"error": "..."}`; the traceback goes to stderr for the agent to read.
"""

from __future__ import annotations

import json
import sys
import traceback

from pydantic import validate_call
from pydantic_core import to_jsonable_python

from hetagent.tools.registry import load_function


def main() -> int:
    ref, result_path = sys.argv[1], sys.argv[2]
    try:
        arguments = json.load(sys.stdin)
        value = validate_call(load_function(ref))(**arguments)
        reply = {"value": to_jsonable_python(value, fallback=repr)}
        code = 0
    except Exception as exc:
        traceback.print_exc()
        reply = {"error": f"{ref}: {type(exc).__name__}: {exc}"}
        code = 1
    with open(result_path, "w") as f:
        json.dump(reply, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
