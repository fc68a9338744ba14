"""Loading through the real from_pretrained code, and the errors when weights are missing."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from seediff_core import ModelNotFoundError, load_model
from seediff_core.models import pick_device, pick_dtype


def test_tiny_model_loads_through_the_real_code(tiny_model, tiny_model_dir):
    assert tiny_model.folder == tiny_model_dir.resolve()
    assert (tiny_model.vae_scale_factor, tiny_model.native_size, tiny_model.size_multiple) == (8, 128, 64)
    assert tiny_model.max_tokens == 77
    assert tiny_model.dtype == torch.float32 and tiny_model.device.type == "cpu"
    assert type(tiny_model.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())


def test_loading_is_cached_per_process(tiny_model_dir, tiny_model):
    assert load_model(str(tiny_model_dir), device="cpu") is tiny_model


def test_threads_loading_the_same_model_at_once_share_one_copy(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "copy")  # a path no other test has loaded
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(load_model(str(folder), device="cpu"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 3 and loaded[0] is loaded[1] is loaded[2]


def test_sd2_style_model_loads(tiny_sd2_dir):
    model = load_model(str(tiny_sd2_dir), device="cpu", dtype="float32")
    assert model.unet.config.use_linear_projection
    assert model.scheduler.config.prediction_type == "v_prediction"


def test_missing_folder_and_offline_hub_give_one_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a shipped model"):
        load_model(str(tmp_path / "nope" / "deeper"))
    # HF_HUB_OFFLINE=1 in the tests: a hub id cannot be fetched.
    with pytest.raises(ModelNotFoundError) as info:
        load_model("someone/not-a-real-model-seediff")
    message = str(info.value)
    assert "someone/not-a-real-model-seediff" in message and "--model /path/to" in message and "shapes-world" in message


def test_incomplete_folder_names_what_is_missing(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFoundError, match="missing unet"):
        load_model(str(broken))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(str(tmp_path / "file.bin"))


def test_corrupt_weights_are_reported_with_the_folder(tmp_path, tiny_model_dir):
    broken = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelNotFoundError, match="local folder"):
        load_model(str(broken))


def test_device_and_dtype_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="expected one of"):
        pick_dtype(torch.device("cpu"), "float8")
