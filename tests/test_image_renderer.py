"""The image renderer's views (ambiguous images): transforms, one row per (sample, view) with its prompt, directions
mapped back through the inverse transform, every row in one guidance call, the labelled views.png."""

from __future__ import annotations

import zlib

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoredist.guidance.base import Guidance, scaled_linear_alphas_cumprod
from scoredist.losses.base import surrogate_loss
from scoredist.losses.ours import Ours
from scoredist.losses.sds import SDS
from scoredist.prompts import Prompt
from scoredist.renderers.base import ModelSpace
from scoredist.renderers.image import ImageRenderer
from scoredist.renderers.transforms import TRANSFORMS, apply, invert, parse_views
from tests.test_train import CONF, config


def test_transforms_by_hand_and_their_inverses():
    x = torch.tensor([[1, 2], [3, 4]])  # rows top to bottom
    expected = {
        "identity": [[1, 2], [3, 4]],
        "rot90": [[2, 4], [1, 3]],  # counter-clockwise: the right column becomes the top row
        "rot180": [[4, 3], [2, 1]],
        "rot270": [[3, 1], [4, 2]],
        "flip_h": [[2, 1], [4, 3]],
        "flip_v": [[3, 4], [1, 2]],
        "transpose": [[1, 3], [2, 4]],
    }
    assert set(expected) == set(TRANSFORMS)
    for name, want in expected.items():
        assert apply(name, x).tolist() == want, name
    y = torch.randn(2, 3, 5, 5)
    for name in TRANSFORMS:
        assert torch.equal(invert(name, apply(name, y)), y), name
    assert not torch.equal(apply("rot90", apply("rot90", y)), y)  # rot90 is not its own inverse: invert must know


class ConvStub(Guidance):
    """ε(x_t; y, t) = c_y · ᾱ_t · (k ⋆ x_t) with zero padding and c_y from the prompt's text: a model that mixes
    neighbouring pixels, equivariant under every transform of the square exactly when the 3×3 kernel k is."""

    channels, downscale = 3, 1

    def __init__(self, kernel: torch.Tensor):
        super().__init__(scaled_linear_alphas_cumprod())
        self.kernel = kernel

    def predict_noise(self, x_t, t, prompts):
        c = torch.tensor([1 + zlib.crc32(p.encode()) % 5 for p in prompts], dtype=x_t.dtype).view(-1, 1, 1, 1)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        k = self.kernel.to(x_t).expand(3, 1, 3, 3)
        return c * abar * F.conv2d(x_t, k, padding=1, groups=3)


SYMMETRIC = torch.tensor([[0.05, 0.2, 0.05], [0.2, -1.0, 0.2], [0.05, 0.2, 0.05]])  # invariant under the square's group
LOPSIDED = torch.tensor([[0.0, 0.6, 0.0], [0.1, -1.0, 0.0], [0.0, 0.0, 0.3]])


def gradient(guidance, loss, mode: str, transform: str, noise: torch.Tensor) -> torch.Tensor:
    """∂(surrogate)/∂θ for one sample seen only under `transform` (prompt "a shape"), with noise drawn as the
    transformed view's noise."""
    renderer = ImageRenderer(mode=mode, height=8, width=8, views=[{"transform": transform, "prompt": "a shape"}])
    renderer.bind(ModelSpace(3, 1, (8, 8), guidance.encode), seeds=[5])
    render = renderer()
    x = guidance.encode(render.x) if renderer.outputs_rgb else render.x
    t = torch.tensor([300])
    weighted, _ = loss(guidance, x, t, noise, [Prompt(render.captions[0])], step=0)
    surrogate_loss(x, weighted).backward()
    return renderer.image.grad


@pytest.mark.parametrize("mode", ["latent", "rgb"])
@pytest.mark.parametrize("loss", [SDS(guidance_scale=7.5), Ours(stage_one=None)], ids=["sds", "ours"])
def test_direction_mapped_back_equals_the_direction_on_the_untransformed_image(mode, loss):
    """With an equivariant model, the gradient a transformed view sends back (through the inverse transform, by
    autograd) is the gradient of the untransformed image with the correspondingly transformed noise."""
    guidance = ConvStub(SYMMETRIC)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    upright = gradient(guidance, loss, mode, "identity", noise)
    assert upright.abs().max() > 1e-3
    for name in TRANSFORMS:
        seen = gradient(guidance, loss, mode, name, apply(name, noise))
        torch.testing.assert_close(seen, upright, rtol=1e-5, atol=1e-6, msg=name)
    # the check can fail: a model that is not equivariant gives another gradient
    lopsided = ConvStub(LOPSIDED)
    assert not torch.allclose(
        gradient(lopsided, loss, mode, "rot90", apply("rot90", noise)),
        gradient(lopsided, loss, mode, "identity", noise),
        atol=1e-4,
    )


def test_views_make_one_row_per_sample_and_view_conditioned_on_its_prompt():
    renderer = ImageRenderer(
        height=8,
        width=8,
        views=[{"transform": "identity"}, ["rot90", "a blue cone"], {"transform": "flip_h", "prompt": "x"}],
    )
    renderer.bind(ModelSpace(3, 1, (8, 8), lambda rgb: rgb), seeds=[1, 2])
    render = renderer()
    assert render.x.shape == (6, 3, 8, 8)
    assert render.samples == [0, 0, 0, 1, 1, 1]
    assert render.captions == [None, "a blue cone", "x", None, "a blue cone", "x"]
    image = renderer.image.detach()
    for s in range(2):
        assert torch.equal(render.x[3 * s], image[s])
        assert torch.equal(render.x[3 * s + 1], torch.rot90(image[s], 1, (-2, -1)))
        assert torch.equal(render.x[3 * s + 2], image[s].flip(-1))
    plain = ImageRenderer(height=8, width=8)
    plain.bind(ModelSpace(3, 1, (8, 8), lambda rgb: rgb), seeds=[1, 2])
    assert plain().captions is None and torch.equal(plain().x, image)  # no views: one row per sample, as before


def test_bad_views_fail_with_what_to_write_instead():
    with pytest.raises(ValueError, match="unknown view transform 'rot45'; choose one of identity, rot90"):
        ImageRenderer(views=[{"transform": "rot45"}])
    with pytest.raises(ValueError, match="non-empty list"):
        ImageRenderer(views=[])
    with pytest.raises(ValueError, match=r"views\[0\] needs a 'transform'"):
        ImageRenderer(views=[{"prompt": "a red cube"}])
    renderer = ImageRenderer(height=8, width=16, views=[{"transform": "identity"}, {"transform": "transpose"}])
    with pytest.raises(ValueError, match="transpose, which turns a 8x16 image into 16x8.*square"):
        renderer.bind(ModelSpace(3, 1, (8, 16), lambda rgb: rgb), seeds=[0])
    wide = ImageRenderer(height=8, width=16, views=[{"transform": "rot180"}, {"transform": "flip_v"}])
    wide.bind(ModelSpace(3, 1, (8, 16), lambda rgb: rgb), seeds=[0])  # shape-keeping transforms: any size
    assert wide().x.shape == (2, 3, 8, 16)
    with pytest.raises(ValueError, match="renderer.init is not set.*input=PATH"):
        ImageRenderer(init=None).bind(ModelSpace(3, 1, (8, 8), lambda rgb: rgb), seeds=[0])


def test_every_view_of_every_sample_goes_through_one_guidance_call_per_step(tmp_path, monkeypatch):
    from scoredist.guidance.exact.shapes import ShapesPrior
    from scoredist.train import train

    calls = []
    predict = ShapesPrior.predict_noise

    def counting(self, x_t, t, prompts):
        calls.append(list(prompts))
        return predict(self, x_t, t, prompts)

    monkeypatch.setattr(ShapesPrior, "predict_noise", counting)
    cfg = config(
        "guidance=shapes",
        "loss=sds",
        "prompt=[a red cube,a green sphere]",
        "trainer.batch_size=2",
        "trainer.max_steps=2",
        "renderer.views=[{transform: identity}, {transform: rot180, prompt: 'a blue cone'}]",
        run_dir=tmp_path / "run",
    )
    train(cfg)
    assert len(calls) == 2  # one call per step
    # 2 samples × 2 views × (unconditional, conditional) rows, each view on its own prompt
    assert sorted(calls[0]) == sorted(["", "a red cube", "", "a blue cone", "", "a green sphere", "", "a blue cone"])
    rows = torch.load(tmp_path / "run" / "samples" / "00001.pt", weights_only=True)
    assert rows.shape == (2, 3, 32, 32) and torch.equal(rows[1], torch.rot90(rows[0], 2, (-2, -1)))
    figure = iio.imread(tmp_path / "run" / "views.png")
    single = iio.imread(tmp_path / "run" / "samples" / "00000.png")
    assert figure.shape[0] > 2 * single.shape[0]  # one labelled row per sample
    assert figure.shape[1] >= single.shape[1]


def test_views_png_labels_each_view_with_the_prompt_its_rows_are_conditioned_on(tmp_path, monkeypatch):
    """+experiment=illusion_shapes: the view with prompt null is labelled with the sample's caption (what the trainer
    conditions it on), not a placeholder; each sample's row of views.png with its own caption."""
    import scoredist.renderers.image as image_module

    labels = []
    row = image_module.labelled_row
    monkeypatch.setattr(image_module, "labelled_row", lambda images, names: labels.append(names) or row(images, names))
    renderer = ImageRenderer(height=8, width=8, views=[{"transform": "identity"}, ["rot180", "a blue cone"]])
    renderer.bind(ModelSpace(3, 1, (8, 8), lambda rgb: rgb), seeds=[1, 2])
    (path,) = renderer.write_artifacts(tmp_path, decode=lambda x: x.clamp(0, 1), captions=["a blue cube", "a red cube"])
    assert path.name == "views.png" and labels == [
        ["identity: a blue cube", "rot180: a blue cone"],
        ["identity: a red cube", "rot180: a blue cone"],
    ]
    assert parse_views([["flip_h"]])[0].label("a green cone") == "flip_h: a green cone"


def test_parse_views_takes_pairs_and_mappings():
    views = parse_views([["rot270"], ("flip_v", "a red cube"), {"transform": "transpose", "prompt": None}])
    assert [(v.transform, v.prompt) for v in views] == [("rot270", None), ("flip_v", "a red cube"), ("transpose", None)]
    assert views[1].label() == "flip_v: a red cube"


def test_captions_and_rows_per_sample_of_views_read_from_a_config_in_either_form():
    pairs = config("renderer.views=[[identity],[rot180,a blue cone]]").renderer  # a ListConfig of ListConfigs
    mappings = config("renderer.views=[{transform: identity}, {transform: rot180, prompt: a blue cone}]").renderer
    assert ImageRenderer.row_captions(pairs) == [("a blue cone", "renderer.views[1][1]")]
    assert ImageRenderer.row_captions(mappings) == [("a blue cone", "renderer.views[1].prompt")]
    three = config("renderer.views=[[identity,a red cube],[rot90],[flip_h,a green sphere]]", "renderer.height=64")
    assert [c for c, _ in ImageRenderer.row_captions(three.renderer)] == ["a red cube", "a green sphere"]
    # rows per sample: the trainer's memory check multiplies them by the samples of a chunk
    assert ImageRenderer.render_sizes(pairs) == [(None, None, 2)]
    assert ImageRenderer.render_sizes(three.renderer) == [(64, None, 3)]
    plain = config("renderer.height=64", "renderer.width=32").renderer
    assert ImageRenderer.row_captions(plain) == [] and ImageRenderer.render_sizes(plain) == [(64, 32, None)]
    assert ImageRenderer.row_captions({"views": [{"transform": "rot90", "prompt": "x"}]}) == [
        ("x", "renderer.views[0].prompt")
    ]
    with pytest.raises(ValueError, match="unknown view transform 'rot45'"):
        ImageRenderer.row_captions(config("renderer.views=[[rot45,a red cube]]").renderer)


def test_a_run_from_an_image_writes_the_input_and_the_result_side_by_side(tmp_path):
    painting = tmp_path / "in.png"
    pixels = (torch.rand(8, 8, 3) * 255).round().byte()
    iio.imwrite(painting, pixels.numpy())
    renderer = ImageRenderer(init=str(painting), height=8, width=8)
    renderer.bind(ModelSpace(3, 1, (8, 8), lambda rgb: rgb * 2 - 1), seeds=[0])
    with torch.no_grad():
        renderer.image.add_(0.5)  # "training"
    (path,) = renderer.write_artifacts(tmp_path, decode=lambda x: ((x + 1) / 2).clamp(0, 1))
    figure = iio.imread(path)
    assert path.name == "edit.png" and figure.shape[1] == 2 * (192 + 6)  # two panels of 8 px × 24, 3 px margins
    band = figure.shape[0] - 192 - 3
    left = figure[band : band + 192 : 24, 3 : 3 + 192 : 24]  # the input panel, one pixel per source pixel
    assert np.array_equal(left, pixels.numpy())
    assert ImageRenderer(height=8, width=8).write_artifacts(tmp_path, decode=None) == []  # from noise: nothing


def test_every_loss_distils_an_ambiguous_image(tmp_path):
    """Each loss of conf/loss on the exact prior with two views: one finite, non-zero gradient for the image, every
    view's row conditioned on its own prompt (ours/bridge in stage two: the suffixes attach to each view's prompt;
    iRFDS inverts a reference image into each view's noise)."""
    from hydra.utils import instantiate

    from scoredist.guidance.exact.shapes import ShapesPrior
    from scoredist.images import save_png

    prior = ShapesPrior()
    reference = save_png(prior.decode(prior.reference_image("a blue cube")[None]), tmp_path / "ref.png", min_size=32)
    views = [{"transform": "identity", "prompt": "a blue cube"}, {"transform": "rot180", "prompt": "a blue cone"}]
    seen = []
    predict = prior.predict_noise
    prior.predict_noise = lambda x_t, t, prompts: seen.append(list(prompts)) or predict(x_t, t, prompts)
    for name in sorted(p.stem for p in (CONF / "loss").glob("*.yaml")):
        extra = [f"loss.reference={reference}"] if name == "irfds" else []
        loss = instantiate(config(f"loss={name}", *extra).loss)
        renderer = ImageRenderer(views=views, init_std=0.1)
        renderer.bind(ModelSpace(3, 1, (32, 32), prior.encode), seeds=[0])
        render = renderer()
        loss.attach(prior, render.x.detach())
        prompts = [Prompt(c) for c in render.captions]
        t, noise = torch.tensor([300, 300]), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        seen.clear()
        weighted, _ = loss(prior, render.x, t, noise, prompts, step=10**6)  # past any stage switch
        surrogate_loss(render.x, weighted).backward()
        grad = renderer.image.grad
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, name
        texts = [p for call in seen for p in call]
        assert any("a blue cube" in p for p in texts) and any("a blue cone" in p for p in texts), name
        loss.after_step(prior, render.x.detach(), prompts)
