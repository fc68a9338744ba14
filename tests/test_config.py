from __future__ import annotations

import json

import pytest

from seediff_core.config import SeediffConfig, make_config


def test_defaults_follow_the_reference():
    config = SeediffConfig()
    assert config.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (config.seed_factor, config.expansion_factors) == (4, (4, 2, 1))
    assert (config.variance_floor, config.flat_layer_weight) == (1e-4, 0.01)
    assert (config.expansion_threshold, config.final_threshold, config.pamr_std_factor) == (0.3, 0.8, 0.2)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"noise_mode": "blur"}, "noise_mode"),
        ({"timestep": 1000}, "outside its range 0..999"),
        ({"inversion_steps": 0}, "inversion_steps=0 is outside its range 1..100"),
        ({"prompt_template": "a photo"}, "must contain"),
        ({"final_threshold": 1.5}, "outside its range 0.0..1.0"),
        ({"seed_factor": 3}, "powers of two"),
        ({"expansion_factors": (1, 2, 4)}, "coarse to fine"),
        ({"working_size": 32}, "working_size=32 is outside its range 64..1024"),
        ({"no_such_setting": 1}, "valid settings"),
    ],
)
def test_bad_settings_name_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        SeediffConfig().replace(**changes)


def test_json_lists_and_strings_are_coerced():
    config = SeediffConfig().replace(expansion_factors=[2, 1], synonyms={"cat": "kitten"})
    assert config.expansion_factors == (2, 1)
    assert config.synonyms == {"cat": ("kitten",)}
    assert json.loads(json.dumps(config.to_dict()))["expansion_factors"] == [2, 1]


def test_model_folder_settings_sit_between_defaults_and_overrides(tmp_path):
    (tmp_path / "seediff.json").write_text(json.dumps({"seed_factor": 2, "expansion_factors": [2, 1], "timestep": 150}))
    config = make_config(model="m", model_dir=tmp_path, timestep=300, method=None)
    assert (config.model, config.seed_factor, config.expansion_factors, config.timestep) == ("m", 2, (2, 1), 300)
    assert make_config(model_dir=tmp_path / "missing").seed_factor == 4


def test_method_defaults_and_per_method_sections(tmp_path):
    (tmp_path / "seediff.json").write_text(json.dumps({"timestep": 150, "diffseg": {"noise_mode": "noise"}}))
    defaults = {"diffseg": {"noise_mode": "clean", "timestep": 300}}
    seediff = make_config(model_dir=tmp_path, method_defaults=defaults)
    assert (seediff.method, seediff.noise_mode, seediff.timestep) == ("seediff", "invert", 150)
    diffseg = make_config(model_dir=tmp_path, method_defaults=defaults, method="diffseg")
    # the method's default (t=300) < the model's common setting (150) < the model's diffseg section
    assert (diffseg.noise_mode, diffseg.timestep) == ("noise", 150)
    assert make_config(model_dir=tmp_path, method_defaults=defaults, method="diffseg", timestep=10).timestep == 10
