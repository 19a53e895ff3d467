"""The end of a feature stage, as data the saved model carries (timm's `feature_info`)."""
import keras


@keras.saving.register_keras_serializable(package="zoo")
class FeatureStage(keras.layers.Identity):
    """An identity that marks the output of a feature stage and records its `reduction` (the
    stride of its map relative to the input, 4 for a stride-4 map).

    Validation compares these maps with the torch stages and `features_only=True` returns them;
    the channels are the output's, so only the reduction (not readable from an input-size-free
    graph) is stored. A subclass of Identity so that code walking through identities still does.
    """

    def __init__(self, reduction, **kwargs):
        super().__init__(**kwargs)
        if int(reduction) != reduction or reduction < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction!r}")
        self.reduction = int(reduction)

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction}
