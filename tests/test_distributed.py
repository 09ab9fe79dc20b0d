"""Jobs of several processes (torchrun, gloo on CPU) and the ``--device`` choice.

The torchrun tests start real 2-process jobs on a free localhost port, one thread each, on a
small synthetic MNIST (``--data``), so they need neither a GPU nor the real data set.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from weightcodec import api, cli, container, distributed
from weightcodec.errors import WeightcodecError
from weightcodec.pipelines.models import build_model
from weightcodec.pipelines.training import ArrayLoader

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 <args>`` with one thread per process and its own cache folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WEIGHTCODEC_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(SRC), str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *map(str, args)]  # fmt: skip
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _synthetic_mnist(path: Path, n_train: int = 1200, n_test: int = 200) -> Path:
    """An .npz in MNIST's layout: class c is a bright bar on row 2c + 4 over faint noise."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n)
        x = (rng.random((n, 28, 28)) * 0.2).astype(np.float32)
        x[np.arange(n), 2 * y + 4, 4:24] = 1.0
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.reshape(n, 784), y
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------- single process


@pytest.mark.parametrize("n", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shard_follows_distributed_sampler(n, world_size):
    for rank in range(world_size):
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False)
        assert distributed.shard(torch.arange(n), rank=rank, world_size=world_size).tolist() == list(sampler)


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(WeightcodecError, match="rank 2 is outside a world of 2 processes"):
        distributed.shard(torch.arange(4), rank=2, world_size=2)


@pytest.mark.parametrize("batch_size", [4, 5])
def test_sharded_loader_steps_together_cover_the_single_process_batches(batch_size):
    x = np.random.default_rng(0).random((21, 784), dtype=np.float32)
    y = np.arange(21)
    whole = ArrayLoader(x, y, batch_size=batch_size, shuffle=True, seed=3, shift=2)
    ranks = [whole.sharded(rank, 2) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for epoch in range(2):
        steps = list(zip(*ranks))
        single = list(whole)
        for (x0, y0), (x1, y1) in steps[: len(single) - 1]:  # all but the padded last step
            images = {int(label): row for label, row in zip(torch.cat([y0, y1]), torch.cat([x0, x1]))}
            if batch_size % 2 == 0:  # the ranks' halves make up exactly the single-process batch
                x_single, y_single = single.pop(0)
                assert sorted(images) == sorted(y_single.tolist())
                for label, row in zip(y_single.tolist(), x_single):
                    assert torch.equal(images[label], row), (epoch, label)  # same image, same translation
        assert [r.epoch for r in ranks] == [epoch + 1, epoch + 1]


def test_a_one_process_loader_is_the_plain_loader():
    x = np.random.default_rng(0).random((10, 784), dtype=np.float32)
    plain = list(ArrayLoader(x, np.arange(10), batch_size=3, shuffle=True, seed=1, shift=1))
    sharded = list(ArrayLoader(x, np.arange(10), batch_size=3, shuffle=True, seed=1, shift=1).sharded(0, 1))
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(plain, sharded))


def test_outside_a_job_everything_is_a_single_process():
    model = build_model("lenet300")
    runtime = distributed.current()
    assert (runtime.rank, runtime.world_size, runtime.device.type, runtime.is_main) == (0, 1, "cpu", True)
    assert distributed.data_parallel(model) is model
    assert distributed.gather_object("x") == ["x"] and distributed.broadcast_object(7) == 7
    distributed.check_identical(model.state_dict(), "anything")  # nothing to compare with


def test_cuda_without_a_gpu_is_a_clear_error_and_auto_picks_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(WeightcodecError, match=r"device 'cuda' was asked for, but PyTorch .* sees no CUDA GPU .* use --device cpu"):
        distributed.resolve_device("cuda")
    with pytest.raises(WeightcodecError, match=r"unknown device 'tpu'; choose one of \['auto', 'cpu', 'cuda'\]"):
        distributed.resolve_device("tpu")
    with distributed.launch("auto") as runtime:
        assert runtime.device == torch.device("cpu") and runtime.world_size == 1


def test_cli_device_cuda_without_a_gpu_exits_1_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["reproduce", "lenet300", "--quick", "--device", "cuda", "--data", str(tmp_path / "none.npz")])
    assert code == 1
    assert "sees no CUDA GPU" in capsys.readouterr().err


# ----------------------------------------------------------------------------- torchrun jobs


def test_torchrun_reproduce_two_ranks_one_file_same_bytes_each_time(tmp_path):
    """Two gloo ranks train on their shards through DDP; only rank 0 prints and writes, the ranks'
    files agree (masks, centroids and all), the file decodes, and a rerun gives the same bytes."""
    data = _synthetic_mnist(tmp_path / "tiny.npz")
    files = []
    for run in ("first", "second"):
        folder = tmp_path / run
        folder.mkdir()
        done = _torchrun(["-m", "weightcodec", "-q", "reproduce", "lenet300", "--method", "deep", "--quick",
                          "--device", "cpu", "--data", data], folder, folder / "cache")  # fmt: skip
        assert done.stdout.count("on 2 processes (gloo)") == 1 and done.stdout.count("test error (decoded file)") == 1
        results = folder / "benchmarks" / "results"
        assert sorted(p.name for p in results.iterdir()) == ["reproduce-lenet300-deep-quick.json", "reproduce-lenet300-deep-quick.wcz"]
        result = json.loads((results / "reproduce-lenet300-deep-quick.json").read_text())
        wcz = results / "reproduce-lenet300-deep-quick.wcz"
        digest = hashlib.sha256(wcz.read_bytes()).hexdigest()
        assert (result["world_size"], result["backend"], result["device"]) == (2, "gloo", "cpu")
        assert result["file_sha256_by_rank"] == [digest, digest]
        assert result["file_bytes"] == wcz.stat().st_size
        api.load_into(build_model("lenet300"), wcz)  # decodes, every tensor fits
        assert {r.name: r.encoded.codec for r in container.read(wcz).records}["fc1.weight"] == "deep"
        files.append(wcz.read_bytes())
    assert files[0] == files[1]


def test_torchrun_compress_with_a_training_hook(tmp_path):
    """The README's hook example under torchrun: the hook trains through DDP on its shard."""
    done = _torchrun(["-m", "weightcodec", "-q", "compress", "--recipe", EXAMPLES / "recipe.toml", "tiny_model:build",
                      "-o", "tiny.wcz", "--device", "cpu"], tmp_path, tmp_path / "cache")  # fmt: skip
    assert done.stdout.count("wrote tiny.wcz") == 1
    restored = api.load(tmp_path / "tiny.wcz")
    assert torch.unique(restored["embed.weight"][restored["embed.weight"] != 0]).numel() <= 16


WORKER = """
    import sys, torch
    from torch import nn
    from weightcodec import distributed
    from weightcodec.errors import WeightcodecError

    with distributed.launch("cpu") as runtime:
        rank = runtime.rank
        # DDP: different data on each rank, the same step everywhere
        torch.manual_seed(rank)  # different initial weights: DDP starts every rank from rank 0's
        model = nn.Linear(4, 1)
        net = distributed.data_parallel(model)
        x = torch.arange(8.0).view(2, 4) + 10 * rank
        net(x).sum().backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        distributed.check_identical(model.state_dict(), "after a step")
        # a mismatch is caught and named
        try:
            distributed.check_identical({"same": torch.zeros(3), "differs": torch.full((3,), float(rank))}, "test")
            outcome = "no error"
        except WeightcodecError as exc:
            outcome = str(exc)
        with open(f"rank{rank}.txt", "w") as out:
            out.write(outcome)
        del net  # DDP must not outlive the process group (its gloo threads abort the process at exit)
"""


def test_ranks_that_disagree_are_named_and_ddp_keeps_them_together(tmp_path):
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    _torchrun(["worker.py"], tmp_path, tmp_path / "cache")
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("test: ranks [1] hold different values from rank 0 for differs;"), message
