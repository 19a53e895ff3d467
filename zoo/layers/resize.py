"""Bilinear resizing to another tensor's spatial size (torchvision's segmentation heads)."""
import keras


@keras.saving.register_keras_serializable(package="zoo")
class ResizeLike(keras.layers.Layer):
    """`F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)` on NHWC maps:
    called on `[x, ref]`, returns x resized to ref's height and width.

    TensorFlow's bilinear resize without antialiasing samples at the same half-pixel source
    coordinates, `(dst + 0.5) * in / out - 0.5`, and clamps below 0 and above `in - 1` like
    torch's kernel, so it is the same function for every size (up, down, non-integer ratios, from
    1 x 1); tests/test_family_segmentation.py compares them. The size is read at run time, so the
    model keeps free input sizes (a SavedModel at any resolution).
    """

    def call(self, inputs):
        # TF itself: keras.ops.image.resize needs a static size
        import tensorflow as tf

        x, ref = inputs
        return tf.image.resize(x, tf.shape(ref)[1:3], method="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        x, ref = input_shape
        return (x[0], ref[1], ref[2], x[3])
