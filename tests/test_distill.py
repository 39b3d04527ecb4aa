import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atlas.config import TrainConfig
from training.distill import KDSetup, Split, fit, kd_loss, predict, random_crop_flip


def test_kd_loss_matches_hinton_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    T, alpha = 3.0, 0.7
    p_t, p_s = F.softmax(t / T, 1), F.softmax(s / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()  # KL(teacher || student) per sample, batch mean
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy_and_equal_logits_have_no_soft_term():
    s, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert kd_loss(s, torch.randn(4, 10), y, 4.0, 0.0).item() == pytest.approx(F.cross_entropy(s, y).item())
    assert kd_loss(s, s.clone(), y, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_soft_gradients_on_the_hard_scale():
    # Hinton §2: soft-target gradients scale as 1/T^2, so the loss multiplies by T^2; the gradient norm
    # should therefore stay of the same order as T grows (without T^2 it would shrink ~T^2-fold).
    torch.manual_seed(1)
    t, y = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    norms = []
    for T in (2.0, 8.0):
        s = (torch.randn(64, 10) * 3).requires_grad_()
        kd_loss(s, t, y, T, 1.0).backward()
        norms.append(s.grad.norm().item())
    assert 0.2 < norms[1] / norms[0] < 5


def test_random_crop_flip_keeps_shape_and_moves_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def _toy_split(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return Split(x, y)


def test_cached_teacher_logits_equal_running_the_teacher_per_batch():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    train, test = _toy_split(), _toy_split(seed=1)
    cfg = TrainConfig(model="x", epochs=2, lr=0.1, schedule="constant")
    results = []
    for cached in (True, False):
        torch.manual_seed(1)
        student = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        kd = KDSetup(4.0, 0.9, cached_logits=predict(teacher, train.images) if cached else None,
                     teacher=None if cached else teacher)
        fit(student, train, test, cfg, batch_size=32, seed=5, kd=kd, progress=False, log=lambda s: None)
        results.append(student[1].weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_fit_learns_and_reports_history():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    cfg = TrainConfig(model="x", epochs=3, lr=0.5, schedule="onecycle")
    history = fit(model, _toy_split(), _toy_split(seed=1), cfg, batch_size=32, seed=0, progress=False, log=lambda s: None)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_acc"] > 0.9 and all(math.isfinite(h["train_loss"]) for h in history)


def test_augment_views_are_fixed_per_image_and_view_and_match_crop_flip():
    from training.distill import AugmentViews, crop_flip

    images = torch.arange(6 * 3 * 8 * 8, dtype=torch.float32).reshape(6, 3, 8, 8)
    views = AugmentViews.make(6, 3, seed=0, pad=2)
    idx = torch.tensor([4, 1])
    again = AugmentViews.make(6, 3, seed=0, pad=2)
    for view in range(3):
        out = views.apply(images[idx], idx, view)
        assert torch.equal(out, again.apply(images[idx], idx, view))  # the same view of the same image, always
        expected = crop_flip(images[idx], views.oy[view, idx], views.ox[view, idx], views.flip[view, idx], 2)
        assert torch.equal(out, expected)
    assert not torch.equal(views.apply(images, torch.arange(6), 0), views.apply(images, torch.arange(6), 1))


def test_teacher_logits_of_every_view_are_the_teacher_on_that_view():
    from training.distill import AugmentViews

    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    images = torch.randn(10, 3, 8, 8)
    views = AugmentViews.make(10, 2, seed=1)
    logits = views.teacher_logits(teacher, images, batch_size=3)
    assert logits.shape == (2, 10, 4)
    with torch.no_grad():
        assert torch.allclose(logits[1], teacher(views.apply(images, torch.arange(10), 1)), atol=1e-6)
