"""Each rule against a direct NumPy evaluation of the paper's formulas, and conservation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPGraph, explain

from .reference import (
    dense_matrix,
    divide,
    epsilon_rule,
    max_pool_winners,
    winner_takes_all,
    zb_rule,
    zplus_rule,
)

LAYER_RULES = {"epsilon": epsilon_rule, "zplus": zplus_rule}


def _randomise_norm(norm):
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)
        norm.running_mean.uniform_(-0.3, 0.3)
        norm.running_var.uniform_(0.5, 1.5)


def sequential_net():
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),  # 3x3 -> 2x2: overlapping, non-integer windows
        nn.Flatten(),
        nn.Linear(20, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).double()
    _randomise_norm(net[1])
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-0.2, 0.2)
    return net


def reference_sequential(net, x, eps, low, high, train, rule="epsilon", zb=True):
    """LRP of ``net`` for one image ``x`` (2, 10, 10), all 3 classes, in NumPy; ``rule`` for the
    convolution and linear layers, zB or ``rule`` for the first."""
    layer_rule = LAYER_RULES[rule]
    conv1, bn, _, pool, conv2, _, avg, _, fc1, _, fc2 = net
    a0 = x.numpy().ravel()
    W1 = dense_matrix(lambda t: F.conv2d(t, conv1.weight, None, 1, 1), (2, 10, 10))
    y1 = W1 @ a0 + np.repeat(conv1.bias.detach().numpy(), 100)
    if train:
        mean, var = y1.reshape(4, 100).mean(1), y1.reshape(4, 100).var(1)
    else:
        mean, var = bn.running_mean.numpy(), bn.running_var.numpy()
    scale = bn.weight.detach().numpy() / np.sqrt(var + bn.eps)
    shift = bn.bias.detach().numpy() - mean * scale
    W1f = np.repeat(scale, 100)[:, None] * W1  # Eq. 25
    b1f = np.repeat(scale * conv1.bias.detach().numpy() + shift, 100)  # Eq. 26
    a1 = np.maximum(W1f @ a0 + b1f, 0)
    winners = max_pool_winners(a1.reshape(4, 10, 10), 3, 2, 1)
    a2 = a1[winners]
    W3 = dense_matrix(lambda t: F.conv2d(t, conv2.weight, None, 2, 1), (4, 5, 5))
    b3 = np.repeat(conv2.bias.detach().numpy(), 9)
    a3 = np.maximum(W3 @ a2 + b3, 0)
    P = dense_matrix(lambda t: F.adaptive_avg_pool2d(t, 2), (5, 3, 3))
    a4 = P @ a3
    W5, b5 = fc1.weight.detach().numpy(), fc1.bias.detach().numpy()
    a5 = np.maximum(W5 @ a4 + b5, 0)
    W6, b6 = fc2.weight.detach().numpy(), fc2.bias.detach().numpy()
    logits = W6 @ a5 + b6
    lo = np.repeat(np.asarray(low, dtype=np.float64), 100)
    hi = np.repeat(np.asarray(high, dtype=np.float64), 100)
    maps = []
    for k in range(3):
        R = np.zeros(3)
        R[k] = logits[k]
        R = layer_rule(a5, W6, b6, R, eps)
        R = layer_rule(a4, W5, b5, R, eps)
        R = epsilon_rule(a3, P, np.zeros(P.shape[0]), R, eps)  # Alg. 7
        R = layer_rule(a2, W3, b3, R, eps)
        R = winner_takes_all(winners, R, a1.size)  # Alg. 8
        # Alg. 10 on the fused layer
        R = zb_rule(a0, W1f, lo, hi, R, eps) if zb else layer_rule(a0, W1f, b1f, R, eps)
        maps.append(R.reshape(2, 10, 10))
    return logits, np.stack(maps)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("train", [False, True])
def test_sequential_net_matches_reference(eps, train):
    net = sequential_net().train(train)
    low, high = [-0.5, 0.0], [1.0, 2.0]  # per-channel zB bounds
    x = torch.rand(3, 2, 10, 10, dtype=torch.float64)
    x[:, 0] = x[:, 0] * 1.5 - 0.5
    x[:, 1] = x[:, 1] * 2.0
    logits, heatmaps = LRPGraph(net, epsilon=eps, zb=True, low=low, high=high)(x)
    for b in range(3):
        # In training mode the norm uses the statistics of the whole batch.
        if train:
            ref_logits, ref_maps = _reference_with_batch_stats(net, x, b, eps, low, high)
        else:
            ref_logits, ref_maps = reference_sequential(net, x[b], eps, low, high, train=False)
        np.testing.assert_allclose(logits[b].detach().numpy(), ref_logits, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(heatmaps[b].detach().numpy(), ref_maps, rtol=1e-8, atol=1e-10)


def _reference_with_batch_stats(net, x, b, eps, low, high, **kwargs):
    conv1, bn = net[0], net[1]
    with torch.no_grad():
        y = conv1(x)
    saved = (bn.running_mean.clone(), bn.running_var.clone())
    try:
        bn.running_mean.copy_(y.mean((0, 2, 3)))
        bn.running_var.copy_(y.var((0, 2, 3), unbiased=False))
        return reference_sequential(net, x[b], eps, low, high, train=False, **kwargs)
    finally:
        bn.running_mean.copy_(saved[0])
        bn.running_var.copy_(saved[1])


class SkipNet(nn.Module):
    """Residual addition, a concatenation whose input also feeds the addition, and a
    batch norm after the concatenation with no layer before it (as in DenseNet)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 3, 1)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        a = F.relu(self.conv1(x), inplace=True)
        b = self.conv2(a)
        b += a
        s = b.relu_()
        c = F.relu(self.norm(torch.cat([s, a], dim=1)))
        y = F.relu(self.conv3(c))
        return self.fc(torch.flatten(y, 1))


def reference_skipnet(net, x, eps):
    a0 = x.numpy().ravel()
    conv = lambda m, shape: (  # noqa: E731
        dense_matrix(lambda t: F.conv2d(t, m.weight, None, 1, m.padding), shape),
        np.repeat(m.bias.detach().numpy(), 36),
    )
    W1, b1 = conv(net.conv1, (3, 6, 6))
    a = np.maximum(W1 @ a0 + b1, 0)
    W2, b2 = conv(net.conv2, (4, 6, 6))
    bpre = W2 @ a + b2
    zsum = bpre + a
    s = np.maximum(zsum, 0)
    c = np.concatenate([s, a])
    norm = net.norm
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().numpy()
    shift = norm.bias.detach().numpy() - norm.running_mean.numpy() * scale
    Wn, bn_ = np.diag(np.repeat(scale, 36)), np.repeat(shift, 36)
    cn = np.maximum(Wn @ c + bn_, 0)
    W3, b3 = conv(net.conv3, (8, 6, 6))
    y = np.maximum(W3 @ cn + b3, 0)
    Wf, bf = net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy()
    logits = Wf @ y + bf
    maps = []
    for k in range(4):
        R = np.zeros(4)
        R[k] = logits[k]
        R = epsilon_rule(y, Wf, bf, R, eps)
        R = epsilon_rule(cn, W3, b3, R, eps)
        R = epsilon_rule(c, Wn, bn_, R, eps)  # the lone batch norm, its own affine layer
        R_s, R_a = R[:144], R[144:]  # concatenation: split by channel
        share = divide(R_s, zsum, eps)
        R_b, R_a_skip = bpre * share, a * share  # residual addition
        R_a = R_a + R_a_skip + epsilon_rule(a, W2, b2, R_b, eps)  # Eq. 32: every consumer adds up
        maps.append(zb_rule(a0, W1, np.zeros(108), np.ones(108), R_a, eps).reshape(3, 6, 6))
    return logits, np.stack(maps)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.2])
def test_skip_connections_match_reference(eps):
    net = SkipNet().double().eval()
    _randomise_norm(net.norm)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    logits, heatmaps = LRPGraph(net, epsilon=eps)(x)
    for b in range(2):
        ref_logits, ref_maps = reference_skipnet(net, x[b], eps)
        np.testing.assert_allclose(logits[b].detach().numpy(), ref_logits, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(heatmaps[b].detach().numpy(), ref_maps, rtol=1e-8, atol=1e-10)


# -- conservation ------------------------------------------------------------------------------
def bias_free_net():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(6, 8, 3, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(72, 4, bias=False),
    ).double()


def test_zb_and_lrp0_conserve_relevance_without_biases():
    net = bias_free_net().eval()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    logits, heatmaps = LRPGraph(net, epsilon=0.0, zb=True)(x)
    torch.testing.assert_close(heatmaps.sum((2, 3, 4)), logits, rtol=1e-10, atol=1e-12)


def test_epsilon_absorbs_relevance_as_eq3_predicts():
    layer = nn.Linear(10, 3, bias=False).double()
    x = torch.randn(4, 10, dtype=torch.float64)
    for eps in (0.01, 0.5):
        heatmaps = explain(layer, x, epsilon=eps, zb=False)
        y = layer(x).detach()
        expected = y * y / (y + eps * torch.where(y >= 0, 1.0, -1.0).double())
        torch.testing.assert_close(heatmaps.sum(-1), expected, rtol=1e-12, atol=1e-14)
        assert (heatmaps.sum(-1).abs() < y.abs()).all()


def test_max_pool_overlap_sums_relevance_of_every_window_won():
    pool = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 4 * 2, 3, bias=False))
    pool = pool.double()
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64) * 0.1
    x[0, 0, 3, 3] = 5.0  # inside the 3x3 windows of outputs (1, 1), (1, 2), (2, 1) and (2, 2)
    logits, heatmaps = LRPGraph(pool, epsilon=0.0, zb=False)(x)
    pooled = F.max_pool2d(x, 3, 2, 1)
    won = (pooled[0, 0] == 5.0).nonzero().tolist()
    assert len(won) == 4
    weight = pool[2].weight.detach().view(3, 2, 4, 4)
    for k in range(3):
        expected = sum(5.0 * weight[k, 0, i, j] for i, j in won)  # R of each window = a * w (LRP-0)
        torch.testing.assert_close(heatmaps[0, k, 0, 3, 3], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(heatmaps.sum((2, 3, 4)), logits, rtol=1e-12, atol=1e-12)


def test_adaptive_average_pool_is_exact_for_overlapping_windows():
    net = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(3 * 49, 2, bias=False)).double()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    logits, heatmaps = LRPGraph(net, epsilon=0.0, zb=False)(x)
    torch.testing.assert_close(heatmaps.sum((2, 3, 4)), logits, rtol=1e-12, atol=1e-12)
    x.requires_grad_(True)
    grad = torch.autograd.grad(net(x)[:, 1].sum(), x)[0]
    torch.testing.assert_close(heatmaps[:, 1], (x * grad).detach(), rtol=1e-12, atol=1e-14)


def test_average_pool_with_ceil_mode_and_padding():
    net = nn.Sequential(
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2, bias=False),
    ).double()
    x = torch.rand(2, 3, 7, 7, dtype=torch.float64)
    logits, heatmaps = LRPGraph(net, epsilon=0.0, zb=False)(x)
    x.requires_grad_(True)
    grad = torch.autograd.grad(net(x)[:, 0].sum(), x)[0]
    torch.testing.assert_close(heatmaps[:, 0], (x * grad).detach(), rtol=1e-12, atol=1e-14)


# -- LRP-z+ (and LRP-epsilon) on small VGG-, ResNet- and DenseNet-like models ---------------------
@pytest.mark.parametrize("eps", [0.0, 0.01])
@pytest.mark.parametrize("zb", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_zplus_on_a_vgg_like_net_matches_reference(eps, zb, train):
    net = sequential_net().train(train)
    low, high = [-0.5, 0.0], [1.0, 2.0]
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64)
    x[:, 0] = x[:, 0] * 1.5 - 0.5  # negative inputs: the first layer's x- term matters without zB
    x[:, 1] = x[:, 1] * 2.0
    _, heatmaps = LRPGraph(net, epsilon=eps, zb=zb, low=low, high=high, rule="zplus")(x)
    for b in range(2):
        if train:
            _, ref = _reference_with_batch_stats(net, x, b, eps, low, high, rule="zplus", zb=zb)
        else:
            _, ref = reference_sequential(net, x[b], eps, low, high, train=False, rule="zplus", zb=zb)
        np.testing.assert_allclose(heatmaps[b].detach().numpy(), ref, rtol=1e-6, atol=1e-10)


def _conv_matrix(conv, in_shape):
    """Dense (W, b) of a convolution on inputs of shape ``in_shape`` (C, H, W)."""
    W = dense_matrix(lambda t: F.conv2d(t, conv.weight, None, conv.stride, conv.padding), in_shape)
    per_channel = W.shape[0] // conv.out_channels
    b = np.repeat(conv.bias.detach().numpy(), per_channel) if conv.bias is not None else np.zeros(W.shape[0])
    return W, b


def _norm_affine(norm, spatial):
    """Per-element (scale, shift) of a batch norm in eval mode over ``spatial`` positions per channel."""
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().numpy()
    shift = norm.bias.detach().numpy() - norm.running_mean.numpy() * scale
    return np.repeat(scale, spatial), np.repeat(shift, spatial)


def _fused(conv, norm, in_shape):
    """Eqs. 25, 26: the convolution with the batch norm after it folded in."""
    W, b = _conv_matrix(conv, in_shape)
    scale, shift = _norm_affine(norm, W.shape[0] // conv.out_channels)
    return scale[:, None] * W, scale * b + shift


def _randomised(net):
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomise_norm(m)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            with torch.no_grad():
                m.bias.uniform_(-0.2, 0.2)
    return net.double().eval()


class ResNetLike(nn.Module):
    """Stem conv + BN + ReLU + max pool, a basic block with an identity skip, a basic block with
    a strided 1x1 conv + BN shortcut, global average pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c11, self.n11 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c12, self.n12 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c21, self.n21 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c22, self.n22 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.down, self.down_bn = nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a = F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 2)
        h = self.n12(self.c12(F.relu(self.n11(self.c11(a)))))
        a = F.relu(h + a)
        g = self.n22(self.c22(F.relu(self.n21(self.c21(a)))))
        a = F.relu(g + self.down_bn(self.down(a)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


def reference_resnet_like(net, x, eps, rule, zb):
    layer_rule = LAYER_RULES[rule]
    a0 = x.numpy().ravel()
    Ws, bs = _fused(net.stem, net.stem_bn, (3, 8, 8))
    a1 = np.maximum(Ws @ a0 + bs, 0)
    winners = max_pool_winners(a1.reshape(4, 8, 8), 2, 2, 0)
    a2 = a1[winners]
    W11, b11 = _fused(net.c11, net.n11, (4, 4, 4))
    h1 = np.maximum(W11 @ a2 + b11, 0)
    W12, b12 = _fused(net.c12, net.n12, (4, 4, 4))
    h2 = W12 @ h1 + b12
    s = h2 + a2
    a3 = np.maximum(s, 0)
    W21, b21 = _fused(net.c21, net.n21, (4, 4, 4))
    g1 = np.maximum(W21 @ a3 + b21, 0)
    W22, b22 = _fused(net.c22, net.n22, (6, 2, 2))
    g2 = W22 @ g1 + b22
    Wd, bd = _fused(net.down, net.down_bn, (4, 4, 4))
    d = Wd @ a3 + bd
    t = g2 + d
    a4 = np.maximum(t, 0)
    P = dense_matrix(lambda v: F.adaptive_avg_pool2d(v, 1), (6, 2, 2))
    a5 = P @ a4
    Wf, bf = net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy()
    logits = Wf @ a5 + bf
    maps = []
    for k in range(3):
        R = np.zeros(3)
        R[k] = logits[k]
        R = layer_rule(a5, Wf, bf, R, eps)
        R = epsilon_rule(a4, P, np.zeros(P.shape[0]), R, eps)  # pooling: LRP-epsilon in both composites
        share = divide(R, t, eps)  # the shortcut's addition
        R_a3 = layer_rule(a3, W21, b21, layer_rule(g1, W22, b22, g2 * share, eps), eps)
        R_a3 = R_a3 + layer_rule(a3, Wd, bd, d * share, eps)
        share = divide(R_a3, s, eps)  # the identity skip
        R_a2 = layer_rule(a2, W11, b11, layer_rule(h1, W12, b12, h2 * share, eps), eps) + a2 * share
        R_a1 = winner_takes_all(winners, R_a2, a1.size)
        lo, hi = np.zeros(a0.size), np.ones(a0.size)
        R = zb_rule(a0, Ws, lo, hi, R_a1, eps) if zb else layer_rule(a0, Ws, bs, R_a1, eps)
        maps.append(R.reshape(3, 8, 8))
    return logits, np.stack(maps)


class DenseNetLike(nn.Module):
    """A dense block of two layers (norm -> ReLU -> conv on the concatenation of all earlier
    maps; the block's output repeats the second layer's concatenation), then a lone norm,
    average pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.n1, self.c1 = nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, padding=1)
        self.n2, self.c2 = nn.BatchNorm2d(6), nn.Conv2d(6, 2, 3, padding=1)
        self.n3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x):
        x0 = F.relu(self.stem(x))
        f1 = self.c1(F.relu(self.n1(x0)))
        f2 = self.c2(F.relu(self.n2(torch.cat([x0, f1], 1))))
        y = F.avg_pool2d(F.relu(self.n3(torch.cat([x0, f1, f2], 1))), 2)
        return self.fc(torch.flatten(y, 1))


def reference_densenet_like(net, x, eps, rule, zb):
    layer_rule = LAYER_RULES[rule]
    a0 = x.numpy().ravel()
    Ws, bs = _conv_matrix(net.stem, (3, 4, 4))
    x0 = np.maximum(Ws @ a0 + bs, 0)
    s1, t1 = _norm_affine(net.n1, 16)
    r1 = np.maximum(s1 * x0 + t1, 0)
    W1, b1 = _conv_matrix(net.c1, (4, 4, 4))
    f1 = W1 @ r1 + b1
    c2 = np.concatenate([x0, f1])
    s2, t2 = _norm_affine(net.n2, 16)
    r2 = np.maximum(s2 * c2 + t2, 0)
    W2, b2 = _conv_matrix(net.c2, (6, 4, 4))
    f2 = W2 @ r2 + b2
    c3 = np.concatenate([x0, f1, f2])
    s3, t3 = _norm_affine(net.n3, 16)
    r3 = np.maximum(s3 * c3 + t3, 0)
    P = dense_matrix(lambda v: F.avg_pool2d(v, 2), (8, 4, 4))
    p = P @ r3
    Wf, bf = net.fc.weight.detach().numpy(), net.fc.bias.detach().numpy()
    logits = Wf @ p + bf
    maps = []
    for k in range(3):
        R = np.zeros(3)
        R[k] = logits[k]
        R = layer_rule(p, Wf, bf, R, eps)
        R = epsilon_rule(r3, P, np.zeros(P.shape[0]), R, eps)
        R = epsilon_rule(c3, np.diag(s3), t3, R, eps)  # a lone norm: LRP-epsilon in both composites
        R_x0, R_f1, R_f2 = R[:64], R[64:96], R[96:]
        R = epsilon_rule(c2, np.diag(s2), t2, layer_rule(r2, W2, b2, R_f2, eps), eps)
        R_x0, R_f1 = R_x0 + R[:64], R_f1 + R[64:]
        R_x0 = R_x0 + epsilon_rule(x0, np.diag(s1), t1, layer_rule(r1, W1, b1, R_f1, eps), eps)
        lo, hi = np.zeros(a0.size), np.ones(a0.size)
        R = zb_rule(a0, Ws, lo, hi, R_x0, eps) if zb else layer_rule(a0, Ws, bs, R_x0, eps)
        maps.append(R.reshape(3, 4, 4))
    return logits, np.stack(maps)


@pytest.mark.parametrize("rule", ["zplus", "epsilon"])
@pytest.mark.parametrize("zb", [True, False])
@pytest.mark.parametrize("model,reference,size", [
    (ResNetLike, reference_resnet_like, 8),
    (DenseNetLike, reference_densenet_like, 4),
], ids=["resnet", "densenet"])
def test_resnet_and_densenet_like_nets_match_reference(model, reference, size, rule, zb):
    net = _randomised(model())
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    eps = 0.01
    logits, heatmaps = LRPGraph(net, epsilon=eps, zb=zb, rule=rule)(x)
    for b in range(2):
        ref_logits, ref_maps = reference(net, x[b], eps, rule, zb)
        np.testing.assert_allclose(logits[b].detach().numpy(), ref_logits, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(heatmaps[b].detach().numpy(), ref_maps, rtol=1e-6, atol=1e-10)


def test_zplus_differs_from_epsilon_and_only_counts_positive_contributions():
    """One linear layer, positive inputs: R = x W+ s with z = W+ x + b+, so a negative weight
    gets no relevance at all (the reference tests above would pass for epsilon otherwise)."""
    layer = nn.Linear(4, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64))
        layer.bias.fill_(-0.5)
    x = torch.tensor([[1.0, 1.0, 2.0, 0.5]], dtype=torch.float64)
    logits, heatmaps = LRPGraph(layer, epsilon=0.0, zb=False, rule="zplus")(x)
    z = 1.0 + 1.0 + 1.5  # positive parts only, b+ = 0
    expected = torch.tensor([1.0, 0.0, 1.0, 1.5], dtype=torch.float64) / z * logits[0, 0]
    torch.testing.assert_close(heatmaps[0, 0], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("zb", [True, False])
def test_zplus_conserves_relevance_without_biases(zb):
    """Without biases and with epsilon = 0, z+ hands every layer's relevance on whole (each
    denominator is exactly the sum of its shares), and so does zB."""
    net = bias_free_net().eval()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    if not zb:
        x = x - 0.3  # negative inputs use the x- W- part of the first layer
    logits, heatmaps = LRPGraph(net, epsilon=0.0, zb=zb, rule="zplus")(x)
    torch.testing.assert_close(heatmaps.sum((2, 3, 4)), logits, rtol=1e-10, atol=1e-12)
