"""Where the real ToolBench / α-UMi sample files live (`../shared/fixtures` beside the checkout, see its README).

They are not part of the package, and no production default points at them: tests and benchmarks find them through
`UMI_FIXTURES`, or beside the checkout, or beside the working directory. The evaluation reads the ToolBench
out-of-domain set from `UMI_FIXTURES` only (umi.eval.testsets.configured_toolbench_ood; `make run` sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

from umi.eval.testsets import FIXTURES_ENV, TOOLBENCH_OOD_FILE


def fixtures_dir() -> Path:
    if os.environ.get(FIXTURES_ENV):
        return Path(os.environ[FIXTURES_ENV])
    candidates = [
        Path(__file__).resolve().parents[3] / "shared" / "fixtures",
        Path.cwd().parent / "shared" / "fixtures",
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


FIXTURES_DIR = fixtures_dir()
TOOLBENCH_OOD_TEST = FIXTURES_DIR / TOOLBENCH_OOD_FILE
