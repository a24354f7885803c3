import torch
import torch.nn.functional as F

from curvebench.engine.augment import Normalize, random_crop_flip


def _all_views(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    padded = F.pad(img[None].float(), (pad,) * 4, mode="reflect")[0]
    h, w = img.shape[1:]
    views = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            views += [crop, crop.flip(2)]
    return views


def test_crops_and_flips_differ_per_sample_and_use_reflect_padding():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(1, 256, (3, 12, 12), dtype=torch.uint8)  # no zeros: zero padding would show
    batch = img.expand(64, -1, -1, -1).contiguous()
    out = random_crop_flip(batch, pad=4, flip=True, generator=g)
    assert out.shape == (64, 3, 12, 12)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 20, "every sample must get its own crop and flip"
    views = _all_views(img, 4)
    for o in out:  # each output is one reflect-padded crop, flipped or not
        assert any(torch.equal(o, v) for v in views)
    assert (out > 0).all(), "zero padding leaked in: padding must be reflect"
    flipped = sum(any(torch.equal(o, v) for v in views[1::2]) and not any(torch.equal(o, v) for v in views[0::2])
                  for o in out)
    assert 10 < flipped < 54


def test_no_pad_no_flip_is_identity_and_normalize():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, 0, False, g), x.float())
    norm = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], torch.device("cpu"))
    assert torch.allclose(norm(torch.full((1, 3, 2, 2), 255.0)), torch.full((1, 3, 2, 2), 2.0))
