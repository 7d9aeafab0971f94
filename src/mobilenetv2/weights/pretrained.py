"""Registry of downloadable pretrained weights (the table only): URL, hash, config,
preprocessing, labels and published accuracy per entry. `hub.py` downloads and converts them.

Sources (all ImageNet-1k, top-1 / top-5 % as published by their authors):
- torchvision `MobileNet_V2_Weights.IMAGENET1K_V1` / `IMAGENET1K_V2` (torchvision model card;
  V2 needs resize 232, vision PR#5560). The hash is the 8-hex sha256 prefix torchvision puts in
  its file names, checked the way `torch.hub` checks it (hexdigest startswith prefix).
- TensorFlow Lite hosted models (tensorflow/lite/g3doc/models hosted_models.md): float and
  quantization-aware trained `mobilenet_v2_1.0_224`; `.tgz` archives holding the `.tflite`.
- Keras Applications (`keras/src/applications/mobilenet_v2.py`, BASE_WEIGHT_PATH): the `.h5`
  files, converted by Keras from the TF-slim checkpoints whose table (tensorflow/models
  research/slim/nets/mobilenet/README.md) gives the accuracies: width 0.35-1.0 at 96-224,
  1.3 and 1.4 at 224 only (the widths and resolutions TF-slim trained). Keras publishes no
  hash for them: the sha256 of the first download is recorded in the converted file's
  provenance, and size (Content-Length) is still verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError

__all__ = ["PRETRAINED", "PretrainedEntry", "list_pretrained", "pretrained_entry"]

TORCHVISION_URL = "https://download.pytorch.org/models/"
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
TFLITE_URL = "https://storage.googleapis.com/download.tensorflow.org/models/tflite_11_05_08/"


@dataclass(frozen=True)
class PretrainedEntry:
    """One downloadable weight set.

    Attributes:
        name: Registry name (`--weights NAME`).
        url: Where the original file is published.
        format: Converter to use: torchvision, timm, keras or tflite.
        config: The architecture the file holds (checked against the converted weights).
        preprocessing: The eval transform the published accuracy was measured with.
        accuracy: Published ImageNet-1k top-1 / top-5 (%), or PASCAL VOC mIoU (%).
        sha256: Full hex sha256, or a prefix (torchvision's 8 hex digits); None if the
            publisher gives none.
        member: For archives, the file inside to convert.
        labels: "imagenet" (1000 names, or 1001 with background for TF releases) or
            "pascal_voc" (PASCAL VOC's 21 segmentation classes).
        notes: Where the numbers come from.
    """

    name: str
    url: str
    format: str
    config: ModelConfig
    preprocessing: Preprocessing
    accuracy: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None
    member: str | None = None
    labels: str = "imagenet"
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _torchvision() -> list[PretrainedEntry]:
    cfg = ModelConfig(width=1.0, resolution=224, num_classes=1000)
    return [
        PretrainedEntry(
            name="torchvision_imagenet1k_v1",
            url=TORCHVISION_URL + "mobilenet_v2-b0353104.pth",
            format="torchvision",
            config=cfg,
            preprocessing=Preprocessing(resize=256, crop=224),
            accuracy={"top1": 71.878, "top5": 90.286},
            sha256="b0353104",
            notes="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (original recipe)",
        ),
        PretrainedEntry(
            name="torchvision_imagenet1k_v2",
            url=TORCHVISION_URL + "mobilenet_v2-7ebf99e0.pth",
            format="torchvision",
            config=cfg,
            preprocessing=Preprocessing(resize=232, crop=224),
            accuracy={"top1": 72.154, "top5": 90.822},
            sha256="7ebf99e0",
            notes="torchvision MobileNet_V2_Weights.IMAGENET1K_V2 (new recipe, resize 232)",
        ),
    ]


def _tflite() -> list[PretrainedEntry]:
    tf = ModelConfig(width=1.0, resolution=224, num_classes=1001, bn_eps=1e-3,
                     padding="tf_same")
    # One preprocessing for these files whichever route they come by (`convert` of the file
    # reads the same from its input tensor): the whole image resized to 224x224, as the
    # TFLite example apps and Coral do and as the reference interpreter outputs in
    # shared/fixtures/tflite were produced. The published accuracies were measured by TF's
    # accuracy tool with an 87.5% central crop instead. Float models take [-1, 1]; the uint8
    # model's input has scale 1/128, zero point 128: (pixel - 128) / 128.
    quant_scale = (128 / 255,) * 3
    return [
        PretrainedEntry(
            name="tflite_1.0_224",
            url=TFLITE_URL + "mobilenet_v2_1.0_224.tgz",
            format="tflite",
            config=tf,
            preprocessing=Preprocessing(resize=224, crop=224, resize_mode="exact",
                                        mean=(0.5,) * 3, std=(0.5,) * 3),
            accuracy={"top1": 71.8, "top5": 90.6},
            member="mobilenet_v2_1.0_224.tflite",
            notes="TensorFlow Lite hosted models, floating point",
        ),
        PretrainedEntry(
            name="tflite_1.0_224_quant",
            url=TFLITE_URL + "mobilenet_v2_1.0_224_quant.tgz",
            format="tflite",
            config=tf,
            preprocessing=Preprocessing(resize=224, crop=224, resize_mode="exact",
                                        mean=quant_scale, std=quant_scale),
            accuracy={"top1": 70.8, "top5": 89.9},
            member="mobilenet_v2_1.0_224_quant.tflite",
            notes="TensorFlow Lite hosted models, quantization-aware trained uint8",
        ),
    ]


# TF-slim table (research/slim/nets/mobilenet/README.md): (width, resolution) -> top1, top5.
SLIM_ACCURACY: dict[tuple[float, int], tuple[float, float]] = {
    (1.4, 224): (75.0, 92.5), (1.3, 224): (74.4, 92.1),
    (1.0, 224): (71.8, 91.0), (1.0, 192): (70.7, 90.1), (1.0, 160): (68.8, 89.0),
    (1.0, 128): (65.3, 86.9), (1.0, 96): (60.3, 83.2),
    (0.75, 224): (69.8, 89.6), (0.75, 192): (68.7, 88.9), (0.75, 160): (66.4, 87.3),
    (0.75, 128): (63.2, 85.3), (0.75, 96): (58.8, 81.6),
    (0.5, 224): (65.4, 86.4), (0.5, 192): (63.9, 85.4), (0.5, 160): (61.0, 83.2),
    (0.5, 128): (57.7, 80.8), (0.5, 96): (51.2, 75.8),
    (0.35, 224): (60.3, 82.9), (0.35, 192): (58.2, 81.2), (0.35, 160): (55.7, 79.1),
    (0.35, 128): (50.8, 75.0), (0.35, 96): (45.5, 70.4),
}


def _keras() -> list[PretrainedEntry]:
    out = []
    for (width, rows), (top1, top5) in SLIM_ACCURACY.items():
        out.append(
            PretrainedEntry(
                name=f"keras_{width}_{rows}",
                url=KERAS_URL + f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width)}"
                f"_{rows}.h5",
                format="keras",
                config=ModelConfig(width=width, resolution=rows, num_classes=1000,
                                   bn_eps=1e-3, padding="tf_same"),
                preprocessing=Preprocessing.tf_inception(rows),
                accuracy={"top1": top1, "top5": top5},
                notes="Keras Applications; accuracy published for the TF-slim checkpoint "
                "the Keras file was converted from",
            )
        )
    return out


CORAL_URL = "https://github.com/google-coral/test_data/raw/master/"
TFLITE_GPU_URL = "https://storage.googleapis.com/download.tensorflow.org/models/tflite/gpu/"


def _deeplab() -> list[PretrainedEntry]:
    """Mobile DeepLabv3 (paper section 6.3) on PASCAL VOC 2012, 21 classes, as published in
    TFLite form. mIoU: the DeepLab model zoo (research/deeplab/g3doc/model_zoo.md) for the
    float checkpoints these files are named after (`mobilenetv2_coco_voc_trainaug` 75.32%,
    `mobilenetv2_dm05_coco_voc_trainaug` 70.19%, VOC val, output stride 16, single scale);
    nobody publishes the quantized or GPU files' own mIoU, so none is claimed for the 257
    model. Preprocessing is what `convert` reads from each file: the whole image resized to
    the input size (Coral's example), uint8 (pixel - 128) / 128 or float [-1, 1]."""
    seg = dict(task="segment", output_stride=16, num_classes=21, dropout=0.1, bn_eps=1e-3,
               padding="tf_same")
    quant = (128 / 255,) * 3

    def pre(size: int, scale: tuple[float, ...]) -> Preprocessing:
        return Preprocessing(resize=size, crop=size, resize_mode="exact", mean=scale, std=scale)

    return [
        PretrainedEntry(
            name="deeplabv3_mnv2_pascal_quant",
            url=CORAL_URL + "deeplabv3_mnv2_pascal_quant.tflite",
            format="tflite",
            config=ModelConfig(width=1.0, resolution=513, **seg),
            preprocessing=pre(513, quant),
            accuracy={"miou": 75.32},
            sha256="350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
            labels="pascal_voc",
            notes="Coral, quantized uint8, 513x513, ends in ARG_MAX (the project's fixture)",
        ),
        PretrainedEntry(
            name="deeplabv3_mnv2_dm05_pascal_quant",
            url=CORAL_URL + "deeplabv3_mnv2_dm05_pascal_quant.tflite",
            format="tflite",
            config=ModelConfig(width=0.5, round_nearest=1, resolution=513, **seg),
            preprocessing=pre(513, quant),
            accuracy={"miou": 70.19},
            labels="pascal_voc",
            notes="Coral, width 0.5 (DeepLab's depth multiplier), quantized uint8, 513x513",
        ),
        PretrainedEntry(
            name="deeplabv3_257_mv_gpu",
            url=TFLITE_GPU_URL + "deeplabv3_257_mv_gpu.tflite",
            format="tflite",
            config=ModelConfig(width=1.0, resolution=257, **seg),
            preprocessing=pre(257, (0.5,) * 3),
            labels="pascal_voc",
            notes="TensorFlow Lite hosted models (GPU delegate demo), float32, 257x257",
        ),
    ]


PRETRAINED: dict[str, PretrainedEntry] = {e.name: e for e in
                                          (*_torchvision(), *_tflite(), *_keras(), *_deeplab())}


def list_pretrained() -> list[PretrainedEntry]:
    """Every entry, in table order."""
    return list(PRETRAINED.values())


def pretrained_entry(name: str) -> PretrainedEntry:
    """The registry entry `name`; `UserError` listing the known names otherwise."""
    if name not in PRETRAINED:
        raise UserError(
            f"unknown pretrained weights {name!r}; known: {', '.join(PRETRAINED)} "
            f"(or pass a file path)"
        )
    return PRETRAINED[name]
