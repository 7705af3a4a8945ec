"""ModelConfig from the three config spellings, checked against transformers' GptOssConfig."""

import copy
import math
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import GptOssConfig

from openharmony import ConfigError, OpenHarmonyError
from openharmony.config import ModelConfig, YarnScaling

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MODELS = ["gpt-oss-20b", "gpt-oss-120b"]


def hub_config(model):
    return json.loads((CONFIGS / model / "config.json").read_text())


def original_config(model):
    return json.loads((CONFIGS / model / "original_config.json").read_text())


def with_rope_parameters(d):
    """The hub spelling (rope_theta + rope_scaling) rewritten as transformers 5 saves it."""
    d = copy.deepcopy(d)
    d["rope_parameters"] = {**d.pop("rope_scaling"), "rope_theta": d.pop("rope_theta")}
    return d


def expected_from_transformers(t: GptOssConfig) -> ModelConfig:
    """The ModelConfig that transformers' reading of a config implies."""
    rope = t.rope_parameters
    yarn = None
    if rope.get("rope_type", "default") != "default":
        assert rope["rope_type"] == "yarn"
        yarn = YarnScaling(
            factor=rope["factor"], beta_fast=rope["beta_fast"], beta_slow=rope["beta_slow"],
            original_max_position_embeddings=rope["original_max_position_embeddings"],
            truncate=rope["truncate"], attention_factor=rope.get("attention_factor"))
    eos = tuple(t.eos_token_id) if isinstance(t.eos_token_id, list) else t.eos_token_id
    return ModelConfig(
        num_hidden_layers=t.num_hidden_layers, num_local_experts=t.num_local_experts,
        num_experts_per_tok=t.num_experts_per_tok, vocab_size=t.vocab_size,
        hidden_size=t.hidden_size, intermediate_size=t.intermediate_size, head_dim=t.head_dim,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        sliding_window=t.sliding_window, layer_types=tuple(t.layer_types),
        rope_theta=rope["rope_theta"], rope_scaling=yarn, swiglu_limit=t.swiglu_limit,
        swiglu_alpha=t.swiglu_alpha, rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings, eos_token_id=eos,
        pad_token_id=t.pad_token_id)


# -- the three spellings agree ----------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_all_spellings_give_the_same_config(model):
    hub = ModelConfig.from_path(CONFIGS / model / "config.json")
    assert ModelConfig.from_dict(with_rope_parameters(hub_config(model))) == hub
    assert ModelConfig.from_path(CONFIGS / model / "original_config.json") == hub
    # transformers 5's own re-save of the hub file (rope_parameters, rope_theta: None, ...).
    resaved = GptOssConfig.from_pretrained(CONFIGS / model).to_dict()
    assert "rope_parameters" in resaved
    assert ModelConfig.from_dict(resaved) == hub


@pytest.mark.parametrize("model", MODELS)
def test_hub_configs_read_as_transformers_reads_them(model):
    config = ModelConfig.from_path(CONFIGS / model)  # a folder: its config.json
    assert config == expected_from_transformers(GptOssConfig.from_pretrained(CONFIGS / model))
    # And the values the gpt-oss model cards state.
    layers, experts = {"gpt-oss-20b": (24, 32), "gpt-oss-120b": (36, 128)}[model]
    assert (config.num_hidden_layers, config.num_local_experts) == (layers, experts)
    assert config.rope_scaling == YarnScaling(32.0, 32.0, 1.0, 4096, False, None)
    assert config.rope_scaling.mscale == pytest.approx(1.3465735902799727)  # 0.1 ln 32 + 1
    assert [config.is_sliding(i) for i in range(4)] == [True, False, True, False]
    assert config.queries_per_kv_head == 8


def test_transformers_default_config_reads_as_transformers_reads_it():
    t = GptOssConfig()
    config = ModelConfig.from_dict(t.to_dict())
    assert config == expected_from_transformers(t)
    assert config.eos_token_id is None and config.pad_token_id is None  # transformers' defaults


def test_original_layout_is_detected_and_mapped():
    config = ModelConfig.from_dict(original_config("gpt-oss-20b"))
    assert config.num_local_experts == 32 and config.num_experts_per_tok == 4
    assert config.max_position_embeddings == 4096 * 32  # initial_context_length * factor
    without_yarn = {**original_config("gpt-oss-20b"), "rope_scaling_factor": 1.0}
    assert ModelConfig.from_dict(without_yarn).rope_scaling is None


def test_folder_with_only_original_config(tmp_path):
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "config.json").write_text(json.dumps(original_config("gpt-oss-120b")))
    assert ModelConfig.from_path(tmp_path) == ModelConfig.from_path(CONFIGS / "gpt-oss-120b")


# -- round trips ------------------------------------------------------------------------------

def small_configs():
    hub = ModelConfig.from_dict(hub_config("gpt-oss-20b"))
    return {
        "20b": hub,
        "120b": ModelConfig.from_dict(hub_config("gpt-oss-120b")),
        "transformers-default": ModelConfig.from_dict(GptOssConfig().to_dict()),
        "tiny-custom": dataclasses.replace(
            hub, num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=2, vocab_size=512,
            hidden_size=64, intermediate_size=96, head_dim=16, num_attention_heads=4,
            num_key_value_heads=2, sliding_window=8,
            layer_types=("full_attention", "sliding_attention", "full_attention"),
            rope_theta=10000.0, swiglu_limit=5.0, swiglu_alpha=1.5, rms_norm_eps=1e-6,
            max_position_embeddings=1024, eos_token_id=(3, 4), pad_token_id=0,
            rope_scaling=YarnScaling(factor=4.0, beta_fast=16.0, beta_slow=2.0,
                                     original_max_position_embeddings=256, truncate=True,
                                     attention_factor=1.25)),
        "no-yarn": dataclasses.replace(hub, rope_scaling=None),
    }


@pytest.mark.parametrize("name", list(small_configs()))
@pytest.mark.parametrize("spelling", ["rope_scaling", "rope_parameters"])
def test_hf_dict_round_trips(name, spelling):
    config = small_configs()[name]
    d = config.to_hf_dict(rope_spelling=spelling)
    assert ("rope_parameters" in d) == (spelling == "rope_parameters")
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == config


@pytest.mark.parametrize("name, spelling", [
    (name, spelling) for name in small_configs() for spelling in ("rope_scaling", "rope_parameters")])
def test_transformers_reads_our_hf_dict_as_we_do(name, spelling):
    config = small_configs()[name]
    assert expected_from_transformers(GptOssConfig.from_dict(config.to_hf_dict(spelling))) == config


@pytest.mark.parametrize("model", MODELS)
def test_original_dict_round_trips_and_equals_the_shipped_file(model):
    config = ModelConfig.from_dict(hub_config(model))
    assert config.to_original_dict() == original_config(model)
    assert ModelConfig.from_dict(config.to_original_dict()) == config


def test_original_dict_refuses_layer_types_and_rope_options_it_cannot_express():
    config = small_configs()["tiny-custom"]
    with pytest.raises(ConfigError, match="sliding attention on even layers"):
        config.to_original_dict()
    alternating = ("sliding_attention", "full_attention", "sliding_attention")
    with pytest.raises(ConfigError, match="truncate|attention_factor"):
        dataclasses.replace(config, layer_types=alternating).to_original_dict()


def test_hf_dict_rejects_an_unknown_rope_spelling():
    with pytest.raises(ValueError, match="rope_spelling"):
        small_configs()["20b"].to_hf_dict(rope_spelling="rope")


# -- validation -------------------------------------------------------------------------------

def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _delete(key):
    return lambda d: d.pop(key)


HUB_PROBLEMS = {
    "wrong model_type": (_set("model_type", "llama"), r"model_type is 'llama', expected 'gpt_oss'"),
    "no model_type": (_delete("model_type"), r"model_type is None"),
    "heads not divisible": (
        _set("num_key_value_heads", 7),
        r"num_attention_heads \(64\) is not divisible by num_key_value_heads \(7\)"),
    "missing hidden_size": (_delete("hidden_size"), r"missing required field\(s\): hidden_size"),
    "missing experts": (_delete("num_local_experts"),
                        r"missing required field\(s\): num_local_experts"),
    "missing rope_theta": (_delete("rope_theta"), r"missing required field\(s\): rope_theta"),
    "unknown layer type": (lambda d: d["layer_types"].__setitem__(3, "local_attention"),
                           r"unknown layer_types \['local_attention'\]"),
    "too few layer types": (lambda d: d["layer_types"].pop(),
                            r"layer_types has 23 entries for 24 layers"),
    "top-k above experts": (_set("num_experts_per_tok", 33), r"num_experts_per_tok \(33\) exceeds"),
    "hidden not a block multiple": (_set("hidden_size", 2880 + 16),
                                    r"hidden_size \(2896\) must be a multiple of 32"),
    "odd head_dim": (_set("head_dim", 63), r"head_dim \(63\) must be even"),
    "zero layers": (_set("num_hidden_layers", 0), r"num_hidden_layers must be an integer in \[1, 1024\], got 0"),
    "float vocab": (_set("vocab_size", 201088.0), r"vocab_size must be an integer in \[1, 2147483647\], got 201088.0"),
    "rope type": (lambda d: d["rope_scaling"].__setitem__("rope_type", "linear"),
                  r"unsupported RoPE type 'linear'"),
    "betas": (lambda d: d["rope_scaling"].__setitem__("beta_slow", 32.0),
              r"beta_fast \(32.0\) must exceed beta_slow \(32.0\)"),
    "yarn factor": (lambda d: d["rope_scaling"].__setitem__("factor", 0.5),
                    r"rope_scaling.factor must be >= 1"),
    "rope theta": (_set("rope_theta", 1.0), r"rope_theta must be > 1"),
}


@pytest.mark.parametrize("problem", list(HUB_PROBLEMS))
def test_hub_config_problems_raise_config_error_naming_them(problem):
    mutate, message = HUB_PROBLEMS[problem]
    d = hub_config("gpt-oss-20b")
    mutate(d)
    with pytest.raises(ConfigError, match=message) as info:
        ModelConfig.from_dict(d)
    assert isinstance(info.value, OpenHarmonyError)


@pytest.mark.parametrize("field", ["experts_per_token", "hidden_size", "sliding_window",
                                   "rope_theta", "head_dim"])
def test_original_config_missing_field_is_named(field):
    d = original_config("gpt-oss-20b")
    del d[field]
    with pytest.raises(ConfigError, match=rf"missing required field\(s\): {field}"):
        ModelConfig.from_dict(d)


def test_several_problems_are_reported_together():
    d = hub_config("gpt-oss-20b")
    d["num_key_value_heads"], d["head_dim"] = 7, 63
    with pytest.raises(ConfigError, match="not divisible.*; head_dim"):
        ModelConfig.from_dict(d)


def test_a_config_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        ModelConfig.from_path(tmp_path)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "gpt_oss",')
    with pytest.raises(ConfigError, match=rf"{path} is not valid JSON"):
        ModelConfig.from_path(path)


def test_missing_file_and_folder_without_config(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.json"):
        ModelConfig.from_path(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=rf"no config.json in {tmp_path}"):
        ModelConfig.from_path(tmp_path)


def test_file_problems_name_the_file(tmp_path):
    d = hub_config("gpt-oss-20b")
    d["model_type"] = "mixtral"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=rf"^{path}: model_type is 'mixtral'"):
        ModelConfig.from_path(path)


# -- defects found in review, fixed ------------------------------------------------------

@pytest.mark.parametrize("change", [{"rms_norm_eps": 1e-6}, {"swiglu_alpha": 1.5},
                                    {"max_position_embeddings": 8192},
                                    {"rope_scaling": None}])
def test_original_dict_round_trips_or_refuses(change):
    config = dataclasses.replace(small_configs()["20b"], **change)
    try:
        d = config.to_original_dict()
    except ConfigError:
        return
    assert ModelConfig.from_dict(d) == config


def test_original_config_missing_num_experts_is_named():
    d = original_config("gpt-oss-20b")
    del d["num_experts"]
    with pytest.raises(ConfigError, match="num_experts"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("field", ["swiglu_limit", "rope_theta", "rms_norm_eps"])
def test_non_numeric_values_are_config_errors(field):
    d = hub_config("gpt-oss-20b")
    d[field] = "seven"
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("value", ["24", 2.5, None, True])
def test_non_integer_layer_count_is_a_config_error(value):
    d = hub_config("gpt-oss-20b")
    d["num_hidden_layers"] = value
    del d["layer_types"]
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        ModelConfig.from_dict(d)


def test_missing_or_null_rope_block_means_gpt_oss_yarn_as_in_transformers():
    for mutate in (lambda d: d.pop("rope_scaling"), lambda d: d.update(rope_scaling=None)):
        d = hub_config("gpt-oss-20b")
        mutate(d)
        ours = ModelConfig.from_dict(d)
        assert ours.rope_scaling is not None
        assert expected_from_transformers(GptOssConfig.from_dict(d)) == ours


def test_original_dict_leaves_token_ids_to_the_tokenizer():
    config = dataclasses.replace(small_configs()["20b"], eos_token_id=(1, 2), pad_token_id=3)
    back = ModelConfig.from_dict(config.to_original_dict())
    assert dataclasses.replace(back, eos_token_id=(1, 2), pad_token_id=3) == config
    assert (back.eos_token_id, back.pad_token_id) == (200002, 199999)


# -- every field: type, range, finiteness; absent is not zero (issue 13) -----------------------

HUB_BAD_VALUES = [
    ("rope_theta", float("nan"), "rope_theta must be a finite number, got nan"),
    ("rope_theta", float("inf"), "rope_theta must be a finite number, got inf"),
    ("swiglu_limit", float("nan"), "swiglu_limit must be a finite number, got nan"),
    ("swiglu_alpha", -1.702, "swiglu_alpha must be > 0, got -1.702"),
    ("rms_norm_eps", -1e-5, "rms_norm_eps must be > 0, got -1e-05"),
    ("rms_norm_eps", 0, "rms_norm_eps must be > 0, got 0.0"),
    ("eos_token_id", "<|return|>", "eos_token_id must be a token id, a list of token ids or "
                                   "null"),
    ("eos_token_id", [200002, -1], "eos_token_id must be"),
    ("eos_token_id", [], "eos_token_id must be"),
    ("pad_token_id", 1.5, "pad_token_id must be a token id or null"),
    ("sliding_window", 0, "sliding_window must be an integer in [1, 2147483647], got 0"),
    ("num_key_value_heads", 0, "num_key_value_heads must be an integer in [1, 2147483647], "
                               "got 0"),
    ("head_dim", 0, "head_dim must be an integer in [1, 2147483647], got 0"),
    ("max_position_embeddings", 131072.5, "max_position_embeddings must be an integer"),
    ("vocab_size", 2 ** 40, "vocab_size must be an integer in [1, 2147483647]"),
    ("num_hidden_layers", 10 ** 18, "num_hidden_layers must be an integer in [1, 1024]"),
    ("layer_types", "sliding_attention", "layer_types must be a list of strings"),
    ("layer_types", [["sliding_attention"]] * 24, "layer_types must be a list of strings"),
    ("rope_scaling", [32.0], "rope_scaling must be an object, got [32.0]"),
]


@pytest.mark.parametrize("field, value, message", HUB_BAD_VALUES)
def test_hub_field_with_a_bad_value_is_named(field, value, message):
    d = hub_config("gpt-oss-20b")
    d[field] = value
    with pytest.raises(ConfigError) as raised:
        ModelConfig.from_dict(d)
    assert message in str(raised.value)


def test_zero_heads_without_head_dim_is_named_not_a_division_by_zero():
    d = hub_config("gpt-oss-20b")
    d["num_attention_heads"] = 0
    del d["head_dim"]
    with pytest.raises(ConfigError, match=r"num_attention_heads must be an integer in \[1, "):
        ModelConfig.from_dict(d)
    d["num_attention_heads"] = 4096  # more heads than hidden_size: a head_dim of 0
    with pytest.raises(ConfigError, match=r"head_dim is absent and hidden_size \(2880\) / "
                                          r"num_attention_heads \(4096\) is below 1"):
        ModelConfig.from_dict(d)


def test_unused_yarn_fields_of_the_original_spelling_are_checked_too():
    d = {**original_config("gpt-oss-20b"), "rope_scaling_factor": 1.0,
         "rope_ntk_beta": float("nan")}
    with pytest.raises(ConfigError, match="rope_ntk_beta must be a finite number, got nan"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("value, message", [
    ("4096", "rope_scaling.original_max_position_embeddings must be an integer in [1, "
             "2147483647], got '4096'"),
    (0, "rope_scaling.original_max_position_embeddings must be an integer in [1, "
        "2147483647], got 0"),
])
def test_yarn_original_context_is_checked(value, message):
    d = hub_config("gpt-oss-20b")
    d["rope_scaling"]["original_max_position_embeddings"] = value
    with pytest.raises(ConfigError) as raised:
        ModelConfig.from_dict(d)
    assert message in str(raised.value)


@pytest.mark.parametrize("key, value, message", [
    ("beta_slow", 0.0, "rope_scaling.beta_slow must be > 0, got 0.0"),
    ("beta_fast", float("nan"), "rope_scaling.beta_fast must be a finite number, got nan"),
    ("factor", float("inf"), "rope_scaling.factor must be a finite number, got inf"),
    ("attention_factor", 0, "rope_scaling.attention_factor must be > 0, got 0.0"),
    ("truncate", "no", "rope_scaling.truncate must be true or false, got 'no'"),
])
def test_yarn_parameters_are_checked(key, value, message):
    for spelling in ("rope_scaling", "rope_parameters"):
        d = ModelConfig.from_dict(hub_config("gpt-oss-20b")).to_hf_dict(spelling)
        d[spelling][key] = value
        with pytest.raises(ConfigError) as raised:
            ModelConfig.from_dict(d)
        assert message in str(raised.value)


def test_absent_or_null_fields_take_their_defaults():
    for absent in (lambda d, k: d.pop(k), lambda d, k: d.__setitem__(k, None)):
        d = hub_config("gpt-oss-20b")
        d["num_attention_heads"] = 45  # 2880 / 45 = 64
        for key in ("head_dim", "sliding_window", "num_key_value_heads", "swiglu_limit",
                    "rms_norm_eps", "max_position_embeddings"):
            absent(d, key)
        config = ModelConfig.from_dict(d)
        assert config.head_dim == 64  # hidden_size / heads, as transformers
        assert config.sliding_window == 128 and config.num_key_value_heads == 45
        assert (config.swiglu_limit, config.rms_norm_eps) == (7.0, 1e-5)
        assert config.max_position_embeddings == 131072


@pytest.mark.parametrize("field, value, message", [
    ("initial_context_length", "4k", "initial_context_length must be an integer in [1, "
                                     "2147483647], got '4k'"),
    ("initial_context_length", 4096.7, "initial_context_length must be an integer in [1, "
                                       "2147483647], got 4096.7"),
    ("initial_context_length", 0, "initial_context_length must be an integer"),
    ("rope_scaling_factor", 0.5, "rope_scaling_factor must be >= 1, got 0.5"),
    ("rope_scaling_factor", float("nan"), "rope_scaling_factor must be a finite number"),
    ("rope_scaling_factor", "32", "rope_scaling_factor must be a finite number, got '32'"),
    ("rope_scaling_factor", 1e300, "must be below 2**31 positions"),
    ("rope_ntk_beta", float("nan"), "rope_ntk_beta must be a finite number, got nan"),
    ("rope_ntk_alpha", None, None),  # null: the default, 1.0
    ("rope_theta", float("nan"), "rope_theta must be a finite number, got nan"),
    ("swiglu_limit", -7.0, "swiglu_limit must be > 0, got -7.0"),
    ("sliding_window", 0, "sliding_window must be an integer in [1, 2147483647], got 0"),
    ("num_hidden_layers", 24.0, "num_hidden_layers must be an integer in [1, 1024], got 24.0"),
    ("head_dim", True, "head_dim must be an integer in [1, 2147483647], got True"),
])
def test_original_field_with_a_bad_value_is_named(field, value, message):
    d = original_config("gpt-oss-20b")
    d[field] = value
    if message is None:
        assert ModelConfig.from_dict(d) == ModelConfig.from_dict(original_config("gpt-oss-20b"))
        return
    with pytest.raises(ConfigError) as raised:
        ModelConfig.from_dict(d)
    assert message in str(raised.value)


def test_nan_in_a_config_file_names_the_file_and_field(tmp_path):
    # Python's json module reads the NaN and Infinity literals some writers emit.
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hub_config("gpt-oss-20b")).replace('"rope_theta": 150000.0',
                                                                  '"rope_theta": NaN'))
    with pytest.raises(ConfigError, match=rf"^{path}: .*rope_theta must be a finite number"):
        ModelConfig.from_path(path)


# -- property: any JSON value in any field gives a valid config or a ConfigError -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from openharmony.model import rope_inverse_frequencies  # noqa: E402

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(),  # unbounded: 0, negatives and 10**40 alike
    st.sampled_from([0, 1, 2, -1, 32, 64, 2 ** 31, 2 ** 63, 10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 1e-300, 1e300]),
    st.text(max_size=8), st.sampled_from(["sliding_attention", "full_attention", "yarn"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=8)
ABSENT = object()  # the field is deleted


def assert_valid(config: ModelConfig) -> None:
    """What the model code relies on, checked independently of `validate`."""
    ints = [config.num_hidden_layers, config.num_local_experts, config.num_experts_per_tok,
            config.vocab_size, config.hidden_size, config.intermediate_size, config.head_dim,
            config.num_attention_heads, config.num_key_value_heads, config.sliding_window,
            config.max_position_embeddings]
    assert all(type(v) is int and 0 < v < 2 ** 31 for v in ints), ints
    floats = [config.rope_theta, config.swiglu_limit, config.swiglu_alpha, config.rms_norm_eps]
    assert all(type(v) is float and math.isfinite(v) and v > 0 for v in floats), floats
    assert config.rope_theta > 1
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert len(config.layer_types) == config.num_hidden_layers
    assert set(config.layer_types) <= {"sliding_attention", "full_attention"}
    eos = config.eos_token_id
    assert eos is None or all(type(t) is int and t >= 0
                              for t in (eos if isinstance(eos, tuple) else (eos,)))
    if config.rope_scaling is not None:
        assert math.isfinite(config.rope_scaling.mscale)
        assert type(config.rope_scaling.original_max_position_embeddings) is int
    inv_freq, factor = rope_inverse_frequencies(config)
    assert np.isfinite(inv_freq).all() and math.isfinite(factor)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_hf_dict()))) == config


def load_or_config_error(d) -> ModelConfig | None:
    try:
        config = ModelConfig.from_dict(d)
    except ConfigError as e:
        assert str(e)  # a message, and only the project's config error
        return None
    assert_valid(config)
    return config


HUB_FIELDS = sorted(set(hub_config("gpt-oss-20b")) | {"head_dim", "swiglu_alpha",
                                                       "rope_parameters", "num_experts"})
YARN_FIELDS = ["factor", "beta_fast", "beta_slow", "original_max_position_embeddings",
               "truncate", "attention_factor", "rope_type"]
ORIGINAL_FIELDS = sorted(original_config("gpt-oss-20b"))
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def mutated(d, changes):
    d = copy.deepcopy(d)
    for key, value in changes.items():
        target = d
        if key.startswith("rope_scaling."):
            target, key = d.get("rope_scaling"), key.removeprefix("rope_scaling.")
            if not isinstance(target, dict):  # the block itself was replaced
                continue
        if value is ABSENT:
            target.pop(key, None)
        else:
            target[key] = value
    return d


FIELD_VALUES = st.one_of(JSON_VALUES, st.just(ABSENT))


@PROPERTY
@given(st.dictionaries(st.sampled_from(HUB_FIELDS + [f"rope_scaling.{k}" for k in YARN_FIELDS]),
                       FIELD_VALUES, min_size=1, max_size=3))
def test_hub_config_with_random_values_loads_validly_or_raises_config_error(changes):
    config = load_or_config_error(mutated(hub_config("gpt-oss-20b"), changes))
    if config is None:
        return
    # No silent default: a field given a value keeps it.
    for key, value in changes.items():
        if key in ("vocab_size", "hidden_size", "head_dim", "sliding_window",
                   "num_key_value_heads", "rope_theta", "swiglu_limit", "rms_norm_eps",
                   "max_position_embeddings") and value not in (None, ABSENT):
            assert getattr(config, key) == value, key


@PROPERTY
@given(st.dictionaries(st.sampled_from(ORIGINAL_FIELDS), FIELD_VALUES, min_size=1,
                       max_size=3))
def test_original_config_with_random_values_loads_validly_or_raises_config_error(changes):
    config = load_or_config_error(mutated(original_config("gpt-oss-20b"), changes))
    if config is None:
        return
    factor = changes.get("rope_scaling_factor", 32.0)
    if factor not in (None, ABSENT):  # YaRN exactly when the factor is above 1
        assert (config.rope_scaling is None) == (factor == 1)


@PROPERTY
@given(JSON_VALUES)
def test_any_json_document_loads_validly_or_raises_config_error(value):
    load_or_config_error(value)
