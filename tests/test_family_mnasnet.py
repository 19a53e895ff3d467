"""MNASNet 1.0 (torchvision): its BatchNorm momentum (1 - 0.9997), checked and used in training.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import numpy as np
import pytest
import torch
import torchvision

import zoo
from zoo.catalog import get_variant
from zoo.conversion.mapping import plan_mapping
from zoo.models import get_builder, mnasnet

NAME = "torchvision/mnasnet1_0"


def test_pitfall_batchnorm_momentum_is_checked(monkeypatch):
    """torchvision builds every BN with momentum 1 - 0.9997; Keras' default 0.99 and the torch
    default (0.1 -> Keras 0.9) both differ. The engine's batchnorm check catches a builder that
    gets it wrong (inference is unaffected, fine-tuning is not)."""
    module = torchvision.models.mnasnet1_0()
    momenta = {m.momentum for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {1 - 0.9997}
    variant, _ = get_variant(NAME)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    modules = dict(module.named_modules())
    model = get_builder("mnasnet")()
    assert model.get_layer("stage2_block0_bn1").momentum == pytest.approx(0.9997)
    plan_mapping(state, model, variant.rules, variant.recipe.ignore, modules=modules)

    monkeypatch.setattr(mnasnet, "TORCH_BN_MOMENTUM", 0.1)
    with pytest.raises(zoo.MappingError, match=r"momentum 0\.000299.* needs keras momentum 0\.9997"):
        plan_mapping(state, get_builder("mnasnet")(), variant.rules, variant.recipe.ignore,
                     modules=modules)


def test_batchnorm_running_mean_updates_like_torch_in_training():
    """What the momentum is for: one training step moves the running mean by the same amount."""
    x = np.random.default_rng(0).standard_normal((8, 5, 5, 32)).astype(np.float32) * 3 + 1
    tbn = torchvision.models.mnasnet1_0().layers[1].train()
    with torch.no_grad():
        tbn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    kbn = get_builder("mnasnet")().get_layer("stem_bn")
    kbn(x, training=True)
    np.testing.assert_allclose(np.asarray(kbn.moving_mean), tbn.running_mean.numpy(), atol=1e-7)
    assert np.abs(tbn.running_mean.numpy()).max() > 1e-4   # it did move
