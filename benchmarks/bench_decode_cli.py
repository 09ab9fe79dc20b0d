"""Decoding a large weightless layer through the command line, against the cost of merely saving it.

The layer: VGG-16 FC-6 sized, 25088 x 4096 float32 (411 MB), 4 % non-zero, 32 cluster values,
encoded with the weightless codec (ribbon filter, t = 8). Four commands, each in a fresh
Python process, timed from outside (wall clock, process start and imports included), in turns,
``--repeat`` rounds:

* ``floor``: ``python -c "import torch; torch.save({'fc6.weight': torch.zeros(25088, 4096)}, 'floor.pt')"``,
  the least any decoder that writes this ``.pt`` must cost (start Python, import torch, fill
  411 MB, write it, exit);
* ``decode``: ``weightcodec decode f.wcz -o f.pt``, as the console script runs it
  (:func:`weightcodec.cli.console_main`, which skips the interpreter's teardown);
* ``decode, normal exit``: the same through :func:`weightcodec.cli.main` and ``sys.exit``. Both
  print the time at their last exit callback, so the exit itself (the teardown, or what is left
  of it) is timed apart from the work, which a busy machine makes noisier;
* ``load``: ``weightcodec.load("f.wcz")`` in a fresh process, timed inside it after the imports.

Targets: ``decode`` within 1.0 s of ``floor`` (difference of the medians) and ``load`` within 1.0 s.
numba's compiled code and Python's bytecode are cached on disk by a first, untimed decode (as
after any first use; ``PYTHONDONTWRITEBYTECODE``, which a sandbox may set, is dropped for the
commands so that weightcodec's modules are not compiled again in every process). A breakdown
of the decode command, in a fresh process: its steps one after another; and of load(): three
calls in one fresh process (the first pays numba's set-up, the first two new memory, the third
only the decode). The machine is shared
with other jobs: the load average is recorded, and only figures of the same run are compared.

Writes ``benchmarks/results/decode-cli.json`` and ``decode-cli.md``::

    python benchmarks/bench_decode_cli.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, machine_line, synthetic_layer, write_results

from weightcodec import api

SHAPE, DENSITY, CLUSTERS, T = (25088, 4096), 0.04, 32, 8
TARGET_DIFFERENCE_S, TARGET_LOAD_S = 1.0, 1.0
ROOT = Path(__file__).resolve().parent.parent
# The console script, and the same with a normal interpreter exit. Each prints the wall-clock time at its last
# exit callback (registered first, so run last), when the work is done: the process' end minus it is the exit.
EXIT_STAMP = "import atexit, sys, time; atexit.register(lambda: print(time.time(), flush=True)); "
CLI = EXIT_STAMP + "from weightcodec.cli import console_main; sys.exit(console_main())"
CLI_NORMAL_EXIT = EXIT_STAMP + "from weightcodec.cli import main; sys.exit(main())"
LOAD = (
    "import sys, time; from weightcodec import load; t, c = time.perf_counter(), time.process_time(); load(sys.argv[1]); "
    "print(time.perf_counter() - t, time.process_time() - c)"
)
# The decode command's steps, timed inside one fresh process: where the difference to the floor goes.
PHASES = """
import json, sys, time
marks = [time.perf_counter()]
import torch
marks.append(time.perf_counter())
from weightcodec import api, cli, container, state_files, tensors
marks.append(time.perf_counter())
wcz = container.read(sys.argv[1])
name = wcz.records[0].name
with state_files.write_state_dict(sys.argv[2], {name: torch.empty(wcz.records[0].shape, device="meta")}) as writer:
    marks.append(time.perf_counter())
    writer.fill(name, lambda target: tensors.decode_into(wcz, name, target))
    marks.append(time.perf_counter())
marks.append(time.perf_counter())
names = ["import torch", "import weightcodec's CLI and API", "read the .wcz, lay out the .pt and reserve its blocks",
         "decode into the mapped file (numba's set-up, the kernel, page faults, CRC-32)", "set the CRCs, close and rename"]
print(json.dumps(dict(zip(names, (b - a for a, b in zip(marks, marks[1:]))))))
"""
# load() three times in one fresh process: what its first call costs beyond the kernel. The second call's
# output is new memory too (the first result is still held); the third reuses the memory the process just freed.
LOAD_CALLS = """
import json, sys, time
from weightcodec import load
def timed():
    start = time.perf_counter()
    state = load(sys.argv[1])
    return time.perf_counter() - start, state
first, a = timed()
second, b = timed()
del a, b
third, c = timed()
print(json.dumps({"first call": first, "second call, new memory": second, "third call, memory just freed": third}))
"""
FLOOR = "import sys, torch; torch.save({'fc6.weight': torch.zeros(%d, %d)}, sys.argv[1])" % SHAPE


def run(args: list[str]) -> tuple[float, float, str]:
    """Run ``python ARGS`` with this checkout's sources; (wall seconds, CPU seconds, stdout).

    CPU seconds (user + system, all threads) are the work done, which a busy machine does not
    inflate as it does the wall clock.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT / "src")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"python {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    info = machine()
    recipe = {"rule": [{"match": "*", "method": "weightless", "clusters": CLUSTERS, "t": T, "filter": "ribbon"}]}
    with tempfile.TemporaryDirectory(prefix="weightcodec-decode-", dir="/tmp") as tmp:
        folder = Path(tmp)
        wcz, out, floor = folder / "f.wcz", folder / "f.pt", folder / "floor.pt"
        layer = torch.from_numpy(synthetic_layer(SHAPE, DENSITY, CLUSTERS, seed=0))
        api.compress({"fc6.weight": layer}, recipe, wcz)
        run(["-c", CLI, "decode", str(wcz), "-o", str(out), "-q"])  # fills numba's and Python's caches (untimed)
        exact = torch.equal(torch.load(out, weights_only=True)["fc6.weight"], api.load(wcz)["fc6.weight"])
        del layer
        phases = [json.loads(run(["-c", PHASES, str(wcz), str(folder / "phases.pt")])[2]) for _ in range(args.repeat)]
        load_calls = [json.loads(run(["-c", LOAD_CALLS, str(wcz)])[2]) for _ in range(args.repeat)]
        commands = {
            "floor": ["-c", FLOOR, str(floor)],
            "decode": ["-c", CLI, "decode", str(wcz), "-o", str(out), "-q"],
            "decode_normal_exit": ["-c", CLI_NORMAL_EXIT, "decode", str(wcz), "-o", str(out), "-q"],
        }
        times = {name: [] for name in [*commands, "load"]}
        cpu = {name: [] for name in times}
        exits = {"decode": [], "decode_normal_exit": []}
        for _ in range(args.repeat):
            for name, command in commands.items():
                wall, work, printed = run(command)
                if name in exits:
                    exits[name].append(time.time() - float(printed.split()[-1]))
                times[name].append(wall)
                cpu[name].append(work)
            wall, work = map(float, run(["-c", LOAD, str(wcz)])[2].split())
            times["load"].append(wall)
            cpu["load"].append(work)
        wcz_bytes, out_bytes = wcz.stat().st_size, out.stat().st_size
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    report = {
        "machine": info,
        "layer": {"shape": list(SHAPE), "density": DENSITY, "clusters": CLUSTERS, "t": T, "filter": "ribbon",
                  "wcz_bytes": wcz_bytes, "pt_bytes": out_bytes},
        "runs_s": times,
        "median_s": medians,
        "cpu_runs_s": cpu,
        "cpu_median_s": cpu_medians,
        "cpu_decode_minus_floor_s": cpu_medians["decode"] - cpu_medians["floor"],
        "decode_minus_floor_s": medians["decode"] - medians["floor"],
        "decode_over_floor": medians["decode"] / medians["floor"],
        "targets": {"decode_minus_floor_s": TARGET_DIFFERENCE_S, "load_s": TARGET_LOAD_S},
        "decoded_pt_equals_load": exact,
        "exit_runs_s": exits,
        "exit_median_s": {name: statistics.median(v) for name, v in exits.items()},
        "decode_phases_median_s": {name: statistics.median(p[name] for p in phases) for name in phases[0]},
        "load_calls_median_s": {name: statistics.median(c[name] for c in load_calls) for name in load_calls[0]},
        "load_average_at_end": os.getloadavg(),
    }
    write_results("decode-cli", report, markdown(report))


def markdown(r: dict) -> str:
    m, d, c = r["median_s"], r["decode_minus_floor_s"], r["cpu_median_s"]
    runs = r["runs_s"]
    e = r["exit_median_s"]
    return "\n".join([
        "# Decoding a VGG-16 FC-6-sized weightless layer through the command line",
        "",
        machine_line(r["machine"]) + f" Load average at the end {r['load_average_at_end'][0]:.2f} (1 min): the machine "
        "is shared, so only figures of this run are compared with each other.",
        "",
        f"Layer {r['layer']['shape'][0]} x {r['layer']['shape'][1]} float32, {r['layer']['density']:.0%} non-zero, "
        f"{r['layer']['clusters']} values, weightless codec with the ribbon filter, t = {r['layer']['t']}: "
        f"{r['layer']['wcz_bytes']:,} bytes of .wcz, {r['layer']['pt_bytes']:,} bytes of .pt. Each command in a fresh "
        f"process, in turns, {len(runs['floor'])} rounds; medians. Written by `benchmarks/bench_decode_cli.py`.",
        "",
        "| command | median wall s | wall s of each run | median CPU s (all threads) |",
        "|---|---:|---|---:|",
        f"| floor: `torch.save` of zeros of the same shape | {m['floor']:.2f} | {', '.join(f'{x:.2f}' for x in runs['floor'])} | {c['floor']:.2f} |",
        f"| `weightcodec decode f.wcz -o f.pt` | {m['decode']:.2f} | {', '.join(f'{x:.2f}' for x in runs['decode'])} | {c['decode']:.2f} |",
        f"| the same, with a normal interpreter exit (`cli.main()`) | {m['decode_normal_exit']:.2f} | "
        f"{', '.join(f'{x:.2f}' for x in runs['decode_normal_exit'])} | {c['decode_normal_exit']:.2f} |",
        f"| `weightcodec.load(f.wcz)` after imports | {m['load']:.2f} | {', '.join(f'{x:.2f}' for x in runs['load'])} | {c['load']:.2f} |",
        "",
        f"decode - floor = **{d:.2f} s** (target <= {r['targets']['decode_minus_floor_s']} s: {d <= r['targets']['decode_minus_floor_s']}); "
        f"decode / floor = {r['decode_over_floor']:.2f}. load() = **{m['load']:.2f} s** (target <= {r['targets']['load_s']} s: "
        f"{m['load'] <= r['targets']['load_s']}). In CPU seconds, which a busy machine inflates less: decode - floor = "
        f"{r['cpu_decode_minus_floor_s']:.2f} s. The decoded .pt equals `weightcodec.load`'s tensor: {r['decoded_pt_equals_load']}.",
        "",
        f"Where the decode command's time goes (its steps timed inside one fresh process, medians of {len(runs['floor'])}): "
        + "; ".join(f"{name} {s:.2f} s" for name, s in r["decode_phases_median_s"].items())
        + f". The exit, from the last exit callback to the process' end: {e['decode']:.2f} s for the "
        f"command, {e['decode_normal_exit']:.2f} s with a normal exit (the interpreter's teardown of torch and numba, "
        "which the command skips; difference of the medians of whole runs above: "
        f"{m['decode_normal_exit'] - m['decode']:.2f} s). The floor pays the torch import, a save of the same bytes and its "
        "teardown too (it rewrites its file in place, while the decode writes a new file and renames it over the old "
        "one: atomic, and no cheaper); the rest is the decoder's: its imports (numba), numba's one-time set-up on the "
        "first call of a cached kernel in a process, and the ribbon kernel, which writes the layer straight into the "
        "output file's mapped bytes (no copy of the 411 MB in memory, no second write).",
        "",
        f"What limits load(): three calls in one fresh process (medians of {len(runs['floor'])}): "
        + "; ".join(f"{name} {s:.2f} s" for name, s in r["load_calls_median_s"].items())
        + ". The third call is the decode itself (the ribbon kernel on 2 threads, on pages the process has just "
        "freed); the second adds the first touch of 411 MB of new memory, which this virtual machine makes costly "
        "(page faults the host must back); the first adds numba's one-time set-up. Only the first call is the "
        "target's load().",
        "",
    ])


if __name__ == "__main__":
    main()
