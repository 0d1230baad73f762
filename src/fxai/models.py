"""Small reference models: the CNN (and the small ViT) the demo trains on the synthetic dataset."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Four 3×3 conv blocks (conv, BatchNorm, ReLU; two with stride 2), global average pooling, one linear layer.

    ``features`` is the last convolutional block (a good CAM layer, at 1/4 of
    the input resolution); the GAP + linear head makes CAM apply as published.

    Example:
        >>> model = fxai.models.SmallCNN(classes=4).eval()
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, classes: int = 4, *, channels: int = 3, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = nn.Sequential(block(channels, width, 1), block(width, width, 2), block(width, 2 * width, 2))
        self.features = block(2 * width, 2 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(self.stem(x))).flatten(1))


def small_cnn(classes: int = 4, **options) -> SmallCNN:
    """A :class:`SmallCNN` with random weights (a factory for ``fxai explain --model fxai.models:small_cnn``)."""
    return SmallCNN(classes, **options)


def small_vit(classes: int = 4, *, size: int = 32, width: int = 48, depth: int = 4, heads: int = 3,
              patch: int = 4, stem: bool = True) -> nn.Module:
    """A small torchvision ``VisionTransformer`` for the demo (``fxai demo --arch vit``): ``patch``×``patch``
    patches of ``size``×``size`` inputs, a class token, ``depth`` blocks of ``heads`` heads, ``width`` channels.

    ``stem``: the patches are embedded by a few stride-2 3×3 convolutions (torchvision's ``conv_stem_configs``;
    Xiao et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021) instead of one ``patch``×``patch``
    convolution; ``patch`` is then a power of 2. On the synthetic shapes it learns in a third of the steps.

    Example:
        >>> fxai.models.small_vit(classes=4).eval()(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """
    from torchvision.models import VisionTransformer
    from torchvision.models.vision_transformer import ConvStemConfig

    stems = None
    if stem:
        if patch < 2 or patch & (patch - 1):
            raise ValueError(f"small_vit: with stem=True, patch must be a power of 2, got {patch}")
        count = patch.bit_length() - 1
        stems = [ConvStemConfig(out_channels=max(8, width >> (count - k)), kernel_size=3, stride=2)
                 for k in range(count)]
    return VisionTransformer(image_size=size, patch_size=patch, num_layers=depth, num_heads=heads, hidden_dim=width,
                             mlp_dim=2 * width, num_classes=classes, conv_stem_configs=stems)
