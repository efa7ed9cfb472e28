"""The built-in image task: a folder of images per class at each hospital, a small GroupNorm ResNet.

The schema's `image` spec says the classes (folder names), the size every image is resized to, the
channel count and the normalisation; `.data` reads PNG, JPEG and DICOM files (docs/tasks.md).
"""

from __future__ import annotations

from torch import nn

from common.schema import DatasetSchema
from common.tasks.images.model import SmallResNet

__version__ = "2"  # bump when the model or the loader changes what a site trains (2: the head pools to a 4x4 grid)


def build_model(schema: DatasetSchema) -> nn.Module:
    if schema.image is None:  # the schema refuses this; a direct caller may not have validated
        raise ValueError("the image task needs the schema's image spec")
    return SmallResNet(channels=schema.image.channels, num_classes=schema.num_classes, width=schema.image.width)
