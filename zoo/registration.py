"""Register zoo's Keras layers as soon as Keras is imported, so that `import zoo` is enough to load a
`.keras` file the project wrote, in whichever order the user imports zoo and keras.

`import zoo` must not import Keras itself: that costs seconds, and `zoo.list_models()` (or the
batch parent, or the Keras-free tools) needs none of it. So if Keras is already imported the
layers register at once; otherwise a one-shot finder on `sys.meta_path` wraps the loader of the
`keras` module and registers the layers right after Keras has finished importing. Nothing else
is imported or slowed down. (wrapt's post-import hooks do the same, but `import wrapt` imports
asyncio: 60 ms measured, a fifth of `import zoo; zoo.list_models()`.)
"""
from __future__ import annotations

import sys
import threading
import warnings

KERAS = "keras"
_lock = threading.Lock()


def register_layers() -> None:
    """Import zoo.layers, whose modules register every custom layer with Keras' serialisation."""
    try:
        import zoo.layers  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a failure here must not break the user's `import keras`
        warnings.warn(f"zoo could not register its Keras layers ({type(e).__name__}: {e}); "
                      "`import zoo.layers` before loading a .keras file", RuntimeWarning, stacklevel=2)


# Plain classes, not importlib.abc subclasses: the import protocol only needs the methods, and
# importlib.abc would cost `import zoo` 9 ms.
class _RegisterAfterKeras:
    """Finds nothing itself: for `keras` it asks the finders after it and returns their spec with a
    loader that runs the real one, then registers zoo's layers. It stays installed until Keras is
    actually executed: find_spec alone is no import (TensorFlow probes for keras that way)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != KERAS:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec, spec.loader, self)
                return spec
        return None


class _Loader:
    def __init__(self, spec, inner, finder):
        self.spec, self.inner, self.finder = spec, inner, finder

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        # Put the real loader back first: the wrapper must not stay visible to anything that
        # later asks keras' loader for resources or source lines.
        self.spec.loader = module.__loader__ = self.inner
        self.inner.exec_module(module)
        with _lock:
            if self.finder in sys.meta_path:
                sys.meta_path.remove(self.finder)
        register_layers()


def install() -> None:
    """Register the layers now if Keras is imported, else the moment it is (called by `import zoo`)."""
    with _lock:
        if KERAS not in sys.modules:
            if not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
                sys.meta_path.insert(0, _RegisterAfterKeras())
            return
    register_layers()
