"""Each view policy's transform, checked against an independent reference.

The references are torchvision's own eval path (v1 functional on PIL), ``five_crop``/``ten_crop``,
``torch.flip`` and, for random16, Pillow (``Image.resize(box=...)``, ``ImageEnhance``), which
shares the semantics but not the code (its bicubic kernel and rounding differ slightly, so that
comparison has a tolerance, with another view as the negative control).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F1
from torchvision.transforms.v2 import functional as F2

from featurestore.errors import OptionError
from featurestore.extractor import resolve
from featurestore.keys import fingerprint
from featurestore.views import (
    POLICIES,
    RANDOM16_JITTER,
    RANDOM16_RATIO,
    RANDOM16_SCALE,
    crops10_box,
    get_policy,
    random16_box,
    random16_params,
    render_base,
    render_plain,
    render_views,
)

PRE = resolve("efficientnet_lite0", weights="none").preprocess  # resize 256, crop 224, bicubic
PRE_BILINEAR = resolve("resnet18", weights="none", input_size=64).preprocess


def _smooth(w: int, h: int) -> Image.Image:
    """Gradients and stripes: resampling differences stay small, views differ a lot."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, ((xx + 2 * yy) % 97) * 2.5], -1)
    return Image.fromarray(arr.astype(np.uint8))


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


SIZES = [(500, 375), (375, 500), (341, 256), (256, 256), (301, 257)]  # odd margins too


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pre", [PRE, PRE_BILINEAR], ids=["bicubic256-224", "bilinear73-64"])
def test_view_0_of_every_policy_is_the_plain_eval_transform(size, pre) -> None:
    img = _noise(*size)
    interp = InterpolationMode(pre.interpolation)
    resized = F1.resize(img, [pre.resize_size], interpolation=interp, antialias=True)
    reference = F1.pil_to_tensor(F1.center_crop(resized, [pre.crop_size]))
    assert torch.equal(render_plain(img, pre), reference)
    for policy in POLICIES.values():
        (view0,) = render_views(img, pre, policy, [0])
        assert torch.equal(view0, reference), policy.name


@pytest.mark.parametrize("size", SIZES)
def test_crops10_are_the_five_crops_and_their_mirrors(size) -> None:
    img = _noise(*size, seed=1)
    c = PRE.crop_size
    resized = F1.resize(img, [PRE.resize_size], interpolation=InterpolationMode.BICUBIC)
    base = F1.pil_to_tensor(resized)
    views = render_views(img, PRE, get_policy("crops10"), range(10))
    # the documented box of the top-left view, cropped by hand
    assert torch.equal(views[1], base[:, :c, :c])
    assert torch.equal(views[1], F2.crop(base, 0, 0, c, c))
    tl, tr, bl, br, centre = F2.five_crop(base, [c, c])
    for view, ref in zip(views[:5], (centre, tl, tr, bl, br), strict=True):
        assert torch.equal(view, ref)
    for k in range(5):
        assert torch.equal(views[5 + k], torch.flip(views[k], dims=[-1]))
    # torchvision's ten_crop mirrors the image, then crops: its mirrored top-left is our
    # mirrored top-right, and so on
    ten = F2.ten_crop(base, [c, c], vertical_flip=False)
    assert torch.equal(views[6], ten[6]) and torch.equal(views[7], ten[5])
    assert torch.equal(views[8], ten[8]) and torch.equal(views[9], ten[7])
    assert len({v.numpy().tobytes() for v in views}) == 10  # ten different views


def test_crops10_boxes() -> None:
    h, w, c = 256, 341, 224
    assert [crops10_box(i, h, w, c) for i in range(5)] == [
        (16, 58, False),  # round(32 / 2), round(117 / 2) = 58 (round half to even)
        (0, 0, False),
        (0, 117, False),
        (32, 0, False),
        (32, 117, False),
    ]
    assert crops10_box(7, h, w, c) == (0, 117, True)
    with pytest.raises(OptionError, match="0-9"):
        crops10_box(10, h, w, c)


def test_flip_is_the_centre_crop_and_its_mirror_stored_as_crops10_view_5() -> None:
    img = _noise(320, 240, seed=2)
    plain = render_plain(img, PRE)
    views = render_views(img, PRE, get_policy("flip"), [0, 1])
    assert torch.equal(views[0], plain)
    assert torch.equal(views[1], torch.flip(plain, dims=[-1]))
    assert torch.equal(views[1], render_views(img, PRE, get_policy("crops10"), [5])[0])
    spec = resolve("resnet18", weights="none").spec
    assert get_policy("flip").spec(spec, 1) == get_policy("crops10").spec(spec, 5)


def _pil_random16(base: torch.Tensor, index: int) -> torch.Tensor:
    """random16's view ``index`` done with Pillow from the documented parameters."""
    p = random16_params(index)
    assert p is not None
    top, left, h, w = random16_box(p, base.shape[1], base.shape[2])
    im = Image.fromarray(base.permute(1, 2, 0).numpy())
    c = PRE.crop_size
    im = im.resize((c, c), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    if p.mirrored:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(p.brightness)
    im = ImageEnhance.Contrast(im).enhance(p.contrast)
    im = ImageEnhance.Color(im).enhance(p.saturation)
    return _tensor(im)


def test_random16_views_match_pillow_from_the_documented_parameters() -> None:
    img = _smooth(500, 375)
    base = render_base(img, PRE)
    views = render_views(img, PRE, get_policy("random16"), range(16))
    for i in range(1, 16):
        ref = _pil_random16(base, i).float()
        own = (views[i].float() - ref).abs().mean().item()
        other = (views[i % 15 + 1].float() - ref).abs().mean().item()
        assert own < 0.5, (i, own)  # measured 0.03-0.17: kernels and rounding differ
        assert other > 10 * own and other > 5, (i, other)


def test_random16_parameters_are_pinned_and_in_range() -> None:
    """The views' definition must never drift: a change would make the cached rows of view i
    mean something else. A new definition needs a new policy name."""
    assert random16_params(0) is None
    boxes = [random16_box(random16_params(i), 256, 341) for i in range(1, 16)]
    assert boxes == [
        (0, 37, 256, 267),
        (6, 46, 228, 219),
        (0, 44, 256, 289),
        (4, 11, 252, 260),
        (81, 136, 169, 180),
        (0, 42, 256, 261),
        (0, 76, 256, 249),
        (1, 95, 251, 204),
        (16, 114, 226, 221),
        (0, 28, 256, 299),
        (0, 78, 256, 242),
        (0, 55, 256, 241),
        (0, 54, 254, 276),
        (12, 85, 239, 223),
        (0, 27, 256, 271),
    ]
    p1 = random16_params(1)
    assert p1 is not None and p1.mirrored
    assert (p1.brightness, p1.contrast, p1.saturation) == pytest.approx(
        (0.8586896884923763, 1.1450667751215484, 0.8249812799480223), abs=1e-12
    )
    for i in range(1, 16):
        p = random16_params(i)
        assert RANDOM16_SCALE[0] <= p.scale <= RANDOM16_SCALE[1]
        assert math.log(RANDOM16_RATIO[0]) <= p.log_ratio <= math.log(RANDOM16_RATIO[1])
        for f in (p.brightness, p.contrast, p.saturation):
            assert RANDOM16_JITTER[0] <= f <= RANDOM16_JITTER[1]
        assert p.mirrored == (i % 2 == 1)
    with pytest.raises(OptionError, match="0-15"):
        random16_params(16)


def test_a_view_depends_on_the_image_and_its_index_only() -> None:
    img = _noise(300, 200, seed=3)
    for policy in POLICIES.values():
        every = render_views(img, policy=policy, pre=PRE, indices=range(policy.n_views))
        for i in (policy.n_views - 1, 1):
            (alone,) = render_views(img, PRE, policy, [i])
            assert torch.equal(alone, every[i]), (policy.name, i)
        assert all(v.shape == (3, 224, 224) and v.dtype == torch.uint8 for v in every)


def test_view_specs_add_only_the_policy_and_index() -> None:
    ex = resolve("mobilenet_v3_small", weights="none", input_size=32)
    crops = get_policy("crops10")
    specs = crops.specs(ex.spec)
    assert specs[0] is ex.spec  # the identity view's rows are the plain rows
    assert specs[3] == {**ex.spec, "view": {"policy": "crops10", "index": 3}}
    assert len({fingerprint(s) for s in specs}) == 10
    # pinned: a view store's name must never drift either
    assert fingerprint(specs[3]) == (
        "cba2663ab99738c4b15259999c8862086ac2829ca751ec0cd84fb06ffda5e247"
    )
    r16 = get_policy("random16").specs(ex.spec)
    assert r16[0] is ex.spec and r16[1]["view"] == {"policy": "random16", "index": 1}
    with pytest.raises(OptionError, match="0-9"):
        crops.spec(ex.spec, 10)


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(OptionError, match="flip, crops10, random16"):
        get_policy("crops5")
