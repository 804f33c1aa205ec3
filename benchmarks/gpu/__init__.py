"""The sections of ``python -m benchmarks.gpu_check``, one concern per module: shared helpers
(:mod:`.common`), the Triton kernels (:mod:`.kernels`), the U-Net and the sampling loop (:mod:`.unet`),
the engine backends (:mod:`.engines`) and the report (:mod:`.report`)."""
