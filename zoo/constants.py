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
