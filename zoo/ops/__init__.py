"""TensorFlow re-implementations of PyTorch ops whose torch implementation is a compiled C/C++
kernel with no TensorFlow twin (torchvision.ops, F.grid_sample, F.interpolate's modes where
tf.image.resize differs). Each function follows the torch kernel's arithmetic closely enough to be
tested against it on random inputs (tests/test_ops_*.py); docs/custom-ops.md lists what each one
matches, the measured error and what TFLite can run. No torch here: this is the Keras-only side.

Submodules are imported on use (`from zoo.ops.nms import nms`): importing this package does not
import TensorFlow."""
