"""The GGUF conversion cache: convert once, reuse, rebuild when stale, never half-written.

The real conversion (de-quantizing SmolLM2) is exercised by the integration
test; here the converter is replaced by one that writes a small folder, so the
cache logic (keys, locking, atomic publish) is tested in milliseconds.
"""

import os
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunery.model import gguf
from tunery.model.load import resolve_model


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the real converter; records each call and can be told to fail or go slowly."""
    calls = []
    behaviour = {"fail": False, "delay": 0.0}

    def convert(gguf_path, out_dir):
        calls.append(gguf_path)
        time.sleep(behaviour["delay"])
        (out_dir / "model.safetensors").write_bytes(b"weights")
        if behaviour["fail"]:
            raise RuntimeError("conversion crashed")
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(gguf, "convert_gguf", convert)
    return calls, behaviour


@pytest.fixture
def gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    path = tmp_path / "My-Model.Q4.gguf"
    path.write_bytes(b"GGUF fake contents")
    return path


def test_user_gguf_converted_once_then_reused(gguf_file, fake_convert, tmp_path):
    calls, _ = fake_convert
    first = resolve_model(str(gguf_file))
    assert first.converted and len(calls) == 1
    assert first.path.parent == tmp_path / "home" / "models"
    assert first.path.name.startswith("my-model.q4-")
    assert (first.path / gguf.SOURCE_RECORD).is_file() and (first.path / "config.json").is_file()

    second = resolve_model(str(gguf_file))
    assert second.path == first.path and not second.converted and len(calls) == 1


def test_changed_file_gets_a_new_copy(gguf_file, fake_convert):
    calls, _ = fake_convert
    first = resolve_model(str(gguf_file))
    gguf_file.write_bytes(b"GGUF other contents, longer")
    second = resolve_model(str(gguf_file))
    assert second.converted and len(calls) == 2 and second.path != first.path


def test_stale_copy_in_place_is_replaced(gguf_file, fake_convert, tmp_path):
    target = tmp_path / "cache" / "model"
    gguf.ensure_converted(gguf_file, target)
    (target / "leftover.txt").write_text("old")
    os.utime(gguf_file, ns=(1, 1))  # same path, new mtime: the record no longer matches
    result = gguf.ensure_converted(gguf_file, target)
    assert result.converted and not (target / "leftover.txt").exists()


def test_failed_conversion_leaves_nothing_behind(gguf_file, fake_convert, tmp_path):
    _, behaviour = fake_convert
    behaviour["fail"] = True
    target = tmp_path / "cache" / "model"
    with pytest.raises(RuntimeError, match="crashed"):
        gguf.ensure_converted(gguf_file, target)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_loads_convert_once(gguf_file, fake_convert, tmp_path):
    calls, behaviour = fake_convert
    behaviour["delay"] = 0.2  # long enough that both threads arrive while one converts
    target = tmp_path / "cache" / "model"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf.ensure_converted(gguf_file, target)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(r.converted for r in results) == [False, True]
    assert gguf.is_complete(target, gguf.fingerprint(gguf_file))


def test_strip_quantization_keeps_weights_and_drops_the_marker(tiny_llama, tmp_path):
    tiny_llama.config.quantization_config = {"quant_method": "gguf"}
    plain = gguf.strip_quantization(tiny_llama)
    assert not hasattr(plain.config, "quantization_config")
    plain.save_pretrained(tmp_path / "plain")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    ids = torch.randint(3, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tiny_llama(input_ids=ids).logits)
