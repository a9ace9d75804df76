"""Test helpers for importing foreign models (not a test module).

`RefResNet20`: a minimal re-statement of the ResNet20 that the DVERGE and TRS
repositories publish (models/resnet.py, models/cifar_resnet.py), with their module
names: conv1, bn1, layer1..3 of BasicBlocks (conv1, bn1, conv2, bn2, downsample =
Sequential(1x1 conv, BN)), AvgPool2d(8), fc. `DvergeWrapper` is DVERGE's ModelWrapper
(normaliser buffers "normalizer.mean/std" + "model."), `TrsNormalize` TRS's
NormalizeLayer (mean/std as plain attributes, not in the state dict).

`make_user_net`: a small user-defined module for parl_core.hooked (factory
"import_helpers:make_user_net").
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RefBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefResNet20(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [RefBlock(cin, planes, stride)] + [RefBlock(planes, planes, 1) for _ in range(2)]
            stages.append(nn.Sequential(*blocks))
            cin = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class DvergeWrapper(nn.Module):
    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.normalizer = nn.Module()
        self.normalizer.register_buffer("mean", torch.tensor(mean))
        self.normalizer.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        x = (x - self.normalizer.mean.view(1, -1, 1, 1)) / self.normalizer.std.view(1, -1, 1, 1)
        return self.model(x)


class TrsNormalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.means, self.sds = torch.tensor(mean), torch.tensor(std)  # not buffers, as in TRS

    def forward(self, x):
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters (fresh ones are 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.num_batches_tracked.fill_(7)
    return model.eval()


class UserNet(nn.Module):
    """A small user-defined CNN for 1x8x8 digits: two convs (one with BN), a linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def make_user_net():
    return UserNet()


NOT_A_MODULE = 3


def make_not_a_module():
    return "not a module"


def save_user_net_ensemble(folder, name: str = "user_net", members: int = 2):
    """A digits checkpoint of `members` user-defined `make_user_net` models (seeded), as the
    dashboard sees one imported by its operator; returns its path. The server needs
    PARL_MODEL_FACTORIES=import_helpers:make_user_net to open it."""
    import parl_core as pc
    torch.manual_seed(0)
    ens = pc.Ensemble([pc.hooked.HookedModel(make_user_net(), num_classes=10, in_channels=1,
                                             factory="import_helpers:make_user_net")
                       for _ in range(members)])
    path = folder / f"{name}.safetensors"
    pc.save_checkpoint(path, ens, {"dataset": "digits", "method": "ce_only"})
    return path
