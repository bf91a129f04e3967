"""Many prompts and samples in one run: seeds, chunks, batch invariance, samples.jsonl, resume across chunks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

import scoredist.train as trainer
from scoredist.samples import RowGroups, SampleStreams, derive_seed, make_samples, read_prompts, split_chunks
from scoredist.schedules import TimestepSchedule
from scoredist.train import train
from tests.test_train import config

CAPTIONS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"]
SHAPES = ("guidance=shapes", "renderer.init_std=0.1", "optimizer.lr=0.02")


def prompt_list(captions) -> str:
    return "prompt=[" + ",".join(captions) + "]"


def sample_tensors(run_dir: Path) -> dict[int, torch.Tensor]:
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return {r["index"]: torch.load(run_dir / r["tensor"], weights_only=True) for r in records}


# ---------------------------------------------------------------------------------------------------------------------
# Prompts, seeds, chunks
# ---------------------------------------------------------------------------------------------------------------------


def test_prompt_file_skips_blank_and_comment_lines_and_names_lines(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("# captions\na red cube\n\n  a blue sphere  \n#a green cone\n", encoding="utf-8")
    assert read_prompts("ignored", str(path)) == [("a red cube", f"{path}:2"), ("a blue sphere", f"{path}:4")]
    assert read_prompts(["a", "b"], None) == [("a", "prompt[0]"), ("b", "prompt[1]")]
    assert read_prompts("a red cube", None) == [("a red cube", "prompt")]


@pytest.mark.parametrize(
    "prompt, prompt_file, error, match",
    [
        ("x", "missing.txt", FileNotFoundError, "missing.txt does not exist"),
        ("x", "empty", ValueError, "has no captions"),
        ([], None, ValueError, "non-empty list"),
        (["a red cube", 3], None, ValueError, r"prompt\[1\] must be a string"),
        (7, None, ValueError, "must be a string or a non-empty list"),
    ],
)
def test_bad_prompts_are_refused_with_a_message(tmp_path, prompt, prompt_file, error, match):
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    path = {"missing.txt": str(tmp_path / "missing.txt"), "empty": str(empty)}.get(prompt_file)
    with pytest.raises(error, match=match):
        read_prompts(prompt, path)


def test_samples_are_prompt_major_with_seeds_of_their_index():
    samples = make_samples([("a", "prompt[0]"), ("b", "prompt[1]")], samples_per_prompt=3, seed=5)
    assert [(s.index, s.caption) for s in samples] == [(0, "a"), (1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "b")]
    assert [s.seed for s in samples] == [derive_seed(5, i) for i in range(6)]
    assert len({s.seed for s in samples}) == 6 and derive_seed(5, 0) != derive_seed(6, 0)
    assert [len(c) for c in split_chunks(samples, 4)] == [4, 2]
    with pytest.raises(ValueError, match="samples_per_prompt"):
        make_samples([("a", "prompt")], 0, 0)


def test_a_sample_draws_the_same_timesteps_and_noise_whatever_shares_its_batch():
    samples = make_samples([(c, "p") for c in CAPTIONS], 1, seed=0)
    schedule = TimestepSchedule()
    alone = SampleStreams(samples[2:3], torch.device("cpu"))
    t_alone, noise_alone = alone.draw(RowGroups([0, 0]), schedule, 0, 1000, (3, 4, 4))  # two rows (two views)
    together = SampleStreams(samples, torch.device("cpu"))
    rows = RowGroups([2, 0, 1, 2, 3])  # sample 2's rows interleaved with the others'
    t, noise = together.draw(rows, schedule, 0, 1000, (3, 4, 4))
    assert torch.equal(t[[0, 3]], t_alone) and torch.equal(noise[[0, 3]], noise_alone)
    assert rows.rows_of == {2: [0, 3], 0: [1], 1: [2], 3: [4]}
    torch.testing.assert_close(rows.row_weights("cpu"), torch.tensor([0.5, 1.0, 1.0, 0.5, 1.0]))


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sds", "ours"])
@pytest.mark.parametrize("model", ["shapes", "tiny-sd"])
def test_batch_invariance_four_prompts_at_batch_four_equal_batch_one(loss, model, tmp_path, tiny_sd_path):
    guidance = SHAPES if model == "shapes" else ("guidance=sd", f"guidance.pretrained={tiny_sd_path}")
    common = (*guidance, f"loss={loss}", prompt_list(CAPTIONS), "trainer.max_steps=6", "loss.guidance_scale=7.5")
    together = train(config(*common, "trainer.batch_size=4", run_dir=tmp_path / "b4")).run_dir
    apart = train(config(*common, "trainer.batch_size=1", run_dir=tmp_path / "b1")).run_dir
    a, b = sample_tensors(together), sample_tensors(apart)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for i in a:
        torch.testing.assert_close(a[i], b[i], rtol=1e-4, atol=1e-4)
    start = torch.randn(a[0].shape, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a[0], a[1]) and (a[0] - start).abs().max() > 1e-3  # distinct samples that moved


def test_batch_invariance_holds_for_plain_gradient_descent_too(tmp_path):
    """Adam would hide a gradient scaled by the batch size; SGD moves by the gradient itself."""
    common = (*SHAPES, "loss=sds", prompt_list(CAPTIONS[:2]), "trainer.max_steps=3", "optimizer=sgd")
    together = sample_tensors(train(config(*common, "trainer.batch_size=2", run_dir=tmp_path / "b2")).run_dir)
    apart = sample_tensors(train(config(*common, "trainer.batch_size=1", run_dir=tmp_path / "b1")).run_dir)
    for i in (0, 1):
        torch.testing.assert_close(together[i], apart[i], rtol=1e-5, atol=1e-6)


def test_prompt_file_run_writes_every_sample_once_and_resumes_at_the_chunk_in_flight(tmp_path, monkeypatch):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(["a red cube", "a blue sphere", "# skipped", "a green cone"] + CAPTIONS[:3]) + "\n")
    common = (*SHAPES, "loss=sds", f"prompt_file={captions}", "trainer.batch_size=4", "trainer.max_steps=4")
    straight = train(config(*common, "trainer.ckpt_every=2", run_dir=tmp_path / "straight")).run_dir

    # a kill in the second chunk, after its step-2 checkpoint (a KeyboardInterrupt from inside the step)
    original = trainer.Chunk.train_step

    def dies_in_chunk_one(self):
        if self.index == 1 and self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", dies_in_chunk_one)
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(config(*common, "trainer.ckpt_every=2", run_dir=run))
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4  # chunk 0 finished, chunk 1 did not
    first_chunk_mtime = (run / "samples" / "00000.png").stat().st_mtime_ns
    monkeypatch.undo()

    resumed = train(config(*common, "trainer.ckpt_every=2", f"trainer.resume={run}"))
    assert resumed.samples_done == 6
    lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(6))  # none twice, none lost
    assert all(r["steps"] == 4 and r["chunk"] == r["index"] // 4 for r in lines)
    assert [r["prompt"] for r in sorted(lines, key=lambda r: r["index"])][:3] == [
        "a red cube",
        "a blue sphere",
        "a green cone",
    ]
    assert (run / "samples" / "00000.png").stat().st_mtime_ns == first_chunk_mtime  # chunk 0 was not run again
    a, b = sample_tensors(run), sample_tensors(straight)
    for i in range(6):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)  # resumed mid-chunk, bit for bit


def test_a_caption_the_prior_does_not_know_names_its_line(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red cube\na red dragon\n")
    with pytest.raises(ValueError, match=r"captions.txt:2: unknown word 'dragon'"):
        train(config(*SHAPES, f"prompt_file={captions}", run_dir=tmp_path / "run"))


def test_a_prompt_list_with_a_nerf_is_refused_with_the_sweep_alternative(tmp_path):
    cfg = config("+experiment=nerf_demo", prompt_list(CAPTIONS[:2]), run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="^NeRFRenderer distils 1 scene per run.*python train.py -m"):
        train(cfg)


def test_a_resumed_chunk_keeps_counting_its_training_time(tmp_path, monkeypatch):
    from scoredist.checkpoint import load_checkpoint

    common = (*SHAPES, "loss=sds", "prompt=a red cube", "trainer.max_steps=4", "trainer.ckpt_every=2")
    clock = itertools.count(0.0, 100.0)  # 100 s between any two readings: the first process's steps look long
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(clock))
    original = trainer.Chunk.train_step

    def dies_at_step_three(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", dies_at_step_three)
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        train(config(*common, run_dir=run))
    before = load_checkpoint(run / "checkpoints" / "last.pt")["seconds"]
    assert before >= 200 and before % 100 == 0  # whole readings of the clock: a chunk starts at 0 s
    monkeypatch.undo()
    train(config(*common, f"trainer.resume={run}"))
    (record,) = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert before <= record["seconds"] < before + 60  # both processes' time, counted once


def test_a_run_of_several_chunks_keeps_its_max_steps_on_resume(tmp_path):
    common = (*SHAPES, "loss=sds", prompt_list(CAPTIONS[:2]), "trainer.batch_size=1")
    run = train(config(*common, "trainer.max_steps=2", run_dir=tmp_path / "r")).run_dir
    with pytest.raises(ValueError, match="trainer.max_steps changed from 2 to 3, but this run has 2 chunks"):
        train(config(*common, "trainer.max_steps=3", f"trainer.resume={run}"))


def test_a_run_killed_between_chunks_starts_the_next_chunk_fresh(tmp_path, monkeypatch):
    common = (*SHAPES, "loss=sds", prompt_list(CAPTIONS[:2]), "trainer.batch_size=1", "trainer.max_steps=3")
    straight = sample_tensors(train(config(*common, run_dir=tmp_path / "straight")).run_dir)
    original = trainer.Chunk.train_step

    def dies_in_chunk_one(self):
        if self.index == 1:
            raise KeyboardInterrupt  # before chunk 1 wrote anything: the checkpoint is chunk 0's last
        return original(self)

    monkeypatch.setattr(trainer.Chunk, "train_step", dies_in_chunk_one)
    with pytest.raises(KeyboardInterrupt):
        train(config(*common, run_dir=tmp_path / "killed"))
    monkeypatch.undo()
    resumed = sample_tensors(train(config(*common, f"trainer.resume={tmp_path / 'killed'}")).run_dir)
    for i in (0, 1):
        torch.testing.assert_close(resumed[i], straight[i], rtol=0, atol=0)
