"""Building engines for idm_rt: ONNX export per bucket, operator checks, ONNX Runtime and TensorRT
artifacts, the manifest, and the parity tool. Command-line front: ``python -m idm_rt.build``."""
