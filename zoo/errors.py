"""The one error family of the project: every failure a user can cause or meet is a ZooError."""


class ZooError(Exception):
    """Base class; catch this to handle any conversion/loading failure."""


class RecipeError(ZooError):
    """A recipe file is malformed (names the file, the variant or rule, and what is wrong)."""


class UnknownModelError(ZooError, KeyError):
    """A catalogue name does not exist (the message suggests close names)."""

    def __str__(self):  # KeyError would repr() the message
        return self.args[0] if self.args else ""


class SourceError(ZooError):
    """The PyTorch model or its weights could not be obtained (bad checkpoint, no network, ...)."""


class MappingError(ZooError):
    """The weight-mapping table does not consume/assign every tensor exactly once."""


class ValidationError(ZooError):
    """Converted outputs differ from the PyTorch reference beyond the recipe tolerance."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class ExportError(ZooError):
    """Writing the converted model failed for a reason outside the model (disk full, limits)."""


class ImportOrderError(ZooError):
    """tensorflow was imported before torch in a process that converts (this segfaults)."""
