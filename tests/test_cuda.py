"""On a CUDA GPU: the engine's heatmaps match the CPU's, LRP-0 equals Gradient*Input, and ISNets train
in full and mixed precision, with checkpoints that load on the CPU.  Skipped without a GPU."""

import csv
import math
import warnings

import lightning as L
import pytest
import torch
import torchvision

from isnet import LRPGraph
from isnet.data import MaskedImageDataModule
from isnet.data.radiographs import generate_radiographs
from isnet.systems.isnet import ISNetModule
from isnet.systems.registry import load_system
from isnet.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "densenet121"])
def test_gpu_heatmaps_and_gradients_match_the_cpu(name, channels_last):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=3).double().train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()  # the CPU and the GPU draw different dropout masks; batch norm stays in training
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for device in ("cpu", "cuda"):
        model.load_state_dict(state)
        m = model.to(device)
        xd = x.to(device)
        if channels_last and device == "cuda":
            m, xd = m.to(memory_format=torch.channels_last), xd.contiguous(memory_format=torch.channels_last)
        logits, heatmaps = LRPGraph(m)(xd)
        grads = torch.autograd.grad((heatmaps ** 2).sum(), [p for p in m.parameters()])
        results.append((logits.detach().cpu(), heatmaps.detach().cpu(), [g.cpu() for g in grads]))
    (lc, hc, gc), (lg, hg, gg) = results
    torch.testing.assert_close(lg, lc, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hg, hc, rtol=1e-7, atol=1e-9 * hc.abs().max().item())
    # One absolute scale for all: a convolution's bias before a batch norm has a zero gradient,
    # which both devices give as rounding noise.
    scale = max(g.abs().max().item() for g in gc)
    for a, b in zip(gg, gc):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * scale)


def test_lrp0_equals_gradient_times_input_on_the_gpu():
    model = torchvision.models.densenet121(weights=None, num_classes=3).double().eval().cuda()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64, device="cuda")
    _, heatmaps = LRPGraph(model, epsilon=0.0, zb=False)(x)
    xs = x.repeat_interleave(3, dim=0).requires_grad_(True)
    picked = model(xs).view(2, 3, 3).diagonal(dim1=1, dim2=2).sum()
    (grad,) = torch.autograd.grad(picked, xs)
    reference = (xs * grad).view(2, 3, 3, 64, 64)
    assert ((heatmaps - reference).abs().max() / reference.abs().max()).item() < 1e-10


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    root = generate_radiographs(tmp_path_factory.mktemp("xr"), per_class=(16, 6, 4, 4), size=32, seed=0)
    dm = MaskedImageDataModule(root, size=32, grayscale=True, augment=False, batch_size=8)
    dm.setup()
    return dm


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_isnet_trains_on_the_gpu(radiographs, tmp_path, precision):
    L.seed_everything(0, verbose=False)
    module = ISNetModule("densenet121", radiographs.num_classes, P=0.7, lr=0.01, momentum=0.9, C1=0.1, C2=50.0,
                         optimizer="sgd", lr_schedule="constant", heatmap_warmup_epochs=0)
    module, best = train(module, radiographs, tmp_path, max_epochs=5, progress=False, precision=precision,
                         accelerator="gpu", devices=1)
    with open(tmp_path / "logs" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 5 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0], losses
    images = next(iter(radiographs.val_dataloader()))["image"][:4]
    with torch.no_grad():  # in float64: float32 convolutions on the GPU may use TF32
        on_gpu = load_system(best, map_location="cuda").double().eval()(images.double().cuda()).cpu()
        on_cpu = load_system(best, map_location="cpu").double().eval()(images.double())
    torch.testing.assert_close(on_cpu, on_gpu, rtol=1e-8, atol=1e-10)
