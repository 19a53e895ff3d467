"""BatchNormalization that TensorFlow fuses into the convolution before it (ResNet, RegNet,
EfficientNet's 1x1 convolutions, ...)."""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="zoo")
class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization with the same variables, config and result; in inference
    on a 4-D channels-last float32 input it runs TensorFlow's `FusedBatchNormV3`
    (`is_training=False`) instead of Keras' multiply and add.

    Grappler's remapper rewrites Conv2D + FusedBatchNorm (+ ReLU) into one oneDNN convolution
    with the normalisation applied in its output pass; Keras' two elementwise ops are not a
    pattern it knows, so they stay two more passes over the feature map. The fused op is only
    worth it where that rewrite happens: after a depthwise convolution or a concatenation it
    runs alone and is slower than Keras' ops (docs/performance.md), so the builders use this
    class after a Conv2D only (`zoo.models.blocks.norm`). Training (batch statistics) and
    anything but the plain float32 case take Keras' own call.

    Named like Keras' class on purpose (registered as `zoo>BatchNormalization`): a .weights.h5
    file addresses each layer by its class's snake_case name and index, so the file keeps the
    layout of a model built with plain Keras layers.
    """

    def _fast(self, inputs, training):
        return (not (training and self.trainable) and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.center and self.scale and not self.renorm
                and not self.synchronized
                and self.compute_dtype == "float32"
                and keras.backend.standardize_dtype(inputs.dtype) == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fast(inputs, training):
            return super().call(inputs, training=training, mask=mask)
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, mean=self.moving_mean,
            variance=self.moving_variance, epsilon=self.epsilon, data_format="NHWC",
            is_training=False)
        return outputs
