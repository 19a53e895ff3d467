"""What `zoo` can convert today, as data: PyTorch module types and functional ops with a Keras
counterpart in zoo's builders, layers or transforms. scripts/audit.py classifies a model against
it; extend it when a builder/layer/transform adds support (pure Python, no torch)."""

# torch module class name -> how zoo covers it
MODULES = {
    # torch.nn
    "Conv2d": "keras Conv2D / DepthwiseConv2D (transforms conv2d, depthwise; symmetric padding in "
              "zoo.models.blocks.conv2d)",
    "Linear": "keras Dense (transforms linear, linear_after_flatten)",
    "BatchNorm2d": "keras BatchNormalization (transform batchnorm; eps/momentum checked)",
    "LayerNorm": "keras LayerNormalization (transform layernorm; eps checked)",
    "GroupNorm": "keras GroupNormalization (transform groupnorm)",
    "PReLU": "keras PReLU (transform prelu)",
    "ReLU": "keras ReLU", "ReLU6": "keras ReLU(max_value=6)", "SiLU": "keras silu",
    "GELU": "keras gelu (approximate flag matched)", "Sigmoid": "keras sigmoid",
    "Hardswish": "keras hard_silu", "Hardsigmoid": "keras hard_sigmoid", "Tanh": "keras tanh",
    "LeakyReLU": "keras LeakyReLU", "Mish": "keras mish", "Softmax": "keras softmax",
    "MaxPool2d": "zoo.layers.TorchMaxPool2D (-inf padding, ceil_mode)",
    "AvgPool2d": "keras AveragePooling2D (+ explicit padding for count_include_pad)",
    "AdaptiveAvgPool2d": "keras GlobalAveragePooling2D (1x1) / zoo.layers.AdaptiveAvgPool2D (torch bins)",
    "Dropout": "identity at inference", "Identity": "identity", "Flatten": "keras Flatten "
    "(NCHW order: linear_after_flatten)",
    # timm
    "SelectAdaptivePool2d": "keras GlobalAveragePooling2D", "DropPath": "identity at inference",
    "SEModule": "squeeze-excite block in the builders", "BatchNormAct2d": "BatchNormalization + act",
    "LayerNorm2d": "keras LayerNormalization(axis=-1)", "ClassifierHead": "pooling + Dense",
    "ConvNormAct": "Conv2D + BatchNormalization + act",
    "Conv2dSame": "keras Conv2D after TF-'same' (asymmetric) padding (timm tf_* models)",
    "StdConv2d": "zoo.layers.StdConv2D (weight standardisation, eps checked)",
    "StdConv2dSame": "zoo.layers.StdConv2D after TF-'same' padding",
    "GlobalResponseNorm": "zoo.layers.GlobalResponseNorm (ConvNeXt V2)",
    "ConstantPad2d": "keras ZeroPadding2D / explicit pad (value checked by the builder)",
    "Permute": "no-op: Keras is channels-last throughout (torchvision ConvNeXt NCHW<->NHWC)",
    "StochasticDepth": "identity at inference (torchvision)",
    # vision transformers (zoo/models/blocks_transformer.py, zoo/layers/tokens.py, attention.py)
    "MultiheadAttention": "Dense (transform mha_in_proj, packed q|k|v) + zoo.layers."
                          "FusedQKVAttention + Dense out_proj (self-attention only)",
    "NonDynamicallyQuantizableLinear": "keras Dense (transform linear; MultiheadAttention.out_proj)",
    "LayerScale": "zoo.layers.LayerScale (timm ls1/ls2 gamma, transform identity)",
}

# containers: executed, but hold no computation of their own
CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}

# functional ops (torch function / Tensor method names, as TorchFunctionMode sees them)
FUNCTIONS = {
    "add", "__add__", "__iadd__", "__radd__", "sub", "__sub__", "mul", "__mul__", "__imul__",
    "__rmul__", "div", "__truediv__", "cat", "concat", "flatten", "mean", "relu", "relu_",
    "sigmoid", "sigmoid_", "silu", "gelu", "hardswish", "hardsigmoid", "tanh", "softmax",
    "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "conv2d", "linear", "batch_norm",
    "layer_norm", "group_norm", "dropout", "reshape", "view", "permute", "transpose", "contiguous",
    "chunk", "split", "squeeze", "unsqueeze", "size", "dim", "shape", "__getitem__", "pad",
    "interpolate", "amax", "max", "sum", "sqrt", "pow", "__pow__", "norm", "clone", "float", "to",
    "expand", "expand_as", "__matmul__", "matmul", "bmm", "__neg__", "neg", "clamp", "__rsub__",
    "leaky_relu", "mish", "hardtanh", "relu6", "type_as", "numel", "__len__", "__iter__",
    "__eq__", "__ne__", "__lt__", "__gt__", "__le__", "__ge__", "__bool__", "__index__",
    "is_floating_point", "__format__", "__hash__", "__contains__", "__get__", "_assert",
    # attention (zoo.layers.FusedQKVAttention: keras.ops.dot_product_attention on the fused qkv)
    "scaled_dot_product_attention", "multi_head_attention_forward", "unbind",
    # tensor constructors: constants, converted as constants
    "tensor", "zeros", "ones", "arange", "full", "zeros_like", "ones_like", "empty",
}

# ops that index NCHW axes explicitly: supported, but every axis must be translated to NHWC
AXIS_SENSITIVE = {"reshape", "view", "permute", "transpose", "flatten", "cat", "concat", "chunk",
                  "split", "mean", "sum", "amax", "softmax", "squeeze", "unsqueeze", "norm",
                  "unbind"}

# torch.nn modules zoo has no builder block for, but Keras has a counterpart under another name
# (same-named ones, e.g. Conv1d -> Conv1D, Softsign -> softsign, are found by the audit itself).
# Writing the builder with these is ordinary work, not a re-implementation.
KERAS_TWINS = {
    "ZeroPad2d": "keras.layers.ZeroPadding2D", "ZeroPad1d": "keras.layers.ZeroPadding1D",
    "ZeroPad3d": "keras.layers.ZeroPadding3D",
    "Upsample": "keras.layers.UpSampling2D / Resizing (check align_corners: Keras is half-pixel)",
    "UpsamplingNearest2d": "keras.layers.UpSampling2D(interpolation='nearest')",
    "UpsamplingBilinear2d": "keras.layers.Resizing (torch uses align_corners=True here)",
    "PixelShuffle": "keras.ops.depth_to_space (channel order differs: permute the preceding conv)",
    "ConvTranspose2d": "keras.layers.Conv2DTranspose (kernel (in, out, kh, kw) -> (kh, kw, out, in))",
    "ELU": "keras.layers.ELU", "SELU": "keras.activations.selu", "Softplus": "keras.activations.softplus",
    "Hardtanh": "keras.ops.clip", "Embedding": "keras.layers.Embedding",
    "InstanceNorm2d": "keras.layers.GroupNormalization(groups=-1)",
    "BatchNorm1d": "keras.layers.BatchNormalization", "LSTM": "keras.layers.LSTM (gate order i,f,g,o)",
    "GRU": "keras.layers.GRU (reset_after=True; gate order r,z,n)",
}

