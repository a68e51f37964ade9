"""Image restoration on pycnn's kernels: inpainting with a partial-convolution U-Net."""
