"""Weight-standardised convolution (timm `StdConv2d`, BiT ResNetV2)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class StdConv2D(keras.layers.Conv2D):
    """`timm.layers.StdConv2d`: a Conv2D whose kernel is standardised at every call.

    Each output filter's kernel is shifted to zero mean and scaled to unit (biased) variance over
    (kh, kw, in/groups) with `eps` added to the variance, as timm does with `F.batch_norm` on the
    (1, out, in*kh*kw) view of the weight. The stored `kernel` stays raw (the torch `weight`
    copied with the plain conv2d transform), so fine-tuning updates the same parameter as in
    PyTorch; folding the standardisation into the kernel would only be valid for inference.

    `eps` is part of the function: BiT uses 1e-8, timm's default is 1e-6. Padding follows
    Conv2D; builders pad explicitly for PyTorch's symmetric padding.
    """

    def __init__(self, filters, kernel_size, eps=1e-6, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.eps = float(eps)

    def standardized_kernel(self, kernel=None):
        kernel = self.kernel if kernel is None else kernel
        # two-pass (mean of squared deviations), like torch's batch_norm statistics
        centred = kernel - ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = ops.mean(ops.square(centred), axis=(0, 1, 2), keepdims=True)
        return centred / ops.sqrt(var + self.eps)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, self.standardized_kernel(kernel))

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}
