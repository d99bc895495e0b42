"""`python -m flows FLOW PARAMS.json RESULT.json`: run glpft_pipeline or retrain_role with the keyword arguments in
PARAMS.json and write what it returns to RESULT.json. `umi run` starts the pipeline so: umi never imports flows."""

import importlib
import json
import sys
from pathlib import Path

from umi.atomic import write_json

if __name__ == "__main__":
    name, params, result = sys.argv[1:] if len(sys.argv) == 4 else ("", "", "")
    if name not in ("glpft_pipeline", "retrain_role"):
        raise SystemExit("usage: python -m flows glpft_pipeline|retrain_role PARAMS.json RESULT.json")
    flow = getattr(importlib.import_module(f"flows.{name}"), name)
    write_json(result, flow(**json.loads(Path(params).read_text())), default=str)
