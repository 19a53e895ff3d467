"""Models that are not single-image classifiers, defined here (not taken from any package), each a
PyTorch module and the Keras builder a user would write for it:

- `landmarks`: a three-headed face-landmark CNN in the style of MTCNN's output network: PReLU,
  ceil-mode max pooling, `permute` before `flatten`, a tuple of three outputs (boxes, landmarks,
  a probability from a separate `nn.Softmax` module that the Keras model fuses into its Dense).
- `audio`: a 1-D convolutional audio classifier on 1024 samples, BatchNorm after ReLU.
- `two_inputs`: an image and a metadata vector in, a dict of two outputs (class scores and an
  embedding) out.

Keras is imported inside the builders so that importing this module as a torch source never
brings TensorFlow in before torch.
"""
import torch
from torch import nn


class Landmarks(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.prelu1 = nn.PReLU(16)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.prelu2 = nn.PReLU(32)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(32, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(32, 64, 2)
        self.prelu4 = nn.PReLU(64)
        self.dense5 = nn.Linear(64 * 3 * 3, 128)
        self.prelu5 = nn.PReLU(128)
        self.dense6_1 = nn.Linear(128, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(128, 4)
        self.dense6_3 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        # (N, C, H, W) -> (N, W, H, C) before flattening: the order the weights were trained in
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


def landmarks(**_):
    return Landmarks()


def landmarks_keras(input_shape=(48, 48, 3), **_):
    import keras

    from zoo.layers import TorchMaxPool2D

    layers = keras.layers
    inputs = keras.Input(tuple(input_shape), name="face")
    x = inputs
    for i, (filters, kernel, pool) in enumerate([(16, 3, 3), (32, 3, 3), (32, 3, 2)], start=1):
        x = layers.Conv2D(filters, kernel, name=f"conv{i}")(x)
        x = layers.PReLU(shared_axes=[1, 2], name=f"prelu{i}")(x)
        x = TorchMaxPool2D(pool, 2, ceil_mode=True, name=f"pool{i}")(x)
    x = layers.Conv2D(64, 2, name="conv4")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="prelu4")(x)
    x = layers.Permute((2, 1, 3), name="permute")(x)   # NHWC -> NWHC, as torch's permute
    x = layers.Flatten(name="flatten")(x)
    x = layers.PReLU(name="prelu5")(layers.Dense(128, name="dense5")(x))
    return keras.Model(inputs, {
        "boxes": layers.Dense(4, name="dense6_2")(x),
        "landmarks": layers.Dense(10, name="dense6_3")(x),
        "probability": layers.Dense(2, activation="softmax", name="dense6_1")(x),
    }, name="landmarks")


class Audio(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 9, stride=2, padding=4)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.pool = nn.MaxPool1d(2)
        self.conv3 = nn.Conv1d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        x = self.bn1(torch.relu(self.conv1(x)))   # BN after the activation
        x = self.pool(self.bn2(torch.relu(self.conv2(x))))
        x = self.bn3(torch.relu(self.conv3(x)))
        return self.fc(x.mean(2))


def audio(num_classes=10, **_):
    return Audio(num_classes)


def audio_keras(input_shape=(1024, 1), classes=10, **_):
    import keras

    layers = keras.layers
    bn = lambda name: layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)
    inputs = keras.Input(tuple(input_shape), name="waveform")
    x = layers.ZeroPadding1D(4)(inputs)
    x = bn("bn1")(layers.Conv1D(16, 9, strides=2, activation="relu", name="conv1")(x))
    x = layers.ZeroPadding1D(2)(x)
    x = bn("bn2")(layers.Conv1D(32, 5, strides=2, activation="relu", name="conv2")(x))
    x = layers.MaxPooling1D(2, name="pool")(x)
    x = bn("bn3")(layers.Conv1D(64, 3, padding="same", activation="relu", name="conv3")(x))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="fc")(x), name="audio")


class TwoInputs(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.meta = nn.Linear(8, 16)
        self.score = nn.Linear(32, num_classes)
        self.embed = nn.Linear(32, 12)
        self.num_classes = num_classes

    def forward(self, image, meta):
        x = torch.relu(self.bn(self.stem(image))).mean((2, 3))
        h = torch.cat([x, torch.tanh(self.meta(meta))], 1)
        return {"embedding": self.embed(h), "score": self.score(h)}


def two_inputs(num_classes=5, **_):
    return TwoInputs(num_classes)


def two_inputs_keras(classes=5, **_):
    import keras

    layers = keras.layers
    image = keras.Input((None, None, 3), name="image")
    meta = keras.Input((8,), name="meta")
    x = layers.ZeroPadding2D(1)(image)
    x = layers.Conv2D(16, 3, strides=2, name="stem")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(x)
    x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
    h = layers.Concatenate()([x, layers.Dense(16, activation="tanh", name="meta_fc")(meta)])
    return keras.Model({"image": image, "meta": meta},
                       {"score": layers.Dense(classes, name="score")(h),
                        "embedding": layers.Dense(12, name="embed")(h)}, name="two_inputs")


class Tokens(nn.Module):
    """Token ids in (an integer input), class scores out."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)
        self.num_classes = num_classes

    def forward(self, ids):
        return self.head(torch.relu(self.proj(self.embed(ids))).mean(1))


def tokens(num_classes=4, **_):
    return Tokens(num_classes)


def tokens_keras(classes=4, **_):
    import keras

    layers = keras.layers
    ids = keras.Input((12,), dtype="int64", name="ids")
    x = layers.Dense(16, activation="relu", name="proj")(layers.Embedding(100, 16, name="embed")(ids))
    return keras.Model(ids, layers.Dense(classes, name="head")(layers.GlobalAveragePooling1D()(x)))


# The recipes a user writes for them (the mapping tables, inputs and outputs are what
# scripts/new_recipe.py drafts: tests/test_new_recipe.py checks that it does).
RECIPES = {
    "landmarks": """
family: user_landmarks
input_size: 48
inputs:
  - {name: face, layout: image, shape: [3, 48, 48]}
outputs:
  - {name: boxes, select: 0}
  - {name: landmarks, select: 1}
  - {name: probability, select: 2, tolerance: 1.0e-5}
features:
  - [prelu4, prelu4]
mapping:
  - {torch: 'conv(\\d)', keras: 'conv{1}', transform: conv2d}
  - {torch: 'prelu(\\d)', keras: 'prelu{1}', transform: prelu}
  - {torch: 'dense(\\d|6_\\d)', keras: 'dense{1}', transform: linear}
variants:
  user/landmarks:
    torch: {source: 'python:io_models:landmarks'}
    keras: {builder: 'python:io_models:landmarks_keras'}
""",
    "audio": """
family: user_audio
inputs:
  - {name: waveform, layout: sequence, shape: [1, 1024]}
outputs:
  - {name: logits, metric: classification}
features:
  - [bn2, bn2]
ignore: ['.*\\.num_batches_tracked']
mapping:
  - {torch: 'conv(\\d)', keras: 'conv{1}', transform: conv1d}
  - {torch: 'bn(\\d)', keras: 'bn{1}', transform: batchnorm}
  - {torch: 'fc', keras: fc, transform: linear}
variants:
  user/audio:
    torch: {source: 'python:io_models:audio'}
    keras: {builder: 'python:io_models:audio_keras'}
""",
    "tokens": """
family: user_tokens
inputs:
  - {name: ids, shape: [12], dtype: int64, generator: tokens, vocab: 100}
outputs:
  - {name: logits, metric: classification}
mapping:
  - {torch: embed, keras: embed, transform: embedding}
  - {torch: '(proj|head)', keras: '{1}', transform: linear}
variants:
  user/tokens:
    torch: {source: 'python:io_models:tokens'}
    keras: {builder: 'python:io_models:tokens_keras'}
""",
    "two_inputs": """
family: user_two_inputs
input_size: 32
inputs:
  - {name: image, layout: image, shape: [3, null, null]}
  - {name: meta, shape: [8]}
outputs:
  - {name: score, metric: classification}
  - {name: embedding}
ignore: ['.*\\.num_batches_tracked']
mapping:
  - {torch: 'stem', keras: stem, transform: conv2d}
  - {torch: 'bn', keras: bn, transform: batchnorm}
  - {torch: 'meta', keras: meta_fc, transform: linear}
  - {torch: 'score', keras: score, transform: linear}
  - {torch: 'embed', keras: embed, transform: linear}
variants:
  user/two_inputs:
    torch: {source: 'python:io_models:two_inputs'}
    keras: {builder: 'python:io_models:two_inputs_keras'}
""",
}
