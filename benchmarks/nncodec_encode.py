"""Encode a safetensors state_dict with NNCodec 2.1.3 at several QPs; write each bitstream and its reconstruction.

Runs inside NNCodec's own virtual environment (its dependencies pin ``numpy<2``, which clashes
with ours), never imports weightcodec, and is called by ``bench_real_model.py``::

    benchmarks/.venv-nncodec/bin/python benchmarks/nncodec_encode.py model.safetensors OUT --qp -38 -34

For every QP it writes ``OUT/qp<QP>.nnc`` (NNCodec's bitstream, the bytes the benchmark counts)
and ``OUT/qp<QP>.safetensors`` (the tensors decoded from that bitstream), and
``OUT/qp<QP>.json`` with its bytes, encode seconds (wall-clock and CPU) and decode seconds, and
the load average before the encode. Every floating tensor goes to NNCodec as NNCodec's own ``nncodec.nn.encode`` takes a
dict of arrays, with its defaults otherwise (uniform quantization, dependent quantization on,
DeepCABAC, 1-D tensors at ``nonweight_qp = -75``); integer buffers (``position_ids``) are not
given to it and are copied unchanged, and the benchmark counts their raw bytes beside the
bitstream.

With ``--codebook`` NNCodec codes each tensor in its codebook mode instead (``approx_method
'codebook'``, dependent quantization off): the tensor is put on the uniform grid of the QP, its
distinct grid values become a codebook, and the indices into it are coded with DeepCABAC
(NNCodec keeps uniform coding for a tensor where that is smaller). At a QP whose step is far
below the spacing of a clustered tensor's values this stores the clustered tensor almost
exactly: ``bench_lossless.py`` uses it to code the same clustered tensors as our deep codec.
Those files are named ``cb-qp<QP>.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def import_torchvision_or_stand_in() -> None:
    """Import torchvision, or put an empty stand-in under its name where it cannot load.

    NNCodec imports torchvision only for its image-classification use cases (datasets,
    transforms), never to code tensors. The torchvision wheel served for torch 2.13 on Linux is
    a CUDA build whose extension cannot load beside the CPU torch of this project's machines, so
    there the stand-in lets ``nncodec`` import; using what it builds raises.
    """
    try:
        import torchvision  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.models"):
            module = types.ModuleType(name)
            module.__getattr__ = _unavailable(name)
            sys.modules[name] = module
        for child in ("datasets", "transforms", "models"):
            setattr(sys.modules["torchvision"], child, sys.modules[f"torchvision.{child}"])


def _unavailable(module: str):
    def missing(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return type(attribute, (_Inert,), {"__module__": module})

    return missing


class _Inert:
    """What the stand-in gives for any name: a class that can be subclassed and instantiated
    (nncodec does both at import time) but whose instances cannot be used."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, attribute: str):
        raise RuntimeError(f"{type(self).__module__}.{type(self).__name__} is not available: torchvision could not load")


def encode_at(params: dict[str, np.ndarray], qp: int, out: Path, codebook: bool = False) -> dict:
    """Encode ``params`` at ``qp``, decode the bitstream back; write both; return the timings."""
    import_torchvision_or_stand_in()
    from nncodec.nn import decode, encode

    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:  # nncodec also writes its own copy of the bitstream there
        args = {"qp": qp, "verbose": False, "results": scratch}
        if codebook:
            args.update(approx_method="codebook", use_dq=False)
        start, cpu = time.perf_counter(), time.process_time()
        bitstream = encode(dict(params), args=args)
        encode_seconds, encode_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    decoded = decode(bitstream, args=args)
    decode_seconds = time.perf_counter() - start
    stem = f"cb-qp{qp}" if codebook else f"qp{qp}"
    (out / f"{stem}.nnc").write_bytes(bytes(bitstream))
    save_file({name: np.ascontiguousarray(decoded[name], dtype=np.float32) for name in params}, str(out / f"{stem}.safetensors"))
    return {"qp": qp, "codebook": codebook, "bytes": len(bitstream), "encode_seconds": encode_seconds, "encode_cpu_seconds": encode_cpu_seconds,
            "decode_seconds": decode_seconds,
            "load_average_before": load, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a .safetensors state_dict")
    parser.add_argument("out", type=Path, help="folder for the bitstreams, reconstructions and timings")
    parser.add_argument("--qp", type=int, nargs="+", required=True, help="NNCodec quantization parameters")
    parser.add_argument("--codebook", action="store_true", help="NNCodec's codebook mode (files cb-qp<QP>.*)")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(options.model))
    params = {name: array for name, array in tensors.items() if np.issubdtype(array.dtype, np.floating)}
    for qp in options.qp:
        run = {"nncodec": version("nncodec"), "numpy": np.__version__, **encode_at(params, qp, options.out, options.codebook)}
        (options.out / f"{'cb-' if options.codebook else ''}qp{qp}.json").write_text(json.dumps(run, indent=1) + "\n")


if __name__ == "__main__":
    main()
