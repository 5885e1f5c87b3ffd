"""The whole suite runs apart from the user's files: no calibration of theirs changes a result,
and nothing is written under their home directory (the CLI tests' subprocesses inherit this)."""

import os
import tempfile
from pathlib import Path

_scratch = Path(tempfile.mkdtemp(prefix="hetagent-tests-"))
os.environ["HETAGENT_EFFICIENCY"] = str(_scratch / "efficiency.csv")  # absent: packaged priors
os.environ["HETAGENT_HOST_PROBE"] = str(_scratch / "host-probe.json")
os.environ["HETAGENT_DB"] = f"sqlite:///{_scratch / 'runs.db'}"
os.environ["HETAGENT_WORKSPACES"] = str(_scratch / "workspaces")
os.environ["HETAGENT_INDEXES"] = str(_scratch / "indexes")

# CI runs the same examples every time, so a failure there is reproducible; developers' runs
# keep exploring new ones (hypothesis's default).
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    settings.load_profile("ci")
