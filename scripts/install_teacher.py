"""Install trained teacher weights as the preset's shipped package data (``src/lite3r/models/weights/``).

FOLDER is the output of ``lite3r train-teacher --out FOLDER`` (or the GPU suite's ``teacher`` folder): it must
hold ``<model>.safetensors`` (or its pieces ``<model>.safetensors.part0``, ``.part1``, ... in order) and its
weight card ``<model>.json``. The card must name the preset and carry the file's SHA-256, the file must fit in
package data and load strictly into the preset; only then are both written (together) into place, after
which ``lite3r.load_model("vggt-small")`` loads them by default.

    python3 scripts/install_teacher.py out/teacher
"""

from __future__ import annotations

import argparse
import json
import sys

from lite3r.models import CheckpointError
from lite3r.models._pretrained import install_weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder with <model>.safetensors and <model>.json")
    parser.add_argument("--model", default="vggt-small", help="preset whose shipped weights these are")
    args = parser.parse_args()
    try:
        files, card = install_weights(args.folder, args.model)
    except (CheckpointError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    held_out = card.get("held_out", {}).get("final", {})
    print(f"{args.model}: {card.get('steps')} steps, {card.get('device')}, {card.get('date')}; held-out "
          + ", ".join(f"{k} {v:.4g}" for k, v in held_out.items()))
    for path in files:
        print(f"installed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
