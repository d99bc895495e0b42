"""Where the real ToolBench / α-UMi sample files live (`../shared/fixtures` beside the checkout, see its README).

They are not part of the package: tests, benchmarks and the out-of-domain evaluation find them through
`UMI_FIXTURES`, or beside the checkout the code runs from, or beside the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def fixtures_dir() -> Path:
    if os.environ.get("UMI_FIXTURES"):
        return Path(os.environ["UMI_FIXTURES"])
    candidates = [
        Path(__file__).resolve().parents[2] / "shared" / "fixtures",
        Path.cwd().parent / "shared" / "fixtures",
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


FIXTURES_DIR = fixtures_dir()
TOOLBENCH_OOD_TEST = FIXTURES_DIR / "alpha-umi" / "toolbench_out_of_domain_test.json"
