"""Networks to retrain in ROAR/KAR: a CIFAR-style residual network and the demo's small CNN, by name."""

from __future__ import annotations

from torch import nn

from ..models import SmallCNN, small_vit


class _Basic(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 strided projection) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """He et al.'s CIFAR residual network (ResNet-(6n+2)): a 3×3 stem, three stages of ``n`` basic blocks
    with ``width``, ``2·width``, ``4·width`` channels (strides 1, 2, 2), global average pooling, a linear layer.

    ``depth=8`` (one block per stage) is ResNet-8, ``depth=20`` ResNet-20. ``layer3`` is the last
    convolutional stage (the CAM layer, at 1/4 of the input resolution).

    Example:
        >>> net = fxai.roar.ResNet(classes=4, depth=8).eval()
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, classes: int = 10, *, depth: int = 8, width: int = 16, channels: int = 3):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 for n >= 1 (8, 14, 20, ...), got {depth!r}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())

        def stage(cin, cout, stride):
            return nn.Sequential(_Basic(cin, cout, stride), *[_Basic(cout, cout, 1) for _ in range(n - 1)])

        self.layer1 = stage(width, width, 1)
        self.layer2 = stage(width, 2 * width, 2)
        self.layer3 = stage(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))).flatten(1))


ARCHITECTURES = ("smallcnn", "resnet8", "resnet20")
CAM_LAYERS = {"smallcnn": "features", "resnet8": "layer3", "resnet20": "layer3"}


def build(arch: str, classes: int, *, channels: int = 3, width: int = 16, size: int | None = None) -> nn.Module:
    """A freshly initialised network by name: ``"smallcnn"`` (:class:`fxai.models.SmallCNN`), ``"resnet8"``,
    ``"resnet20"``, or ``"small_vit"`` (:func:`fxai.models.small_vit` for ``size``×``size`` RGB inputs: the demo's
    ViT, ``width`` channels, 3 heads where ``width`` divides by 3, else 2)."""
    if arch == "small_vit":
        return small_vit(classes, size=size or 32, width=width, heads=3 if width % 3 == 0 else 2)
    if arch == "smallcnn":
        return SmallCNN(classes, channels=channels, width=width)
    if arch in ("resnet8", "resnet20"):
        return ResNet(classes, depth=int(arch[6:]), width=width, channels=channels)
    raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHITECTURES))}; got {arch!r}")
