"""The draft's data: the torch modules and Keras layers being aligned, the pairs matched, the
rules written for them and the draft itself (zoo.conversion.draft)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zoo.errors import ZooError

# a rule's comment names at most this many of its uncertain pairs
MAX_NAMED = 3


class DraftError(ZooError):
    """The models could not be built or compared (bad source, builder or arguments)."""


# ---------------------------------------------------------------- the two sides

@dataclass
class TorchModule:
    path: str
    leaves: dict[str, str]              # leaf -> state_dict key
    arrays: dict[str, np.ndarray]       # leaf -> array
    module: object                      # nn.Module or None
    type_name: str
    index: int                          # state_dict order
    rank: int = 0                       # execution order (see _execution_order)
    flatten: dict | None = None         # a Linear fed a flattened map: flatten_order.find()


@dataclass
class KerasLayer:
    path: str
    variables: dict[str, object]        # variable name -> keras variable
    layer: object                       # innermost owning keras layer or None
    class_name: str
    rank: int                           # model.weights order
    top: str                            # top-level layer name (position in model.layers)

    def shape(self, name):
        return tuple(self.variables[name].shape)


@dataclass
class Pair:
    torch: TorchModule
    keras: KerasLayer
    transform: str
    transforms: list[str]               # every transform that fits (after the type hints)
    problems: list[str]                 # hyper-parameter disagreements
    decided_by: str = "shape"           # shape | name | order
    alternatives: list[str] = field(default_factory=list)   # what else fits, for the comment
    args: dict = field(default_factory=dict)                 # transform args
    note: str | None = None
    doubt: str | None = None            # an undecided choice the reviewer must make


@dataclass
class DraftRule:
    torch: str                          # regex
    keras: str                          # template
    transform: str
    pairs: list[Pair]
    args: dict = field(default_factory=dict)
    module_type: str | None = None      # torch module class the rule is restricted to

    @property
    def unsure(self) -> bool:
        return any(p.decided_by == "order" or len(p.transforms) > 1 or p.problems or p.doubt
                   for p in self.pairs)

    @property
    def comments(self) -> list[str]:
        out = [f"note: {n}" for n in dict.fromkeys(p.note for p in self.pairs if p.note)]
        out += [f"unsure: {d}" for d in dict.fromkeys(p.doubt for p in self.pairs if p.doubt)]
        order = [p for p in self.pairs if p.decided_by == "order"]
        if order:
            head = (f"unsure: chosen by order only (names do not decide) for {len(order)} of "
                    f"{len(self.pairs)} pairs, e.g.:" if len(order) > MAX_NAMED else
                    "unsure: chosen by order only (names do not decide):")
            out.append(head)
            out += [f"  {p.torch.path} -> {p.keras.path}; also fits: {', '.join(p.alternatives)}"
                    for p in order[:MAX_NAMED]]
        several = [p for p in self.pairs if len(p.transforms) > 1]
        if several:
            out.append(f"unsure: several transforms fit ({', '.join(several[0].transforms)}) for "
                       + ", ".join(p.torch.path for p in several[:MAX_NAMED])
                       + (" ..." if len(several) > MAX_NAMED else "")
                       + f"; chose {self.transform}")
        problems = [p for p in self.pairs if p.problems]
        if problems:
            out.append("check: hyper-parameters differ (the conversion will refuse this):")
            out += [f"  {p.torch.path} -> {p.keras.path}: {'; '.join(p.problems)}"
                    for p in problems[:MAX_NAMED]]
            if len(problems) > MAX_NAMED:
                out.append(f"  ... and {len(problems) - MAX_NAMED} more")
        return out


@dataclass
class Draft:
    name: str
    source: str
    builder: str
    text: str                           # the YAML draft: `data` plus review comments
    data: dict                          # the recipe structures, as zoo.recipe reads them
    rules: list[DraftRule]
    pairs: list[Pair]
    unmatched_torch: list[str]          # state_dict keys
    unmatched_keras: list[str]          # keras variable paths
    features: list[tuple[str, str]]
    notes: list[str]

    @property
    def complete(self) -> bool:
        return not (self.unmatched_torch or self.unmatched_keras)

    @property
    def unsure(self) -> list[DraftRule]:
        return [r for r in self.rules if r.unsure]

    def summary(self) -> str:
        lines = [f"{self.source} -> {self.builder}: {len(self.pairs)} torch module(s) matched, "
                 f"{len(self.rules)} rule(s), {len(self.unsure)} marked unsure"]
        for what, items in (("torch tensors", self.unmatched_torch),
                            ("keras variables", self.unmatched_keras)):
            if items:
                more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"{what} not matched ({len(items)}): {', '.join(items[:20])}{more}")
        lines += self.notes
        return "\n".join(lines)
