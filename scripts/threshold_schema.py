"""Write the JSON Schema of threshold.json, generated from the pydantic model that reads it.

    python scripts/threshold_schema.py            # writes docs/threshold.schema.json
    python scripts/threshold_schema.py --check    # exit 1 if the file is stale

The schema is for other tools (a monitoring stack, a model registry); the service itself validates
through `service.bundle.Bundle`, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.bundle import FORMAT_VERSION, Bundle  # noqa: E402 (after the path set-up above)

SCHEMA_PATH = REPO / "docs" / "threshold.schema.json"


def schema_text() -> str:
    schema = Bundle.model_json_schema(mode="validation")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "threshold.schema.json",
        "title": f"threshold.json, bundle format {FORMAT_VERSION}",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the written schema is stale")
    args = parser.parse_args()
    text = schema_text()
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA_PATH} is stale: run `make schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
