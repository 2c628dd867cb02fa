"""Reference architectures in PyTorch, written from their papers and torchvision's reference
implementations (torchvision itself is not needed): ResNet-18 / ResNet-50 (He et al. 2015, basic
and bottleneck blocks, torchvision's stride on the 3x3), MobileNetV2 (Sandler et al. 2018,
inverted residuals, ReLU6, width multiple of 8), a DenseNet block (Huang et al. 2017, BN-ReLU-Conv
bottleneck layers concatenated), an Inception block (Szegedy et al. 2014, four parallel branches).

Each is a plain nn.Module whose forward has the residuals and branches: what a user has."""
from __future__ import annotations

import torch
from torch import nn


def _bn_init(model, seed):
    """Non-trivial BatchNorm statistics (a freshly built net has mean 0, var 1: folding would be
    checked against nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, c, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or cin != c:
            self.downsample = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != c * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, c * 4, 1, stride, bias=False), nn.BatchNorm2d(c * 4))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = width, []
        for i, n in enumerate(layers):
            c = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, c, 2 if j == 0 and i > 0 else 1))
                cin = c * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes=1000, width=64, seed=0):
    torch.manual_seed(seed)
    return _bn_init(ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width), seed)


def resnet50(num_classes=1000, width=64, seed=0):
    torch.manual_seed(seed)
    return _bn_init(ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width), seed)


def _make_divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = [ConvBNReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1)]  # expansion t, channels c, repeats n, first stride s

    def __init__(self, num_classes=1000, width_mult=1.0):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        feats = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self.CONFIG:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(ConvBNReLU6(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenetv2(num_classes=1000, width_mult=1.0, seed=0):
    torch.manual_seed(seed)
    return _bn_init(MobileNetV2(num_classes, width_mult), seed)


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size=4):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlockNet(nn.Module):
    """A stem, one dense block of four layers, a transition and a classifier."""

    def __init__(self, cin=3, growth=8, layers=4, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(cin, 2 * growth, 3, padding=1, bias=False)
        c = 2 * growth
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(DenseLayer(c, growth))
            c += growth
        self.norm, self.relu = nn.BatchNorm2d(c), nn.ReLU()
        self.trans = nn.Conv2d(c, c // 2, 1, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c // 2, num_classes)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        x = self.pool(self.trans(self.relu(self.norm(torch.cat(features, 1)))))
        return self.fc(x.mean((2, 3)))


def densenet_block(seed=0, **kw):
    torch.manual_seed(seed)
    return _bn_init(DenseBlockNet(**kw), seed)


class BasicConv(nn.Sequential):
    def __init__(self, cin, cout, k, **kw):
        super().__init__(nn.Conv2d(cin, cout, k, bias=False, **kw), nn.BatchNorm2d(cout, eps=0.001), nn.ReLU())


class InceptionBlock(nn.Module):
    """GoogLeNet's module: 1x1, 1x1 -> 3x3, 1x1 -> 3x3 (torchvision's "5x5"), pool -> 1x1; concatenated."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.branch1 = BasicConv(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv(cin, c3r, 1), BasicConv(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv(cin, c5r, 1), BasicConv(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), BasicConv(cin, pp, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = BasicConv(3, 16, 3, padding=1)
        self.inc = InceptionBlock(16, 8, 8, 12, 4, 6, 6)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.inc(self.stem(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def inception_block(seed=0, **kw):
    torch.manual_seed(seed)
    return _bn_init(InceptionNet(**kw), seed)


class DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A small U-Net (Ronneberger et al. 2015), as the common PyTorch implementations with bilinear
    upsampling write it: contracting path of double convolutions and 2x2 max pools, expanding path of
    upsampling, concatenation with the skip connection across the scale, and double convolutions."""

    def __init__(self, cin=3, classes=2, w=8, bilinear=True):
        super().__init__()
        self.inc, self.down1, self.down2 = DoubleConv(cin, w), DoubleConv(w, 2 * w), DoubleConv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear" if bilinear else "nearest",
                              align_corners=False if bilinear else None)
        self.conv_up2, self.conv_up1 = DoubleConv(6 * w, 2 * w), DoubleConv(3 * w, w)
        self.outc = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(self.pool(x1))
        x3 = self.down2(self.pool(x2))
        y = self.conv_up2(torch.cat([x2, self.up(x3)], dim=1))
        y = self.conv_up1(torch.cat([x1, nn.functional.interpolate(y, scale_factor=2, mode="nearest")], dim=1))
        return self.outc(y)


def unet(seed=0, **kw):
    torch.manual_seed(seed)
    return _bn_init(UNet(**kw), seed)
