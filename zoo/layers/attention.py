"""Multi-head self-attention on a fused q/k/v projection, with the source's head split."""
import keras
from keras import ops


def fused_attention(qkv, num_heads, bias=None):
    """(B, N, 3 * heads * head_dim) -> (B, N, heads * head_dim): softmax(q k^T / sqrt(head_dim)
    [+ bias]) v per head, heads concatenated. bias: added to the logits before the softmax,
    broadcast to (B, heads, N, N) (BEiT's relative position bias)."""
    dim = qkv.shape[-1] // 3
    shape = ops.shape(qkv)
    qkv = ops.reshape(qkv, (shape[0], shape[1], 3, num_heads, dim // num_heads))
    out = ops.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], bias=bias)
    return ops.reshape(out, (shape[0], shape[1], dim))


@keras.saving.register_keras_serializable(package="zoo")
class FusedQKVAttention(keras.layers.Layer):
    """(B, N, 3 * heads * head_dim) -> (B, N, heads * head_dim): softmax(q k^T / sqrt(head_dim)) v
    per head, heads concatenated. No weights: the projections are the Dense layers around it.

    The input is the output of one Dense holding timm's fused `qkv` Linear or torchvision's
    `in_proj_weight` (nn.MultiheadAttention); both order its features as (3, heads, head_dim)
    — q|k|v, then head-major — which is the reshape here (timm: `reshape(B, N, 3, H, D)`).
    Splitting (heads, 3, head_dim) instead would still run and be wrong
    (tests/test_family_vit.py). keras.ops.dot_product_attention takes (B, N, heads, head_dim)
    as is, so there is no transpose and no Python loop over heads; the backend may fuse it.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def call(self, qkv):
        return fused_attention(qkv, self.num_heads)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 3)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}
