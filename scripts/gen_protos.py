"""Regenerate the Python code beside protos/sandbox/v1/*.proto.

Run from anywhere: ``python scripts/gen_protos.py [OUT_DIR]``. With OUT_DIR the
generated files go there (the drift test uses this); otherwise into the tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "sandbox" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc with the Python, gRPC and mypy-stub generators; return the proto files."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return protos


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    generate(target)
    print(f"generated Python for {len(list(PROTO_DIR.glob('*.proto')))} proto files into {target}")
