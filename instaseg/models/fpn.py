"""Feature pyramid network: C2..C5 -> P2..P5 (top-down path + lateral 1x1 convs) and P6 by max-pooling P5."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Names of the pyramid levels, finest first, as torchvision names them (the poolers and checkpoints use them).
FPN_LEVEL_NAMES = ("0", "1", "2", "3", "pool")
# Input-image pixels per feature cell of each level (P2..P6), for images padded to a multiple of 32.
FPN_LEVEL_STRIDES = (4, 8, 16, 32, 64)


class FeaturePyramidNetwork(nn.Module):
    """`forward([C2..C5]) -> OrderedDict('0': P2, '1': P3, '2': P4, '3': P5, 'pool': P6)` of `out_channels`.

    Strides 4, 8, 16, 32, 64. P6 is `max_pool2d(P5, kernel 1, stride 2)` (used by the RPN only). Each block is
    a one-element `nn.Sequential` so parameter names are `inner_blocks.i.0.weight` as in current torchvision.
    """

    def __init__(self, in_channels_list: list[int], out_channels: int = 256) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, out_channels, kernel_size=1)) for channels in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1))
            for _ in in_channels_list
        )
        self.out_channels = out_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # torchvision's published COCO checkpoints predate the Sequential wrapper: `inner_blocks.i.weight`.
        for blocks in ("inner_blocks", "layer_blocks"):
            for index in range(len(self.inner_blocks)):
                for kind in ("weight", "bias"):
                    old_key = f"{prefix}{blocks}.{index}.{kind}"
                    if old_key in state_dict:
                        state_dict[f"{prefix}{blocks}.{index}.0.{kind}"] = state_dict.pop(old_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, features: list[Tensor]) -> OrderedDict[str, Tensor]:
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for index in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[index](features[index])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[index](last_inner))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return OrderedDict(zip(FPN_LEVEL_NAMES, results, strict=True))


def pooled_pyramid_features(
    levels: Sequence[Tensor], strides: Sequence[int], image_sizes: Sequence[tuple[int, int]]
) -> Tensor:
    """One feature vector per image of a padded batch, for diversity sampling (`instaseg.active`): each level
    `(B, C, H / stride, W / stride)` averaged over the cells of image i's own `image_sizes[i]` (h, w) pixels
    (never its padding), then the levels averaged -> `(B, C)`."""
    pooled = []
    for index, (height, width) in enumerate(image_sizes):
        means = [
            level[index, :, : -(-height // stride), : -(-width // stride)].mean(dim=(1, 2))
            for level, stride in zip(levels, strides, strict=True)
        ]
        pooled.append(torch.stack(means).mean(dim=0))
    return torch.stack(pooled)
