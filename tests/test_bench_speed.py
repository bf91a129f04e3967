"""scripts/bench_speed.py at a tiny setting: it runs the trainer and the bare guidance calls and writes its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "scripts" / "bench_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_speed"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_speed_script_writes_a_row_per_loss_and_batch_size(tmp_path, capsys):
    bench = load_script()
    out = tmp_path / "speed.md"
    args = ["--model", "tiny", "--losses", "sds", "ours", "--batch-sizes", "1", "2", "--steps", "2", "--warmup", "1"]
    bench.main([*args, "--cache", str(tmp_path / "cache"), "--out", str(out)])
    table = out.read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith(("| sds", "| ours"))]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [("sds", 1), ("sds", 2), ("ours", 1), ("ours", 2)]
    for r in rows:
        trainer, bare, ratio = float(r[2]), float(r[3]), float(r[4])
        assert trainer > 0 and bare > 0 and abs(ratio - trainer / bare) < 0.01
    assert "tiny: CPU" in table and "torch" in table and "bench_speed.py" in table  # device, version and command named
    assert "trainer ÷ bare" in capsys.readouterr().out


def test_by_default_the_table_is_printed_not_appended_to_the_tracked_docs_table(tmp_path, capsys):
    bench = load_script()
    assert bench.parse_args([]).out is None
    bench.append_report("| sds | 1 |\n", None)
    assert "add --out FILE to append it (the project's tables: --out docs/results/speed.md)" in capsys.readouterr().out
    out = tmp_path / "speed.md"
    bench.append_report("| sds | 1 |\n", str(out))
    bench.append_report("| ours | 1 |\n", str(out))
    assert out.read_text() == "# Speed\n\nWritten by scripts/bench_speed.py.\n\n| sds | 1 |\n\n| ours | 1 |\n"
