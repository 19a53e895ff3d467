"""Multi-head self-attention on a fused q/k/v projection, with the source's head split."""
import keras
from keras import ops


def fused_attention(qkv, num_heads, bias=None):
    """(B, N, 3 * heads * head_dim) -> (B, N, heads * head_dim): softmax(q k^T / sqrt(head_dim)
    [+ bias]) v per head, heads concatenated. bias: added to the logits before the softmax,
    broadcast to (B, heads, N, N) (BEiT's relative position bias).

    Written for TensorFlow's CPU kernels (docs/performance.md): one transpose puts q, k, v in
    (B, heads, N, head_dim), so that both products are batched matmuls over (B, heads) that need
    no transpose of their own (the einsum contracts head_dim of q and k directly) and the second
    one writes (B, N, heads, head_dim), the layout of the output. The scale multiplies q
    (N x head_dim) rather than the logits (N x N), as timm's unfused path does.
    keras.ops.dot_product_attention took (B, N, heads, head_dim) slices of the fused tensor and
    transposed q, k, v and its output inside two einsums: 25-50 % slower at ViT shapes."""
    dim = qkv.shape[-1] // 3
    head_dim = dim // num_heads
    shape = ops.shape(qkv)
    qkv = ops.transpose(ops.reshape(qkv, (shape[0], shape[1], 3, num_heads, head_dim)),
                        (2, 0, 3, 1, 4))
    logits = ops.einsum("bhqd,bhkd->bhqk", qkv[0] * head_dim ** -0.5, qkv[1])
    if bias is not None:
        logits = logits + bias
    # one key (MobileViT's 1-token sequences at tiny inputs): the softmax is 1, and
    # ops.softmax would warn that it is
    attn = ops.ones_like(logits) if logits.shape[-1] == 1 else ops.softmax(logits, axis=-1)
    out = ops.einsum("bhqk,bhkd->bqhd", attn, qkv[2])
    return ops.reshape(out, (shape[0], shape[1], dim))


@keras.saving.register_keras_serializable(package="zoo")
class FusedQKVAttention(keras.layers.Layer):
    """(B, N, 3 * heads * head_dim) -> (B, N, heads * head_dim): softmax(q k^T / sqrt(head_dim)) v
    per head, heads concatenated. No weights: the projections are the Dense layers around it.

    The input is the output of one Dense holding timm's fused `qkv` Linear or torchvision's
    `in_proj_weight` (nn.MultiheadAttention); both order its features as (3, heads, head_dim)
    — q|k|v, then head-major — which is the reshape here (timm: `reshape(B, N, 3, H, D)`).
    Splitting (heads, 3, head_dim) instead would still run and be wrong
    (tests/test_family_vit.py). No Python loop over heads: see `fused_attention`.
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
