"""Compile .proto files with grpcio-tools at test time, so tests can use grpcio (an independent
gRPC implementation) as the peer of dracpu's grpclib servers without committing generated code.

Modules are compiled once per (proto root, file) into a cache directory and imported under the
proto's own path (``k8s.io/x/api.proto`` → ``k8s.io.x.api_pb2``, as grpcio-tools lays it out).
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path
from types import ModuleType

from grpc_tools import protoc

_CACHE = Path.home() / ".cache" / "dracpu" / "grpcio-stubs"


def load_grpc_modules(proto_root: Path, proto_file: str) -> tuple[ModuleType, ModuleType]:
    """Return the ``(pb2, pb2_grpc)`` modules of ``proto_root/proto_file``.

    ``proto_file`` is relative to ``proto_root`` (the include path). Imports between protos are
    resolved on ``sys.path`` via the output directory, which is added to it.
    """
    source = (proto_root / proto_file).read_bytes()
    digest = hashlib.sha256(str(proto_root.resolve()).encode() + source).hexdigest()[:16]
    out = _CACHE / digest
    stem = proto_file[: -len(".proto")]
    module_base = stem.replace(".", "/").replace("/", ".").replace("-", "_")
    pb2_grpc = out / (module_base.replace(".", "/") + "_pb2_grpc.py")
    if not pb2_grpc.exists():
        out.mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"-I{include}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                proto_file,
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) for {proto_root / proto_file}")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return (
        importlib.import_module(f"{module_base}_pb2"),
        importlib.import_module(f"{module_base}_pb2_grpc"),
    )
