"""The data API methods use (engine/data.py, engine/files.py, engine/evaluate.py): sampling with a
given generator, MetaSampler.restart / restrict / samples, select + concat, eval_batches, evaluating,
and the ImageSource protocol. Each new call must draw what the hand-written code it replaced drew."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from curvebench.engine.augment import Normalize
from curvebench.engine.data import ImageSet, ImageSource, MetaSampler
from curvebench.engine.evaluate import evaluating
from curvebench.engine.files import FileImageSet

K = 3


def _set(n: int = 23, seed: int = 0, gen_seed: int = 7) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % K
    return ImageSet(images, labels, K, Normalize([0.3], [0.4], torch.device("cpu")), 2, True,
                    torch.Generator().manual_seed(gen_seed), pad_mode="constant")


def _same_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and torch.equal(x.index, y.index)


# -- sampling with a given generator --------------------------------------------------------------
def test_batches_with_a_given_generator_draw_what_a_swapped_generator_drew():
    subset = torch.tensor([1, 4, 5, 8, 9, 11, 12, 20])
    old, new = _set(), _set()
    engine_state = new.generator.get_state()
    # the workaround it replaces (CurveNet's probe): swap the set's generator for the epoch
    probe_old, probe_new = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    kept, old.generator = old.generator, probe_old
    expected = list(old.batches(3, subset, drop_last=True))
    old.generator = kept
    _same_batches(new.batches(3, subset, drop_last=True, generator=probe_new), expected)
    assert torch.equal(probe_new.get_state(), probe_old.get_state())  # the same numbers consumed
    assert torch.equal(new.generator.get_state(), engine_state)  # the set's own stream untouched
    assert not torch.equal(probe_new.get_state(), torch.Generator().manual_seed(3).get_state())


def test_view_and_batch_take_a_generator_too():
    s = _set()
    index = torch.tensor([0, 3, 7])
    a = s.view(index, generator=torch.Generator().manual_seed(1))
    b = s.batch(index, generator=torch.Generator().manual_seed(1))
    state = s.generator.get_state()
    assert torch.equal(a, b.x) and torch.equal(s.generator.get_state(), state)
    assert not torch.equal(a, s.view(index, generator=torch.Generator().manual_seed(2)))


# -- evaluation batches -----------------------------------------------------------------------------
def test_eval_batches_are_in_order_unaugmented_and_draw_nothing():
    s = _set()
    state = s.generator.get_state()
    batches = list(s.eval_batches(5))
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(len(s)))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    # the hand-written loop it replaced (Dynamic Loss's epoch losses)
    for start, b in zip(range(0, len(s), 5), batches):
        idx = torch.arange(start, min(start + 5, len(s)))
        assert torch.equal(b.x, s.view(idx, augment=False)) and torch.equal(b.y, s.labels[idx])
    held = torch.tensor([9, 2, 14])
    (b,) = list(s.eval_batches(8, held))
    assert torch.equal(b.index, held) and torch.equal(b.x, s.normalize(s.images[held].float()))
    _same_batches(s.eval_batches(4, held), s.batches(4, held, shuffle=False, augment=False))
    assert torch.equal(s.generator.get_state(), state)


def test_evaluating_sets_eval_mode_without_grad_and_restores_the_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    x = torch.ones(1, 2)
    with evaluating(model) as m:
        assert m is model and not model.training and not torch.is_grad_enabled()
        assert not m(x).requires_grad
    assert model.training and torch.is_grad_enabled()
    model.eval()
    with pytest.raises(RuntimeError):
        with evaluating(model):
            raise RuntimeError("boom")
    assert not model.training and torch.is_grad_enabled()  # eval mode kept, grad back on


# -- MetaSampler ------------------------------------------------------------------------------------
def test_restart_is_a_fresh_pass_as_the_state_dict_reset_was():
    old, new = MetaSampler(_set()), MetaSampler(_set())
    for s in (old, new):
        s.next_batch(4), s.next_batch(4)
    old.load_state_dict({"order": None, "pos": 0})  # the workaround it replaces
    new.restart()
    assert new.state_dict() == {"order": None, "pos": 0}
    for _ in range(8):  # across the end of a pass
        a, b = old.next_batch(4), new.next_batch(4)
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    # a restart mid-pass: the head of a new permutation, not the continuation
    cont = MetaSampler(_set())
    cont.load_state_dict(new.state_dict())
    new.restart()
    assert not torch.equal(new.next_batch(4).index, cont.next_batch(4).index)


def test_restrict_equals_a_new_sampler_over_the_positions():
    pos = torch.tensor([0, 2, 5, 6, 9, 13, 17])
    fresh = MetaSampler(_set(), subset=pos)  # the workaround it replaces (Dynamic Loss, each epoch)
    restricted = MetaSampler(_set(), subset=torch.empty(0, dtype=torch.int64))
    restricted.next_batch(2)  # an empty pass drawn before the restriction
    restricted.restrict(pos)
    assert len(restricted) == 7 and torch.equal(restricted.labels, restricted.meta.labels[pos])
    for _ in range(5):
        a, b = fresh.next_batch(3), restricted.next_batch(3)
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and bool(torch.isin(b.index, pos).all())
    a, b = fresh.random_batch(4), restricted.random_batch(4)
    assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)


def test_restrict_without_restart_keeps_a_restored_pass():
    """CurveNet k = 0: a resumed run restores the pass, then restricts the sampler to the pseudo-meta set."""
    pos = torch.tensor([1, 3, 4, 8, 10, 15])
    run = MetaSampler(_set(), subset=pos)
    run.next_batch(4)
    saved = run.state_dict()
    resumed = MetaSampler(_set(), subset=torch.empty(0, dtype=torch.int64))
    resumed.meta.generator.set_state(run.meta.generator.get_state())
    resumed.load_state_dict(saved)
    resumed.restrict(pos, restart=False)
    assert resumed.state_dict()["pos"] == 4
    for _ in range(3):
        a, b = run.next_batch(4), resumed.next_batch(4)
        assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x)


def test_samples_are_the_rows_the_sampler_draws_from():
    s = _set()
    whole = MetaSampler(s)
    assert whole.samples() is s
    part = whole.per_class(2)
    rows = part.samples()
    assert torch.equal(rows.labels, part.labels) and torch.equal(rows.images, s.images[part.subset])
    assert rows.generator is s.generator and torch.equal(rows.labels, torch.tensor([0, 1, 2, 0, 1, 2]))


# -- select and concat ------------------------------------------------------------------------------
def test_concat_is_the_hand_built_union_and_keeps_the_first_sets_generator():
    train, meta = _set(23, seed=0, gen_seed=7), _set(9, seed=1, gen_seed=8)
    sampler = MetaSampler(meta).per_class(2)
    pool = train.concat(sampler.samples())
    index = sampler.subset
    # what Dynamic Loss built by hand before
    by_hand = ImageSet(torch.cat([train.images, meta.images[index]]), torch.cat([train.labels, meta.labels[index]]),
                       train.num_classes, train.normalize, train.pad, train.flip, torch.Generator().manual_seed(7),
                       train.channels_last, train.pad_mode)
    assert len(pool) == 23 + 6 and pool.generator is train.generator and pool.pad_mode == "constant"
    assert torch.equal(pool.images, by_hand.images) and torch.equal(pool.labels, by_hand.labels)
    assert torch.equal(pool.images[23:], meta.images[index])  # the others' positions shift by len(train)
    chosen = torch.tensor([2, 7, 23, 25, 28])
    _same_batches(pool.batches(2, chosen), by_hand.batches(2, chosen))
    assert len(train) == 23 and len(train.concat()) == 23
    with pytest.raises(TypeError):
        train.concat(object())


def test_select_keeps_order_and_generator():
    s = _set()
    rows = torch.tensor([5, 1, 9])
    sub = s.select(rows)
    assert torch.equal(sub.labels, s.labels[rows]) and torch.equal(sub.images, s.images[rows])
    assert sub.generator is s.generator and len(s) == 23


# -- the protocol -----------------------------------------------------------------------------------
def _members() -> list[str]:
    return [n for n, v in vars(ImageSource).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))]


@pytest.mark.parametrize("cls", [ImageSet, FileImageSet])
def test_both_data_sets_follow_the_image_source_protocol(cls):
    names = _members()
    assert {"batches", "eval_batches", "view", "batch", "num_batches", "select", "concat", "class_counts"} <= set(names)
    for name in names:
        want, have = getattr(ImageSource, name), getattr(cls, name, None)
        assert have is not None, f"{cls.__name__} lacks {name}"
        if callable(want):
            assert list(inspect.signature(have).parameters) == list(inspect.signature(want).parameters), name
    assert "__len__" in vars(cls)


def _files(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        name = f"img{i}.jpg"
        Image.new("RGB", (10, 9), (20 * i % 256, 255 - 20 * i % 256, 40)).save(root / name, format="JPEG")
        names.append(name)
    return names


def test_file_image_set_select_concat_and_generator(tmp_path):
    names = _files(tmp_path, 7)

    def make(files, labels, seed=5):
        return FileImageSet(tmp_path, files, np.asarray(labels), K, [0.5] * 3, [0.25] * 3,
                            torch.Generator().manual_seed(seed), torch.device("cpu"), resize=8, crop=6, workers=2)

    train, meta = make(names[:5], [0, 1, 2, 0, 1]), make(names[5:], [2, 2])
    pool = train.concat(meta)
    assert pool.files == names and pool.labels.tolist() == [0, 1, 2, 0, 1, 2, 2] and pool.generator is train.generator
    whole = make(names, [0, 1, 2, 0, 1, 2, 2])
    state = whole.generator.get_state()
    _same_batches(pool.eval_batches(3), whole.eval_batches(3))  # the same files, the same draws
    assert torch.equal(pool.generator.get_state(), whole.generator.get_state())
    assert not torch.equal(whole.generator.get_state(), state)  # file sets draw crops even unaugmented
    sub = whole.select(torch.tensor([6, 0]))
    assert sub.files == [names[6], names[0]] and sub.labels.tolist() == [2, 0]
    probe = torch.Generator().manual_seed(9)
    before = whole.generator.get_state()
    b = next(whole.batches(4, generator=probe))
    assert torch.equal(whole.generator.get_state(), before) and len(b) == 4
    b2 = next(make(names, [0, 1, 2, 0, 1, 2, 2], seed=9).batches(4))
    assert torch.equal(b.x, b2.x) and torch.equal(b.index, b2.index)
    with pytest.raises(TypeError):
        train.concat(_set())  # an ImageSet is not a file set
