"""The ``weightcodec`` command: argument parsing, progress and exit codes, nothing else.

Every command calls the Python API (:mod:`weightcodec.api`, :mod:`weightcodec.report`,
:mod:`weightcodec.pipelines`). Exit codes: 0 success, 1 a user error or a bad file (one line on
stderr), 2 bad arguments, 3 an internal error (a bug: rerun with ``--debug`` for the traceback),
130 interrupted. Outputs are written atomically, so a failed command leaves nothing half-written.

::

    weightcodec encode model.pt -o model.wcz --codec deep --clusters 16 --sparsity 0.8
    weightcodec encode model.safetensors -o model.wcz --size 10MB      (or --ratio 8)
    weightcodec encode model.safetensors -o model.wcz --size 10MB --calibrate calibration.safetensors
    weightcodec decode model.wcz -o restored.safetensors
    weightcodec decode model.wcz --onnx model.onnx -o compressed.onnx
    weightcodec inspect model.wcz [--json] [--plot bytes.png]
    weightcodec compress --recipe recipe.toml my_models:build --weights model.pt -o model.wcz
    weightcodec reproduce lenet300 --method deep --quick [--device cuda]
    torchrun --nproc_per_node 2 -m weightcodec reproduce lenet300 --quick

``reproduce`` and ``compress`` join the torchrun job they are started in
(:func:`weightcodec.distributed.launch`); only rank 0 prints and writes.

Each command imports what it uses when it runs, and each sub-command's options are added when
that command is parsed (:class:`_CommandParser`): parsing a ``decode`` command line imports
neither torch nor numba. :func:`console_main`, the
``weightcodec`` console script and ``python -m weightcodec``, ends the process without tearing
the interpreter down.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from . import __version__
from .errors import WeightcodecError

__all__ = ["main", "console_main", "build_parser"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# commands that import and run the user's code (model builders, training hooks): they end with a normal exit
RUNS_USER_CODE = ("compress",)
# encode's codec options, as (flag, recipe key); a flag left out keeps the recipe default
CODEC_OPTIONS = (("clusters", "clusters"), ("sparsity", "sparsity"), ("t", "t"), ("init", "init"),
                 ("filter", "filter"), ("entropy", "entropy"), ("index_bits", "index_bits"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = _parse(argv)
    return args if isinstance(args, int) else _run(args)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of ``--help`` or of a usage error argparse already printed."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code, after one line on stderr for an error."""
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("weightcodec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except WeightcodecError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        if args.debug:
            raise
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
        return EXIT_ERROR
    except Exception as exc:  # a bug: say so in one line, the traceback is one flag away
        if args.debug:
            raise
        _error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it")
        return EXIT_BUG
    return EXIT_OK


def console_main() -> NoReturn:
    """The ``weightcodec`` console script and ``python -m weightcodec``: :func:`main`, then end the process.

    The process ends with :func:`os._exit` instead of a normal interpreter exit, whose teardown
    of torch and numba (modules, objects, threads' states) takes about a second after the work
    is done. Nothing is lost: every output was written through an atomic writer, so it is
    closed and renamed (in the operating system's hands, as after a normal exit) before the
    command returns; the ``atexit`` callbacks (logging, multiprocessing, temporary folders,
    numba, tqdm) run here, then stdout and stderr are flushed. What is skipped is the freeing
    of memory, which the operating system does at once, and the joining of threads, none of
    which has work left that anyone reads (a decode still running after an error or an
    interrupt is stopped). Commands that run the user's code (:data:`RUNS_USER_CODE`: a
    training hook may leave a file open, which only the teardown closes) exit normally.
    Measured: ``benchmarks/results/decode-cli.md``. :func:`main` itself returns, for callers
    in a Python process.
    """
    args = _parse(None)
    code = args if isinstance(args, int) else _run(args)
    if not isinstance(args, int) and args.command in RUNS_USER_CODE:
        sys.exit(code)
    atexit._run_exitfuncs()  # as a normal exit does first; then the streams, which they may have written to
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: as main does, quietly
        code = code or EXIT_ERROR
    sys.stderr.flush()
    os._exit(code)


def _error(message: str) -> None:
    print(f"weightcodec: error: {' '.join(message.split())}", file=sys.stderr)


def _say(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------- parser


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser whose options are added when that command is parsed or its help shown.

    ``add_options(parser)`` imports what the options name (codec choices, model names), so a
    command pays only for its own imports: ``decode``'s options import nothing heavy.
    """

    def __init__(self, *args, add_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_options = add_options

    def _complete(self) -> None:
        if self._add_options is not None:
            add, self._add_options = self._add_options, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per verb, ``--quiet`` / ``--debug`` on each."""
    parser = argparse.ArgumentParser(
        prog="weightcodec", description="Shrink trained PyTorch models into one small .wcz file, and back."
    )
    common = argparse.ArgumentParser(add_help=False)
    for flags_of in (parser, common):
        # the sub-commands' copies default to SUPPRESS, so they never undo a flag given before the command
        default = False if flags_of is parser else argparse.SUPPRESS
        flags_of.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress bars")
        flags_of.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"weightcodec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    commands.add_parser(
        "encode", parents=[common], add_options=_encode_options,
        help="compress a state_dict file (.pt / .safetensors) data-free",
        description="Encode every tensor with >= 2 dims with the codec; others are stored raw. A tensor "
        "with at most K distinct non-zero values is stored as is (lossless); others are pruned by "
        "magnitude (--sparsity) and clustered to K values first. Give codec options or --recipe.",
    )
    commands.add_parser("decode", parents=[common], add_options=_decode_options,
                        help="restore a state_dict (or an ONNX model) from a .wcz file")
    commands.add_parser("inspect", parents=[common], add_options=_inspect_options,
                        help="show where the bytes of a .wcz file go")
    commands.add_parser(
        "compress", parents=[common], add_options=_compress_options,
        help="compress a model with a recipe (and its training hook)",
        description="MODEL is a state_dict file, or a 'module:function' that builds the nn.Module "
        "(searched in the recipe's folder and the working folder); a recipe with a training hook needs the latter.",
    )
    commands.add_parser("reproduce", parents=[common], add_options=_reproduce_options,
                        help="run a paper's pipeline on LeNet and MNIST")
    return parser


def _encode_options(p: argparse.ArgumentParser) -> None:
    from . import api
    from .codecs import deep, weightless
    from .recipe import METHODS
    from .simplify import cluster

    p.add_argument("input", type=Path, help="state_dict file: .pt/.pth (read with weights_only=True) or .safetensors")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .wcz file to write")
    p.add_argument("--codec", choices=list(METHODS), help="codec for the tensors with >= 2 dims")
    p.add_argument("--clusters", "-k", type=int, help="K shared values per tensor (default 32)")
    p.add_argument("--sparsity", type=float, help="fraction of weights pruned by magnitude, in [0, 1) (default 0)")
    p.add_argument("--t", type=int, help="weightless: bits per filter cell (required); zeros decode non-zero with probability K / 2**t")
    p.add_argument("--filter", help=f"weightless: retrieval filter, one of {', '.join(weightless.FILTER_CHOICES)} "
                   f"(default {weightless.DEFAULT_FILTER}: build each, keep the smallest)")
    p.add_argument("--entropy", help=f"deep: entropy coder of both streams, one of {', '.join(sorted(deep.ENTROPY_CODERS))}, "
                   f"or {api.AUTO_ENTROPY} (default: each, keeping the smaller)")
    p.add_argument("--index-bits", type=_index_bits, help="deep: gap field width in bits, or 'auto'")
    p.add_argument("--init", help=f"k-means initialisation, one of {', '.join(sorted(cluster.INITS))} (default linear)")
    p.add_argument("--recipe", type=Path, help="a TOML recipe instead of the codec options")
    p.add_argument("--size", type=_size, help="byte budget for the whole file (10MB, 10M, 10485760, 9.5MiB): "
                   "each tensor's quantizer and step are chosen for the least weight error that fits")
    p.add_argument("--ratio", type=float, help="like --size, as the input's bytes divided by RATIO")
    p.add_argument("--calibrate", type=Path, metavar="FILE",
                   help="with --size/--ratio: weight each layer's error by its inputs' statistics, from FILE "
                   "(.safetensors written by weightcodec.save_calibration(weightcodec.calibration_statistics(model, "
                   "inputs), FILE); see docs/allocation.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of random choices (default 0)")
    _add_jobs(p, "encode")
    p.set_defaults(run=_run_encode)


def _decode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="the .wcz file")
    p.add_argument("-o", "--output", type=Path, required=True, help="OUT.pt, OUT.safetensors, or OUT.onnx with --onnx")
    p.add_argument("--onnx", type=Path, metavar="MODEL.onnx",
                   help="write the weights into this ONNX graph's initializers (matched by name)")
    _add_max_memory(p, "a file is refused before anything is decoded if the tensors held at once (the --jobs "
                       "largest, each decoded straight into the output file; all of them with --onnx) need more")
    _add_jobs(p, "decode")
    p.set_defaults(run=_run_decode)


def _add_jobs(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--jobs", "-j", type=_positive_int, default=1,
        help=f"{verb} this many tensors at once, on threads (default 1; memory grows with it; the output does not change)",
    )


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="the .wcz file")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="draw bytes per tensor and weight histograms")
    _add_max_memory(p, "a tensor that decodes to more gets only its header's figures")
    p.set_defaults(run=_run_inspect)


def _add_max_memory(p, effect: str) -> None:
    p.add_argument("--max-memory", type=_byte_size, metavar="SIZE",
                   help=f"memory budget of the decoded tensors, like 2G, 512M or plain bytes (default: the "
                   f"memory available); {effect}")


def _compress_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="state_dict file, or module:function returning the model")
    p.add_argument("--recipe", type=Path, required=True, help="the TOML recipe")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .wcz file to write")
    p.add_argument("--weights", type=Path, help="state_dict file loaded into the model built by module:function")
    p.add_argument("--seed", type=int, default=0, help="seed of random choices (default 0)")
    p.add_argument("--target-error", type=float, metavar="E",
                   help="search per layer for the smallest file whose error on the recipe's [auto] evaluate "
                   "function stays within E percent (needs the training hook, [auto] evaluate and n_valid; one process, CPU)")
    _add_device(p, "the training hook's model")
    p.set_defaults(run=_run_compress)


def _reproduce_options(p: argparse.ArgumentParser) -> None:
    from .pipelines.models import MODELS
    from .pipelines.reproduce import METHODS, THREADS

    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument(
        "--method",
        choices=sorted(METHODS),
        default="deep",
        help="deep: Deep Compression; weightless: Weightless on the largest layer; weightless-all: on every layer",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run (under two minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and k-means (default 0)")
    p.add_argument("--data", type=Path, help="your MNIST (IDX folder or .npz) instead of the packaged copy")
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"),
                   help="folder of the JSON and .wcz written (default benchmarks/results)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=THREADS,
        help=f"PyTorch CPU threads while it runs (default {THREADS}: the same file on every machine; "
        "another count may give another file)",
    )
    _add_device(p, "training, pruning and clustering")
    p.set_defaults(run=_run_reproduce)


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    from .distributed import DEVICES

    p.add_argument(
        "--device", choices=DEVICES, default="auto",
        help=f"where {what} run (default auto: cuda when PyTorch sees a GPU); the codecs always run on the CPU",
    )


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


BYTE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _byte_size(text: str) -> int:
    """An argparse type: bytes as ``123``, ``512K``, ``512M``, ``2G``, ``1.5T`` (powers of 1024; ``B``/``iB`` optional)."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in BYTE_UNITS else ""
    try:
        value = float(number[: len(number) - len(unit)])
    except ValueError:
        value = -1.0
    if not 0 <= value < 2**63 / BYTE_UNITS[unit]:
        raise argparse.ArgumentTypeError(f"expected a size like 2G, 512M or a number of bytes, got {text!r}")
    return int(value * BYTE_UNITS[unit])


def _index_bits(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


# ----------------------------------------------------------------------------- commands


def _run_encode(args: argparse.Namespace) -> None:
    from . import api, container, report
    from .recipe import METHODS, load_recipe, recipe_from_options

    options = {key: getattr(args, flag) for flag, key in CODEC_OPTIONS}
    given = [f"--{flag.replace('_', '-')}" for flag, key in CODEC_OPTIONS if options[key] is not None]
    if args.codec is not None:
        given.insert(0, "--codec")
    if args.size is not None or args.ratio is not None:
        _run_encode_to_size(args, given + (["--recipe"] if args.recipe else []))
        return
    if args.calibrate is not None:
        raise WeightcodecError("--calibrate weights the errors of a rate allocation: give it with --size BYTES or --ratio R")
    if args.recipe is not None and given:
        raise WeightcodecError(f"give either --recipe or --codec with its options, not both (got --recipe and {', '.join(given)})")
    if args.recipe is None and args.codec is None:
        raise WeightcodecError(f"give --codec {{{','.join(METHODS)}}} (or --recipe R.toml)")
    if args.recipe is None and args.codec == "weightless" and args.t is None:
        raise WeightcodecError(
            "--codec weightless needs --t T, the bits per filter cell: a pruned weight decodes non-zero "
            "with probability K / 2**T (e.g. --t 10 with the default 32 clusters: 3.1 %)"
        )
    recipe = load_recipe(args.recipe) if args.recipe else recipe_from_options(args.codec, **options)
    api.compress_file(args.input, recipe, args.output, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    _say(f"wrote {args.output}: {report.headline(container.read(args.output))}")


def _run_compress(args: argparse.Namespace) -> None:
    import torch

    from . import api, distributed
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.target_error is not None or recipe.auto is not None:
        _run_compress_to_error(args, recipe)
        return
    with distributed.launch(args.device) as runtime:
        model = api.load_model(args.model, weights=args.weights, search=[recipe.folder, Path.cwd()])
        if isinstance(model, torch.nn.Module):  # every rank starts from rank 0's weights, on the job's device
            distributed.broadcast_module_(model.to(runtime.device))
        output = args.output if runtime.is_main else None
        data = api.compress(model, recipe, output, seed=args.seed, progress=not args.quiet and runtime.is_main)
        distributed.check_identical({"the file": data}, "compress")
        if runtime.is_main:
            _write(data, args.output)


def _run_compress_to_error(args: argparse.Namespace, recipe) -> None:
    """``compress --target-error``: the automatic search, in this one process, on the CPU."""
    from . import api
    from .pipelines.auto_model import compress_to_error

    model = api.load_model(args.model, weights=args.weights, search=[recipe.folder, Path.cwd()])
    result = compress_to_error(model, recipe, args.output, target_error=args.target_error, seed=args.seed,
                               progress=not args.quiet)  # fmt: skip
    _write(result["data"], args.output)
    _say(f"validation error {result['valid_error']:.2f} % (target {result['target_error']:.2f} %, budget "
         f"{result['valid_budget']:.2f} %; baseline {result['baseline_valid_error']:.2f} %)")


def _write(data: bytes, path: Path) -> None:
    from . import container, report

    _say(f"wrote {path}: {report.headline(container.from_bytes(data))}")


def _run_encode_to_size(args: argparse.Namespace, given: list[str]) -> None:
    if given:
        raise WeightcodecError(f"--size / --ratio choose the codecs themselves; drop {', '.join(given)}")
    if args.size is not None and args.ratio is not None:
        raise WeightcodecError("give either --size or --ratio, not both")
    from . import state_files
    from .allocate import encode_to_size
    from .calibration_file import load_calibration

    calibration = load_calibration(args.calibrate) if args.calibrate is not None else None
    state = state_files.load_state_dict(args.input)
    result = encode_to_size(state, args.output, size=args.size, ratio=args.ratio, calibration=calibration, seed=args.seed,
                            progress=not args.quiet)
    _say(f"wrote {args.output}: {result['file_bytes']} bytes (budget {result['budget']}), "
         f"relative weight error {result['relative_error']:.4f}, {result['seconds']:.1f} s")


def _size(text: str) -> int:
    from .allocate import parse_size

    try:
        return parse_size(text)
    except WeightcodecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_decode(args: argparse.Namespace) -> None:
    if args.onnx is None:
        from . import api

        api.decompress_file(args.input, args.output, jobs=args.jobs, max_bytes=args.max_memory, progress=not args.quiet)
        _say(f"wrote {args.output}")
        return
    from . import container
    from .onnx_export import export_onnx

    if args.output.suffix != ".onnx":
        raise WeightcodecError(f"{args.output}: with --onnx the output must be an .onnx file")
    left_out = export_onnx(container.read(args.input), args.onnx, args.output, max_bytes=args.max_memory)
    _say(f"wrote {args.output}")
    if left_out:
        _say(f"note: {len(left_out)} raw tensors have no initializer in {args.onnx} and were left out: {', '.join(left_out)}")


def _run_inspect(args: argparse.Namespace) -> None:
    from . import container, report

    wcz = container.read(args.input)
    summary = report.summarize(wcz, max_bytes=args.max_memory)
    _say(json.dumps(summary, indent=2) if args.json else f"{args.input}: {report.headline(wcz)}\n\n{report.format_table(summary)}")
    if args.plot is not None:
        report.plot(wcz, summary, args.plot, max_bytes=args.max_memory)
        if not args.json:
            _say(f"wrote {args.plot}")


def _run_reproduce(args: argparse.Namespace) -> None:
    from . import distributed
    from .pipelines.reproduce import format_summary, reproduce

    with distributed.launch(args.device) as runtime:
        result = reproduce(
            args.model, args.method, quick=args.quick, seed=args.seed, progress=not args.quiet, data=args.data,
            threads=args.threads, results_dir=args.results_dir,
        )
        if runtime.is_main:
            _say(format_summary(result))

