"""scripts/bench_speed.py at a tiny setting: it runs the trainer and the bare guidance calls and writes its table."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "scripts" / "bench_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_speed"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def table_rows(table: str) -> list[dict[str, str]]:
    """The markdown table's data rows as {column: cell}."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in lines[0].split("|")[1:-1]]
    return [dict(zip(columns, (c.strip() for c in line.split("|")[1:-1]))) for line in lines[2:]]


def test_the_speed_script_writes_a_row_per_loss_and_batch_size(tmp_path, capsys):
    bench = load_script()
    out = tmp_path / "speed.md"
    args = ["--model", "tiny", "--losses", "sds", "ours", "--batch-sizes", "1", "2", "--steps", "2", "--warmup", "1"]
    bench.main([*args, "--cache", str(tmp_path / "cache"), "--out", str(out)])
    table = out.read_text()
    rows = table_rows(table)
    assert [(r["loss"], int(r["batch"])) for r in rows] == [("sds", 1), ("sds", 2), ("ours", 1), ("ours", 2)]
    for r in rows:
        trainer, bare, ratio = float(r["trainer s/step"]), float(r["bare s/step"]), float(r["trainer ÷ bare"])
        assert trainer > 0 and bare > 0 and abs(ratio - trainer / bare) < 0.01
    assert "tiny: CPU" in table and "torch" in table and "bench_speed.py" in table  # device, version and command named
    assert "trainer ÷ bare" in capsys.readouterr().out

    # Every row against its compute bound: FLOPs of the step's guidance calls ÷ the process's matmul rate.
    assert {"GFLOP/step", "step ÷ bound", "bare ÷ bound", "peak GiB (CUDA allocated / CPU process RSS)"} <= set(rows[0])
    for r in rows:
        assert float(r["GFLOP/step"]) > 0
        # Time ≥ FLOPs / peak only if the measured matmul rate were the peak; it is a median on a shared machine, so
        # only "not far below 1" must hold.
        for bound_ratio in (float(r["step ÷ bound"]), float(r["bare ÷ bound"])):
            assert math.isfinite(bound_ratio) and bound_ratio > 0.5
        assert 0 < float(r["peak GiB (CUDA allocated / CPU process RSS)"]) < 64  # the process's RSS, in GiB
    # Every SDS guidance call's rows scale with the batch (no text encoder: the prompts are cached), so its FLOPs do.
    one, two = (float(r["GFLOP/step"]) for r in rows if r["loss"] == "sds")
    assert abs(two / one - 2) < 0.2
    assert "matmul " in table and " GFLOP/s fp32" in table  # the throughput the bound divides by
    assert "UNet2DConditionModel, block_out_channels [32, 64], cross-attention 32" in table


def test_the_header_names_any_denoiser_and_the_unet_fields_only_where_it_has_them():
    bench = load_script()
    transformer = SimpleNamespace(denoiser=nn.Linear(4, 4), downscale=8)  # no UNet config: a stand-in transformer
    header = bench.header(bench.parse_args(["--model", "dit"]), torch.device("cpu"), 64, transformer, 85e9)
    assert "Linear, 20 parameters." in header and "block_out_channels" not in header
    assert "matmul 85 GFLOP/s fp32" in header


def test_by_default_the_table_is_printed_not_appended_to_the_tracked_docs_table(tmp_path, capsys):
    bench = load_script()
    assert bench.parse_args([]).out is None
    bench.append_report("| sds | 1 |\n", None)
    assert "add --out FILE to append it (the project's tables: --out docs/results/speed.md)" in capsys.readouterr().out
    out = tmp_path / "speed.md"
    bench.append_report("| sds | 1 |\n", str(out))
    bench.append_report("| ours | 1 |\n", str(out))
    assert out.read_text() == "# Speed\n\nWritten by scripts/bench_speed.py.\n\n| sds | 1 |\n\n| ours | 1 |\n"
