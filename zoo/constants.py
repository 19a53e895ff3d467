"""Constants shared by the batch parent and the conversion side, defined once.

Torch-free on purpose: zoo/batch.py imports it in the parent process, which must never import
torch or TensorFlow (see zoo/batch.py), and zoo/conversion/ imports it in the worker.
"""

# The stages of one conversion in the order zoo.conversion.pipeline.convert runs them; the
# progress bars of scripts/convert.py and of the batch parent count them.
STAGES = ("load_torch", "build_keras", "map_weights", "validate", "export", "reload_validate")

# Checkpoint files we read. Order matters: a weights folder holding several files for one model
# is searched in this order, safetensors first (it cannot run code, unlike a pickle).
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# Export formats a conversion can write, and the file or folder each one is in the model folder.
# The default is one copy of the weights (issue 11: the three always-written formats made the
# catalogue 29 GB; `.keras` beside `.weights.h5` is the same weights in a second wrapper):
# `.weights.h5` is what create_model/publish/download use. The self-contained `.keras`, SavedModel,
# LiteRT/TFLite and ONNX are asked for with --formats.
FORMAT_FILES = {"weights.h5": "model.weights.h5", "keras": "model.keras",
                "saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
FORMATS = tuple(FORMAT_FILES)
DEFAULT_FORMATS = ("weights.h5",)
# --inference: how the serving formats (SavedModel, LiteRT/TFLite, ONNX) are written. "fold":
# BatchNorm and layer scale merged into the preceding layer (zoo/fold.py); "xla": folded, and the
# SavedModel's serving function compiled with XLA. The Keras formats stay unfolded (trainable).
INFERENCE_MODES = ("fold", "xla")
SERVING_FORMATS = ("saved_model", "tflite", "onnx")
# What a folder written before --formats existed holds (config.json without "formats").
LEGACY_FORMATS = ("weights.h5", "keras", "saved_model")
# The weights file every converted folder has (create_model, publish and download read it).
WEIGHTS_FILE = FORMAT_FILES["weights.h5"]

# Batch statuses of a model whose folder is good: converted now, or skipped by --resume.
OK_STATUSES = ("passed", "up to date")
