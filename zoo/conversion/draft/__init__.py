r"""Draft a recipe's mapping table by aligning a PyTorch state_dict with a Keras model's variables
(scripts/new_recipe.py).

1. Torch tensors are grouped by module path (the state_dict key minus its last component) and
   Keras variables by layer path (`variable.path` minus its last component).
2. A (torch module, keras layer) pair is *compatible* under a transform of zoo.transforms when the
   transform maps the module's leaves onto exactly the layer's variables with the right shapes
   (the layout function is run with the Keras target shape). The torch module type (Conv2d with
   groups == in_channels, LayerNorm, LayerNorm2d, GroupNorm, ...) and the Keras layer class narrow
   the candidates down when several transforms fit; `batchnorm` needs running statistics.
3. Compatible pairs are matched by a minimum-cost assignment (scipy's linear_sum_assignment;
   as many compatible pairs as possible first) whose cost adds the distance in execution order
   (torch: forward hook order of one forward pass; keras: `model.weights` order, i.e. the
   functional graph's topological order), the dissimilarity of the normalised names (difflib;
   identical names get a bonus) and a penalty for hyper-parameters that disagree (stride, eps,
   groups ...): order decides across blocks, names inside them. A pair is "decided by name" only
   when its name beats every other candidate's clearly (NAME_MIN, NAME_MARGIN); otherwise it is
   "chosen by order".
   A Dense fed by a Flatten of a spatial map gets `linear` when torch (as traced) and Keras flatten
   in the same order, `linear_after_flatten` with its `chw` when torch flattens NCHW and Keras NHWC,
   else a comment naming the Permute the Keras builder lacks (zoo.conversion.flatten_order).
4. Matched pairs are generalised into regex rules: the numbers of a torch module path become
   `(\d+)` groups (or, if that gives fewer rules, its dotted segments become `(\w+)` groups) and
   the Keras template that reproduces every covered pair with `{1}`, `{2}` ... is searched for;
   where none exists, some positions are kept literal (down to one literal rule per module), or
   rules are split by torch module type (`module_type`). A rule reproduces exactly the pairs it
   covers and matches no other torch module.
5. The draft recipe marks every rule it is unsure of (chosen by order only, several transforms
   fit, hyper-parameters differ), infers `features` from Keras layers named `stage<i>` (checked by
   output shape) and the classifier, and lists the torch tensors and keras variables it could
   not match.

The torch model is traced once at the declared inputs (zoo.io_spec; default one image of
TRACE_SIZE px); `inputs:`/`outputs:` are drafted from that trace where they differ from the
defaults (io).

Modules: trace (the two sides, execution order), io (inputs, outputs, the Keras build), align
(compatibility and the assignment), generalise (regex rules), features (features), emit (the
YAML), core (draft_recipe), model (the dataclasses). Keras is imported inside functions only:
torch must come first.
"""
from zoo.conversion.draft.core import TRACE_SIZE, default_name, draft_recipe
from zoo.conversion.draft.model import Draft, DraftError

__all__ = ["TRACE_SIZE", "Draft", "DraftError", "default_name", "draft_recipe"]
