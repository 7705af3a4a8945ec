"""ModelConfig from the three config spellings, checked against transformers' GptOssConfig."""

import copy
import dataclasses
import json
from pathlib import Path

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
    "zero layers": (_set("num_hidden_layers", 0), r"num_hidden_layers must be a positive integer"),
    "float vocab": (_set("vocab_size", 201088.0), r"vocab_size must be a positive integer"),
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
