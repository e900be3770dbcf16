"""Build an `nn.Module` from an ArchSpec, in the manner of torchvision's resnet.py; and set a whitened stem's
frozen filters from training images."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.design.spec import IN_CHANNELS, ArchSpec, StageSpec, stem_padding, whitening_channels


# oneDNN's 1x1 convolutions with a stride and fewer input channels than this hang, crash or return wrong
# gradients in training: on AVX2 (jit_avx2_1x1_convolution_bwd_weights, maps of 8 to 64 px) and on AVX-512 at
# maps of 64 px and more (docs/MACHINES.md). Such layers subsample first: the same math, with stride 1.
STRIDED_1X1_MIN_CHANNELS = 16


class SubsampledConv2d(nn.Conv2d):
    """A 1x1 convolution with a stride, computed as every stride-th pixel through a stride-1 1x1 convolution:
    the same outputs and gradients, and the same parameters (a checkpoint loads either way)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


def conv(in_ch: int, out_ch: int, kernel_size: int, stride: int, bias: bool) -> nn.Conv2d:
    if kernel_size == 1 and stride > 1 and in_ch < STRIDED_1X1_MIN_CHANNELS:
        return SubsampledConv2d(in_ch, out_ch, 1, stride=stride, bias=bias)
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU(inplace=True)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, C -> C//r -> C, sigmoid gate."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * s


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel_size: int, shortcut_kernel_size: int,
                 batch_norm: bool, se_ratio: int, dropout: float, downsample: str = "stride", act: str = "relu"):
        super().__init__()
        bias = not batch_norm  # a conv followed by BN needs no bias
        # max-pool downsampling: the convs at stride 1, then 2x2 max pooling (floor: 31 -> 15, as spec.stage_out)
        pooled = stride != 1 and downsample == "maxpool"
        conv_stride = 1 if pooled else stride
        self.pool = nn.MaxPool2d(stride) if pooled else nn.Identity()
        self.conv1 = conv(in_ch, out_ch, kernel_size, conv_stride, bias)
        self.bn1 = norm(out_ch, batch_norm)
        self.act1 = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(out_ch, out_ch, kernel_size, 1, bias)
        self.bn2 = norm(out_ch, batch_norm)
        self.se = SqueezeExcite(out_ch, se_ratio) if se_ratio > 0 else nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv(in_ch, out_ch, shortcut_kernel_size, conv_stride, bias),
                                          norm(out_ch, batch_norm))
            if pooled:  # pool first: the projection then costs a quarter
                self.shortcut.insert(0, nn.MaxPool2d(stride))
        else:
            self.shortcut = nn.Identity()
        self.act2 = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.pool(self.conv1(x))))
        out = self.dropout(out)
        out = self.se(self.bn2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        bn = spec.batch_norm
        if spec.stem.whiten:
            k, whitened = spec.stem.kernel_size, whitening_channels(spec.stem.kernel_size)
            whiten = nn.Conv2d(IN_CHANNELS, whitened, k, padding=stem_padding(k), bias=False)
            whiten.weight.requires_grad_(False)  # frozen: set by whiten_stem, never trained
            self.stem = nn.Sequential(whiten, activation(spec.activation),
                                      conv(whitened, spec.stem.channels, 1, 1, not bn),
                                      norm(spec.stem.channels, bn), activation(spec.activation))
        else:
            self.stem = nn.Sequential(conv(IN_CHANNELS, spec.stem.channels, spec.stem.kernel_size, 1, bias=not bn),
                                      norm(spec.stem.channels, bn), activation(spec.activation))
        in_ch = spec.stem.channels
        stages = []
        for stage in spec.stages:
            stages.append(self._make_stage(in_ch, stage))
            in_ch = stage.channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.MaxPool2d(spec.pool_size) if spec.pooling == "max" else nn.AvgPool2d(spec.pool_size)
        pooled = spec.feature_sizes[-1] // spec.pool_size
        self.fc = nn.Linear(in_ch * pooled * pooled, spec.num_classes)

    def _make_stage(self, in_ch: int, stage: StageSpec) -> nn.Sequential:
        s = self.spec
        blocks = []
        for i in range(stage.blocks):
            blocks.append(BasicBlock(in_ch if i == 0 else stage.channels, stage.channels,
                                     stage.stride if i == 0 else 1, stage.kernel_size,
                                     stage.shortcut_kernel_size, s.batch_norm, s.se_ratio, s.dropout,
                                     stage.downsample, s.activation))
        return nn.Sequential(*blocks)

    @torch.no_grad()
    def whiten_stem(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set a whitened stem's frozen filters from normalised training images (N, 3, 32, 32), as airbench
        does: the eigenvectors of the kxk patches' second moments, each scaled by 1/sqrt(its eigenvalue + eps),
        and their negatives; so the stem's output has (about) unit variance in every direction of patch space."""
        whiten = self.stem[0]
        k = whiten.kernel_size[0]
        dims = IN_CHANNELS * k * k
        moments, patches = torch.zeros(dims, dims, dtype=torch.float64), 0
        for chunk in images.split(256):  # unfolded patches of 5,000 images would take 0.5 GB at once
            flat = F.unfold(chunk.float().cpu(), k).transpose(1, 2).reshape(-1, dims).double()
            moments += flat.T @ flat
            patches += len(flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(moments / patches)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps).view(-1, 1)).flip(0)
        filters = filters.reshape(dims, IN_CHANNELS, k, k)  # unfold's order is the conv weight's: (c, row, col)
        whiten.weight.copy_(torch.cat([filters, -filters]).to(whiten.weight))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (what Grad-CAM looks at)."""
        return self.stages(self.stem(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.fc(torch.flatten(self.pool(features), 1))
        return logits if self.spec.logit_scale == 1 else logits * self.spec.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def build_model(spec: ArchSpec) -> ResNet:
    return ResNet(spec)
