"""``Upscaler``: the public entry point. It only orchestrates, top to bottom: input (:mod:`.images`) -> settings
(:class:`.SamplingSettings`) -> plan (output size :mod:`.sizes`, tile) -> encode, condition and sample
(:func:`.pipeline.super_resolve`) -> output. It needs torch only for the torch backend: engines run on numpy."""

from __future__ import annotations

import inspect
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import sizes
from .arrays import Noise, to_host
from .backends import backend as backend_named
from .backends import load_runner
from .backends.engine_dir import MANIFEST_NAME, read_manifest
from .backends.registry import default_backend, installed
from .devices import Device, parse_device
from .images import ImageLike, from_array, is_tensor, resize_alpha, split_inputs, to_array
from .model.protocol import SamplingModel
from .options import OPTIONS, check, per_image_seeds
from .pipeline import super_resolve
from .sampling import SamplingSettings, choose_preset
from .stage_timing import TILES, stage
from .tiling import CACHE_BYTES, TilePlan

DEFAULT_MODEL = Path(__file__).parent / "weights" / "default"
# The bundled model's ONNX graphs (dynamic sizes only), for where torch is not installed.
DEFAULT_ENGINES = DEFAULT_MODEL / "onnxruntime"


class Upscaler:
    """Continuous-scale super-resolution with an IDM model.

    Args:
        model: a loaded :class:`~idm_rt.IDM`, or an engine runner (see :meth:`from_engines`): any
            :class:`~idm_rt.model.protocol.SamplingModel`.
        device: where the network runs ("cpu", "cuda", "cuda:1", ...).
        sampling: the default :class:`~idm_rt.SamplingSettings` of :meth:`upscale` (a model folder
            recommends its own, which ``from_pretrained`` uses); ``**settings`` (``sampler``, ``steps``,
            ``init``, ``init_level``, ``back_projection``, ``eta``) change single ones.
        precision: "fp32", or "fp16"/"bf16" autocast of the U-Net on a GPU (error measured by
            ``benchmarks/gpu_check.py``); refused on a CPU, where it is many times slower.
        cuda_graphs: replay each U-Net call from a CUDA graph (default: on for CUDA devices).
        compile: ``torch.compile`` the U-Net (slow first call).
        tile: default HR tile side: outputs larger than this are denoised in overlapping tiles; None (the
            default) lets the model choose, the torch model the cheapest tiling whose tiles fit half the
            memory the device has (:mod:`idm_rt.tile_size`: untiled while one tile is cheaper), engines
            their bucket rule.
        max_memory: bytes a call may plan to use: half for one tile's working memory (the torch backend's
            tile choice), half for the tiles' conditionings kept between steps (beyond that they are
            recomputed at every step). Default: tiles that fit half the memory the device has (its total, not what
            is free this moment, so the image does not depend on other processes), and
            up to 2 GiB of kept conditionings. The sampler's whole-image tensors come on top.
        max_pixels: largest output (H x W) accepted, a guard against typos such as ``scale=400``.
    """

    def __init__(
        self,
        model: SamplingModel,
        device: str | Device = "cpu",
        sampling: SamplingSettings | None = None,
        presets: dict[str, SamplingSettings] | None = None,
        tile: int | None = None,
        max_pixels: int = OPTIONS["max_pixels"].default,
        precision: str = "fp32",
        cuda_graphs: bool | None = None,
        compile: bool = False,
        max_memory: int | None = None,
        **settings: Any,
    ):
        self.device = parse_device(device)
        check_options(settings)
        if not isinstance(model, SamplingModel):
            raise TypeError(f"model must be an idm_rt.IDM (load_model) or an engine runner, got {type(model).__name__}")

        if sampling is not None and not isinstance(sampling, SamplingSettings):
            raise TypeError(f"sampling must be a SamplingSettings, got {type(sampling).__name__}")
        check("max_pixels", max_pixels)  # (NaN would be no limit at all)
        check("max_memory", max_memory)
        check("tile", tile)
        self.sampling = (sampling or SamplingSettings()).replace(**settings).check_for(model.config)
        self.presets = {name: s.check_for(model.config) for name, s in (presets or {}).items()}
        backend_named(model.backend).check_precision(precision)
        self.model = model.prepare(self.device)  # (the torch model says first why a device cannot be used)
        backend_named(model.backend).check_device(self.device.type)
        self.tile, self.max_pixels, self.max_memory = tile, max_pixels, max_memory
        self.denoise = self._denoiser(precision, cuda_graphs, compile)

    def _denoiser(self, precision: str, cuda_graphs: bool | None, compile: bool):
        """The U-Net call the samplers use: plain ``model.denoise``, or for the torch model the static-buffer replay
        of :mod:`idm_rt.cuda_graph` when graphs, autocast or compile are asked for (graphs by default on CUDA)."""
        if not backend_named(self.model.backend).replays:
            if precision != "fp32" or compile or cuda_graphs:
                raise ValueError(
                    f"precision, compile and cuda_graphs are for the torch backend: an engine "
                    f"directory's precision is fixed when it is built (this one: "
                    f"{self.model.manifest.precision}); TensorRT's CUDA graphs are "
                    "runner_options={'cuda_graph': True}"
                )
            return self.model.denoise
        if precision != "fp32" and self.device.type == "cpu":
            raise ValueError(
                f"precision={precision!r} is autocast for GPUs: on a CPU, without fast half-precision "
                "kernels, it runs many times slower than fp32 (15-30x measured); use 'fp32' on a CPU"
            )
        graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if not (graphs or compile or precision != "fp32"):
            return self.model.denoise
        from .cuda_graph import StaticDenoiser

        return StaticDenoiser(self.model, precision, compile, graphs)

    def choose_tile(self, size: tuple[int, int]) -> int | None:
        """The tile side of an output of ``size`` (H, W) when the call gives none (None: untiled): the Upscaler's
        ``tile``, else the torch backend's cheapest tiling within half of ``max_memory`` (:mod:`idm_rt.tile_size`),
        or an engine's bucket rule."""
        if self.tile is not None:
            return self.tile or None
        half = self.max_memory // 2 if self.max_memory is not None else None  # the tile's; the cache's
        return backend_named(self.model.backend).choose_tile(self.model, size, half)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | Device | None = None,
        backend: str | None = None,
        max_scale: float | None = None,
        **kwargs,
    ) -> Upscaler:
        """Load a released ``.pth`` or a project-format folder; None loads the bundled default model.

        ``backend`` None is "torch" where torch is installed, else "onnxruntime" (the bundled model's own ONNX
        graphs, :data:`DEFAULT_ENGINES`, or engines built for ``path`` with torch elsewhere).

        ``backend`` "onnxruntime" or "tensorrt" runs engines instead (see :meth:`from_engines`):
        ``path`` is an engine directory written by ``python -m idm_rt.build``, or a model, whose
        engines are then built on the first call (default buckets, ``precision`` "fp32" for ONNX
        Runtime and "fp16" for TensorRT unless given; "int8" for ONNX Runtime calibrates first and checks
        the engine against the model, a RuntimeError naming the numbers when it falls short, see
        :mod:`idm_rt.export.quantize` and :mod:`idm_rt.export.int8_check`) into a cache folder and reused after
        (:func:`idm_rt.export.engines.build_engines`). ``max_scale`` overrides the largest training scale M
        (released ``.pth`` files do not store it; default 8). ``device`` defaults to "cpu", "cuda" for
        TensorRT.
        """
        backend = backend or default_backend()
        if backend_named(backend).engine:
            check_options(kwargs, ("runner_options",))  # before a build that may take minutes
            bundled = path is None or Path(path).resolve() == DEFAULT_MODEL.resolve()
            if bundled and not installed("torch"):
                path = DEFAULT_ENGINES  # its shipped graphs: nothing to build (and no torch to build with)
            path = cls._engine_folder(path, backend, device, kwargs.pop("precision", None), max_scale)
            return cls.from_engines(path, device=device, backend=backend, **kwargs)
        from .backends.registry import require

        require(("torch",), "the torch backend")
        from .checkpoints import load_model

        if path is None:
            if not (DEFAULT_MODEL / "model.safetensors").exists():
                raise FileNotFoundError(
                    "this build of idm-rt has no bundled default model yet; pass a checkpoint path "
                    "(a released .pth or a folder written by `python -m idm_rt convert`)"
                )
            path = DEFAULT_MODEL
        if (Path(path) / MANIFEST_NAME).exists():
            raise FileNotFoundError(
                f"{path} is an engine directory, not a model: run it with "
                f"Upscaler.from_engines({str(path)!r}) or `python -m idm_rt upscale --engines`"
            )
        model = load_model(path, max_scale=max_scale)
        return cls(model, device=device or "cpu", sampling=model.recommended, presets=model.presets, **kwargs)

    @staticmethod
    def _engine_folder(
        path: str | os.PathLike | None, backend: str, device, precision: str | None, max_scale: float | None
    ) -> Path:
        """``path`` itself when it is an engine directory, else the engine directory of model ``path``
        for ``backend``, built (or reused) in the cache; the options checked against either."""
        if max_scale is not None:
            raise ValueError(
                "max_scale cannot be given with an engine backend: engines record it when built; "
                "convert the checkpoint with it first (python -m idm_rt convert MODEL DIR "
                "--max-scale M) and pass DIR"
            )
        if path is not None and (Path(path) / MANIFEST_NAME).exists():
            built = read_manifest(path).precision
            if precision not in (None, built):
                raise ValueError(f"{path} holds {built} engines, not {precision}")
            return Path(path)
        chosen = backend_named(backend)
        precision = chosen.check_precision(precision or chosen.precisions[0])
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"no model or engine directory at {path}")
        device = parse_device(device or chosen.default_device)
        chosen.check_device(device.type)  # can it run there? Said before a build, not after it
        from .backends.registry import require

        require(chosen.build_needs, f"building {backend} engines")
        from .export.engines import build_engines  # the one call from the runtime into the export package

        return build_engines(path, chosen.builds, precision, device)

    @classmethod
    def from_engines(
        cls,
        folder: str | os.PathLike,
        device: str | Device | None = None,
        backend: str | None = None,
        runner_options: dict | None = None,
        **kwargs,
    ) -> Upscaler:
        """Run an engine directory built by ``python -m idm_rt.build``.

        Args:
            backend: "onnxruntime", "tensorrt" or "tensorrt_host" (TensorRT's engines on numpy arrays, with
                cuda-python; what a TensorRT directory runs on by default without torch or CuPy); default: the one
                the directory was built for (the ONNX graphs of a TensorRT directory also run with "onnxruntime").
            device: default "cuda" for TensorRT, "cpu" for ONNX Runtime.
            runner_options: ``threads`` (onnxruntime, see :class:`~idm_rt.backends.onnxruntime.OnnxRuntimeRunner`)
                or ``cuda_graph`` (tensorrt).
        Outputs that no bucket covers are tiled by the bucket rule (:mod:`idm_rt.buckets`) unless
        ``tile`` is given (0: never tile, an error when no bucket covers the output and it is beyond the dynamic
        graph's reach, :class:`~idm_rt.buckets.TileCosts`). The model's
        recommended sampling settings, recorded in the manifest, are the defaults.
        """
        runner = load_runner(folder, backend, device, **(runner_options or {}))
        return cls(
            runner,
            device=runner.device,
            sampling=runner.manifest.recommended,
            presets=runner.manifest.named_presets,
            **kwargs,
        )

    def output_size(
        self, height: int, width: int, scale: float | None = None, size: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """(H, W) of the output: ``round(h * s) x round(w * s)``, or ``size`` given as (width, height)
        (:func:`idm_rt.sizes.output_size`, with this Upscaler's ``max_pixels``)."""
        return sizes.output_size(height, width, scale, size, self.max_pixels)

    def check_output_pixels(
        self, height: int, width: int, scale: float | None = None, size: tuple[int, int] | None = None
    ) -> None:
        """ValueError when the output for an input of this size would be above ``max_pixels``; it can run on a
        file's stored size, before it is decoded (:func:`idm_rt.sizes.check_output_pixels`)."""
        sizes.check_output_pixels(height, width, scale, size, self.max_pixels)

    def upscale(
        self,
        image: ImageLike | Sequence[ImageLike],
        scale: float | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int | Sequence[int] | None = None,
        tile: int | None = None,
        eta: float | None = None,
        progress: bool = True,
        init: str | None = None,
        init_level: float | None = None,
        back_projection: int | None = None,
        quality: str | None = None,
    ):
        """Upscale one image, a list of them, or a batch tensor (same-size images run as one network batch).

        Args:
            image: a PIL image, an HxW[xC] numpy array (uint8, uint16 or float in [0, 1]; any byte order
                and strides), a [C]xHxW torch tensor (channels first; uint8, uint16 or float in [0, 1]),
                a list of these, or an N x C x H x W tensor (a batch). C is 1 (gray), 2 (gray, alpha),
                3 (RGB) or 4 (RGBA). A PIL image is first turned upright by its EXIF orientation, as
                the command line reads files (:func:`idm_rt.images.upright`).
            scale: any real magnification > 1 (beyond the trained range extrapolates).
            size: explicit output size (width, height) instead of scale.
            quality: a sampling preset of the model by name (``presets``; "default": the Upscaler's own settings;
                the bundled model has "fast", its HR estimate with no U-Net call, and "detailed").
            steps, sampler, init, init_level, back_projection, eta: change these sampling settings of the
                Upscaler's (or of the preset; see :class:`~idm_rt.SamplingSettings`) for this call.
            seed: makes the result repeatable: one int for all images, or a list of one int per image;
                each image of a list or batch gets the result it gets alone (to float rounding).
            tile: HR tile side (multiple of 8); 0 disables tiling; None uses the default (with engines
                and no default, the bucket rule).
        Returns:
            The upscaled image(s) as the input came: a list for a list, an N x C x H' x W' tensor for a
            batch tensor; arrays and tensors keep their dtype, channels, layout and device. PIL images
            come back in their own mode (:data:`idm_rt.images.PIL_MODES`) with their ICC profile, except
            "1", which comes back "L" (one bit cannot hold the upscaled edges), and "P"/"PA", which come
            back "RGB", or "RGBA" when they have transparency (a new palette would change the colours).
            "La", "RGBa", "RGBX", "CMYK" (K comes back 0), "YCbCr", "LAB" and "HSV" are upscaled as RGB(A) and
            converted back by Pillow; "I", "I;16*" (0..65535) and "F" ([0, 1]) keep their depth.
        Raises:
            ValueError: a bad argument or image (unsupported dtype, mode or layout, NaN, out-of-range
                values, an empty image, an output above ``max_pixels``), named in the message.
            TypeError: a masked numpy array (its mask would be ignored).
        """
        base = choose_preset(quality, self.sampling, self.presets)
        settings = base.replace(
            sampler=sampler, steps=steps, init=init, init_level=init_level, back_projection=back_projection, eta=eta
        ).check_for(self.model.config)
        tile = self.tile if tile is None else tile
        check("tile", tile)
        images, pack = split_inputs(image)
        if not images:
            raise ValueError("no image given")
        seeds = per_image_seeds(seed, len(images))
        for im in images:  # before decoding or converting: a lazily opened file may be a decompression bomb, a
            h, w = _declared_size(im)  # broadcast array or expanded tensor may declare far more than it holds
            if h * w > self.max_pixels:
                raise ValueError(
                    f"image {w}x{h} has more pixels than the largest output allowed "
                    f"({self.max_pixels}; raise max_pixels to allow it)"
                )
            if h * w:  # so is too large an output
                self.check_output_pixels(h, w, scale, size)
        prepared = [to_array(im) for im in images]
        sizes = [self.output_size(rgb.shape[-2], rgb.shape[-1], scale, size) for rgb, _, _ in prepared]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, ((rgb, _, _), out) in enumerate(zip(prepared, sizes)):
            groups[(tuple(rgb.shape[-2:]), out)].append(i)
        results: list[ImageLike] = [None] * len(images)
        for (_, out), idx in groups.items():
            lr = self.model.asarray(np.concatenate([prepared[i][0] for i in idx]))
            # one noise stream per image, with its seed: an image's result does not depend on its batch
            noise = Noise([seeds[i] if seeds is not None else None for i in idx])
            with stage(TILES):
                group_tile = self.choose_tile(out) if tile is None else tile  # 0: untiled
                plan = TilePlan.for_image(out, group_tile, self.model.config.size_multiple) if group_tile else None
            cache = self.max_memory // 2 if self.max_memory is not None else CACHE_BYTES  # (the tile has the rest)
            sr = to_host(
                super_resolve(
                    self.model,
                    lr,
                    out,
                    settings,
                    scale=scale,
                    noise=noise,
                    plan=plan,
                    progress=progress,
                    denoise=self.denoise,
                    cache_bytes=cache,
                )
            )
            if not np.isfinite(sr).all():  # cast to an image it would come out black, or as noise
                raise RuntimeError(
                    "the network's output holds NaN or infinite values: its weights overflow (or, "
                    "with precision='fp16', its activations do); no image is returned"
                )
            for k, i in enumerate(idx):
                _, alpha, kind = prepared[i]
                alpha = resize_alpha(alpha, out) if alpha is not None else None
                results[i] = from_array(sr[k : k + 1], alpha, kind)
                if isinstance(images[i], Image.Image) and images[i].info.get("icc_profile"):
                    results[i].info["icc_profile"] = images[i].info["icc_profile"]  # its colours mean the same
        return pack(results)


def _declared_size(image: Any) -> tuple[int, int]:
    """(height, width) an image declares, read without decoding or converting it; (0, 0) when it declares
    none that :func:`~idm_rt.images.to_array` would accept (it then says what is wrong)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return image.shape[0], image.shape[1]
    if (
        is_tensor(image)
        and not image.is_nested
        and image.layout == sys.modules["torch"].strided
        and image.dim() in (2, 3)
    ):
        return image.shape[-2], image.shape[-1]
    return 0, 0


def check_options(options: dict[str, Any], extra: tuple[str, ...] = ()) -> None:
    """TypeError naming the options that neither :class:`Upscaler` nor :class:`SamplingSettings` (nor ``extra``)
    take."""
    known = set(inspect.signature(Upscaler.__init__).parameters) | set(SamplingSettings().to_dict()) | set(extra)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"Upscaler got unknown options {unknown}")
