"""Building engines for idm_rt: ONNX export per bucket, operator checks, ONNX Runtime and TensorRT
artifacts, the manifest, and the parity tool. Command-line front: ``python -m idm_rt.build``. They need torch (and
onnx): without them, importing this package (and so ``python -m idm_rt.export.*``) says so in one line."""

from idm_rt.backends.registry import require

require(("torch", "onnx"), "building engines", package=__name__)
