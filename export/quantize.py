"""Static INT8 quantisation of the U-Net for ONNX Runtime on CPUs (``python -m idm_rt.build --engine int8``).

The static (per-bucket) float32 U-Net with direct convolutions is quantised in the QDQ format:
per-channel symmetric int8 weights, uint8 activations whose ranges are calibrated on real U-Net
inputs. Those are recorded from the torch model's own sampler (:func:`idm_rt.pipeline.super_resolve`
with the model's recommended settings) on a few calibration images at several scales, cropped to
the bucket's size: random inputs would calibrate ranges the sampler never produces. Only the
convolutions are quantised; those of :data:`KEEP_FLOAT` and :func:`excluded_nodes` stay in float32 (where
quantisation cost the most).

Everything is seeded: the same model, bucket, settings and images give the same graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from idm_rt.arrays import Noise
from idm_rt.backends.engine_dir import graph_inputs
from idm_rt.buckets import Bucket
from idm_rt.images import IMAGE_SUFFIXES
from idm_rt.model import IDM
from idm_rt.pipeline import super_resolve
from idm_rt.resize import downscale
from idm_rt.sampling import SamplingSettings

VERSION = 2  # bump when what quantize_unet writes changes for the same settings: part of the rebuild key
METHODS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("uint8", "int8")
# Calibrator options per method: entropy searches thresholds on 2048 bins (ONNX Runtime's default of
# 128 bins leaves it a single candidate, the min-max range); percentile keeps 99.99 % of the values
# of each tensor, asymmetrically (most activations here follow SiLU or a skip sum: not centred on 0;
# chosen over ONNX Runtime's default, 99.999 % symmetric, in an exploratory run on the bundled model:
# x0 PSNR 46.2 against 45.4 dB with every convolution quantised).
METHOD_OPTIONS = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"percentile": 99.99, "symmetric": False},
}
# Regular expressions over module paths ("unet.up.3.blocks.1.res.skip"; {last} and {prev}: the indices of the
# decoder's full-resolution level and the one before it) of the convolutions kept in float32: the first and the
# last, and every convolution of the decoder's two finest levels. A model sampled from little noise (the bundled
# one starts at noise level 0.99) predicts a noise that is a small part of the signal in those layers, and 8-bit
# activations there lose it; the measurements that chose them are in benchmarks/results/int8_onnx.md.
KEEP_FLOAT = (r"^unet\.input_conv$", r"^unet\.final\.", r"^unet\.up\.{last}\.", r"^unet\.up\.{prev}\.")
TRAIN_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "train"
# scikit-image's photos that are not the evaluation photos (training.evaluate.SKIMAGE_PHOTOS).
SKIMAGE_CALIBRATION = ("immunohistochemistry", "hubble_deep_field", "retina", "stereo_motorcycle")
# Those an int8 engine calibrated on SKIMAGE_CALIBRATION is checked on (export.int8_check): evaluation photos, never
# calibrated on.
SKIMAGE_HELD_OUT = ("astronaut", "coffee", "chelsea")


@dataclass(frozen=True)
class QuantSettings:
    """How a U-Net is calibrated and quantised; every field is part of the rebuild key.

    Attributes:
        method: activation range calibration, one of :data:`METHODS`.
        activations: activation type, one of :data:`ACTIVATIONS` (weights: symmetric int8 per channel).
        keep_float: regular expressions over module paths of the convolutions kept in float32
            (``{last}``, ``{prev}``: the indices of the decoder's full-resolution level and the one before it).
        images: calibration images, each sampled on one crop of the bucket's size...
        scales: ...at each of these magnifications, with the model's recommended sampling settings.
        seed: the crops and the sampler's noise.
    """

    method: str = "percentile"
    activations: str = "uint8"
    keep_float: tuple[str, ...] = KEEP_FLOAT
    images: int = 4
    scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, not {self.method!r}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, not {self.activations!r}")
        if not 1 <= self.images <= 64:
            raise ValueError(f"calibration images must be 1..64, got {self.images}")
        if not self.scales or not all(s > 1 for s in self.scales):
            raise ValueError(f"calibration scales must be numbers > 1, got {self.scales}")
        for pattern in self.keep_float:
            re.compile(pattern.format(last=1, prev=0))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- calibration images and inputs


def resolve_source(source: str | Path = "auto") -> str | Path:
    """``source`` itself, or for "auto": the project's training images when ``../shared`` is beside the
    checkout, else "skimage" when scikit-image is installed, else "synthetic"."""
    if source != "auto":
        return source
    skimage = importlib.util.find_spec("skimage") is not None
    return TRAIN_DATA if TRAIN_DATA.is_dir() else "skimage" if skimage else "synthetic"


def calibration_images(source: str | Path = "auto", count: int = 4, seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """(``count`` images as (3, H, W) uint8, what they are) from ``source``: a folder of images (drawn
    with ``seed``), "skimage" (:data:`SKIMAGE_CALIBRATION`, needs scikit-image), "synthetic" (seeded
    smooth fields with sharp edges), or "auto" (:func:`resolve_source`)."""
    source = resolve_source(source)
    if source == "synthetic":
        return [_synthetic(seed + k) for k in range(count)], "synthetic"
    if source == "skimage":
        if count > len(SKIMAGE_CALIBRATION):
            raise ValueError(f"scikit-image has {len(SKIMAGE_CALIBRATION)} calibration photos, {count} asked for")
        return _skimage_photos(SKIMAGE_CALIBRATION[:count]), "skimage: " + ", ".join(SKIMAGE_CALIBRATION[:count])
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration images: {folder} is not a folder (nor auto, skimage or synthetic)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(paths) < count:
        raise ValueError(f"calibration folder {folder} holds {len(paths)} images, {count} needed")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return [_load_rgb(paths[i]) for i in order], f"{folder}: " + ", ".join(paths[i].name for i in order)


def held_out_images(source: str | Path, settings: QuantSettings, count: int) -> tuple[list[torch.Tensor], str]:
    """(images, what they are) like those of calibration ``source`` that the build did not calibrate on: a
    folder's next ``count`` images of the seeded draw (as many as it has beyond the calibration's), scikit-image's
    :data:`SKIMAGE_HELD_OUT` photos for "skimage", synthetic images of other seeds for "synthetic"."""
    source = resolve_source(source)
    if source == "skimage":
        return _skimage_photos(SKIMAGE_HELD_OUT[:count]), "skimage: " + ", ".join(SKIMAGE_HELD_OUT[:count])
    if source == "synthetic":
        return calibration_images("synthetic", count, settings.seed + 1000)[0], "synthetic, seeds 1000+"
    folder = Path(source)
    total = len([p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()])
    count = min(count, total - settings.images)
    if count < 1:
        raise ValueError(
            f"calibration folder {folder} holds {total} images, all calibrated on: none left to check "
            f"the engine with ({settings.images + 1} needed)"
        )
    images, _ = calibration_images(folder, settings.images + count, settings.seed)
    return images[settings.images :], (
        f"{folder}: images {settings.images + 1}-{settings.images + count} of the "
        f"seeded draw whose first {settings.images} the build calibrates on"
    )


def _skimage_photos(names: Sequence[str]) -> list[torch.Tensor]:
    from skimage import data

    photos = [getattr(data, name)() for name in names]
    photos = [p[0] if isinstance(p, tuple) else p for p in photos]  # stereo_motorcycle: (left, right, disparity)
    return [torch.from_numpy(np.ascontiguousarray(p[..., :3])).permute(2, 0, 1) for p in photos]


def _load_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def _synthetic(seed: int, side: int = 256) -> torch.Tensor:
    """A smooth random colour field with a few flat rectangles (sharp edges) and mild noise, (3, side, side) uint8."""
    gen = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=(side, side), mode="bicubic", align_corners=False)[
        0
    ]
    for _ in range(6):
        top, left, h, w = (int(v) for v in torch.randint(0, side // 2, (4,), generator=gen))
        img[:, top : top + h + 8, left : left + w + 8] = torch.rand(3, 1, 1, generator=gen)
    img += 0.03 * torch.randn(img.shape, generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def images_digest(images: Sequence[torch.Tensor]) -> str:
    """Short hash of the images' pixels: part of the rebuild key."""
    h = hashlib.sha256()
    for img in images:
        h.update(str(tuple(img.shape)).encode())
        h.update(img.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def random_crop(img: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """A random ``size`` (H, W) window of a (3, h, w) uint8 image, as (3, H, W) in [-1, 1]; an image
    smaller than that is first enlarged (bicubic) to cover it."""
    hr = img.float()[None] / 127.5 - 1
    h, w = hr.shape[-2:]
    if h < size[0] or w < size[1]:
        f = max(size[0] / h, size[1] / w)
        hr = F.interpolate(
            hr, size=(max(size[0], round(h * f)), max(size[1], round(w * f))), mode="bicubic", align_corners=False
        ).clamp(-1, 1)
        h, w = hr.shape[-2:]
    top = int(torch.randint(h - size[0] + 1, (1,), generator=gen))
    left = int(torch.randint(w - size[1] + 1, (1,), generator=gen))
    return hr[0, :, top : top + size[0], left : left + size[1]]


@torch.no_grad()
def record_unet_inputs(
    model: IDM,
    images: Sequence[torch.Tensor],
    bucket: Bucket,
    scales: Sequence[float],
    settings: SamplingSettings,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, np.ndarray]]:
    """The inputs (by graph input name) of every U-Net call the torch sampler makes when it
    super-resolves a random crop of the bucket's size of each image, at each scale of ``scales``;
    crops go in batches of ``bucket.min_batch``."""
    names = graph_inputs("unet", model.config)
    feeds: list[dict[str, np.ndarray]] = []

    def denoise(x_t: torch.Tensor, conditioning, g: torch.Tensor) -> torch.Tensor:
        g = g.to(x_t.dtype).view(-1).expand(x_t.shape[0])
        tensors = (x_t, conditioning.cond, *conditioning.flat(), g)
        feeds.append({n: t.contiguous().numpy().copy() for n, t in zip(names, tensors)})
        return model.denoise(x_t, conditioning, g)

    gen = torch.Generator().manual_seed(seed)
    size = (bucket.height, bucket.width)
    batches = [list(images[k : k + bucket.min_batch]) for k in range(0, len(images), bucket.min_batch)]
    runs = [(batch, s) for batch in batches for s in scales]
    for batch, s in tqdm(runs, desc=f"calibration {bucket.name}", unit="image", disable=not progress, leave=False):
        batch += batch[-1:] * (bucket.min_batch - len(batch))  # a short last batch repeats its last image
        hr = torch.stack([random_crop(img, size, gen) for img in batch])
        lr = downscale(hr, (max(1, round(size[0] / s)), max(1, round(size[1] / s))))
        super_resolve(model, lr, size, settings, scale=s, noise=Noise([seed]), denoise=denoise)
    return feeds


class FeedReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over recorded inputs."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


# ---------------------------------------------------------------- which nodes, and quantisation


def module_paths(proto: onnx.ModelProto) -> dict[str, str]:
    """Node name -> module path (``unet.down.1.blocks.0.res.block1.conv``) of every node whose
    constant inputs derive from the model's weights (initializers ``model.<path>.<name>``): the
    longest path common to those weights (``unet.up.0.upsample`` for its folded ``fc2 @ fc1``)."""
    graph = proto.graph
    constant: dict[str, list[str]] = {
        i.name: [i.name] if i.name.startswith("model.") else [] for i in graph.initializer
    }  # constant tensor -> the weights it derives from
    paths = {}
    for node in graph.node:  # topological order
        sources = [w for name in node.input if name in constant for w in constant[name]]
        if all(not name or name in constant for name in node.input):  # Constant nodes too
            constant.update({o: sources for o in node.output})
        elif sources:
            paths[node.name] = _common_prefix([w.split(".")[1:-1] for w in sources])  # model.<path>.weight
    return paths


def _common_prefix(paths: list[list[str]]) -> str:
    common = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def excluded_nodes(proto: onnx.ModelProto, keep_float: Sequence[str], levels: int) -> list[str]:
    """Names of the Conv nodes kept in float32: those whose module path matches one of ``keep_float``
    (``{last}`` = levels - 1, ``{prev}`` = levels - 2), and those with no module path: weights the exporter
    folded from several parameters under names of its own (the implicit up-layers' 1x1 maps, ``fc2 @ fc1``),
    which no pattern can name; keeping them, the one into the finest level among them, is part of what
    :data:`KEEP_FLOAT`'s measurements measured."""
    patterns = [re.compile(p.format(last=levels - 1, prev=levels - 2)) for p in keep_float]
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    paths = module_paths(proto)
    matched = {n for n, path in paths.items() if n in convs and any(p.search(path) for p in patterns)}
    return sorted(matched | (convs - set(paths)))


def prepare(fp32_path: Path, out_path: Path) -> None:
    """ONNX Runtime's pre-processing for quantisation (constant folding, shape inference) of a float32
    U-Net with direct convolutions: the weights become initializers, as per-channel quantisation needs."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if any(n.op_type == "DepthToSpace" for n in onnx.load(str(fp32_path), load_external_data=False).graph.node):
        raise ValueError(f"{fp32_path} has Winograd convolutions: quantise the graph exported with direct ones")
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)


def calibrate(prepared: Path, feeds: Sequence[dict[str, np.ndarray]], method: str, ranges_path: Path) -> None:
    """Activation ranges of every convolution input and output over ``feeds``, written to
    ``ranges_path`` (ONNX Runtime's calibration cache), with :data:`METHOD_OPTIONS`."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if not feeds:
        raise ValueError("no calibration inputs")
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            prepared,
            ["Conv"],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_calibration_method(method),
            extra_options=METHOD_OPTIONS[method],
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
            calibrator.collect_data(FeedReader(feeds))
            save_tensors_data(calibrator.compute_data(), ranges_path)


def quantize(
    prepared: Path, out_path: Path, ranges_path: Path, settings: QuantSettings, exclude: Sequence[str]
) -> None:
    """Write the QDQ graph of ``prepared`` with the ranges of :func:`calibrate`: every Conv quantised but
    those named in ``exclude``, weights per channel (symmetric int8), activations ``settings.activations``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(out_path),
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=_calibration_method(settings.method),
        extra_options={"WeightSymmetric": True},
        calibration_cache_path=str(ranges_path),
    )


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def quantize_unet(
    fp32_path: Path, out_path: Path, feeds: Sequence[dict[str, np.ndarray]], settings: QuantSettings, levels: int
) -> list[str]:
    """The INT8 graph of the float32 static U-Net at ``fp32_path`` (direct convolutions) calibrated on
    ``feeds``, written to ``out_path``; returns the names of the convolutions kept in float32."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared, ranges = Path(tmp) / "prepared.onnx", Path(tmp) / "ranges.json"
        prepare(fp32_path, prepared)
        calibrate(prepared, feeds, settings.method, ranges)
        exclude = excluded_nodes(onnx.load(str(fp32_path)), settings.keep_float, levels)
        quantize(prepared, out_path, ranges, settings, exclude)
    return exclude


# ---------------------------------------------------------------- the build's step


@dataclass
class Calibration:
    """A build's calibration: the settings and the images (loaded once, used for every bucket)."""

    settings: QuantSettings
    images: list[torch.Tensor]
    source: str  # what the images are
    origin: str | Path = "synthetic"  # where from: a folder, "skimage" or "synthetic" (held_out_images's source)

    @classmethod
    def load(cls, source: str | Path = "auto", settings: QuantSettings | None = None) -> Calibration:
        settings = settings or QuantSettings()
        images, what = calibration_images(source, settings.images, settings.seed)
        return cls(settings, images, what, resolve_source(source))

    def key(self) -> dict:
        """What the quantised graphs depend on besides the model and the bucket."""
        import onnxruntime

        return {
            "version": VERSION,
            **self.settings.to_dict(),
            "images": images_digest(self.images),
            "onnxruntime": onnxruntime.__version__,
        }


def build_unet(model: IDM, bucket: Bucket, path: Path, calibration: Calibration) -> list[str]:
    """Export the static float32 U-Net of ``bucket`` with direct convolutions, calibrate it on the
    torch sampler's U-Net inputs (the model's recommended settings) and write its INT8 graph to
    ``path``; returns the names of the convolutions kept in float32."""
    from .graphs import export_graph

    settings = calibration.settings
    feeds = record_unet_inputs(
        model, calibration.images, bucket, settings.scales, model.recommended or SamplingSettings(), settings.seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_graph(model, "unet", bucket, Path(tmp) / "unet_fp32.onnx")
        return quantize_unet(fp32, path, feeds, settings, model.config.levels)
