"""Cache keys follow the inputs; saves are atomic and load back what was saved."""

from dataclasses import replace
from pathlib import Path

from datafakes import CharTokenizer, FakeTemplate
from datasets import Dataset

from tunery.data import cache


def test_tunery_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path))
    assert cache.dataset_cache_dir() == tmp_path / "cache" / "datasets"
    monkeypatch.delenv("TUNERY_HOME")
    assert cache.tunery_home() == Path.home() / ".cache" / "tunery"


def test_tokenizer_fingerprint_sees_special_tokens_and_vocab(smollm2_tokenizer):
    base = cache.tokenizer_fingerprint(CharTokenizer())
    assert base == cache.tokenizer_fingerprint(CharTokenizer())
    assert base != cache.tokenizer_fingerprint(CharTokenizer(add_bos_token=True))
    real = cache.tokenizer_fingerprint(smollm2_tokenizer)
    assert real not in (base, cache.tokenizer_fingerprint(CharTokenizer()))
    assert real == cache.tokenizer_fingerprint(smollm2_tokenizer)


def test_template_fingerprint_is_stable_and_sees_the_definition():
    first = cache.template_fingerprint(FakeTemplate())
    assert first == cache.template_fingerprint(FakeTemplate())
    assert first != cache.template_fingerprint(FakeTemplate(efficient_eos=True))
    assert first != cache.template_fingerprint(FakeTemplate(default_system="Be nice."))

    class WithFunction:
        def __init__(self):
            self.hook = lambda x: x  # its repr holds an address that changes every run

    assert cache.template_fingerprint(WithFunction()) == cache.template_fingerprint(WithFunction())


def test_real_template_fingerprint_is_stable(smollm2_tokenizer):
    from tunery.data.templates import get_template

    one = get_template("smollm2", smollm2_tokenizer, fix_tokenizer=False)
    two = get_template("smollm2", smollm2_tokenizer, fix_tokenizer=False)
    assert cache.template_fingerprint(one) == cache.template_fingerprint(two)
    assert cache.template_fingerprint(one) != cache.template_fingerprint(replace(one, efficient_eos=True))


def test_file_fingerprint_changes_when_a_file_changes(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[1]", encoding="utf-8")
    before = cache.files_fingerprint([path])
    path.write_text("[1, 2]", encoding="utf-8")
    assert cache.files_fingerprint([path]) != before


def test_cache_key_depends_on_every_part():
    parts = {"a": 1, "b": [1, 2]}
    assert cache.cache_key(parts) == cache.cache_key(dict(parts))
    assert cache.cache_key(parts) != cache.cache_key({**parts, "b": [2, 1]})


def test_save_and_load_round_trip_atomically(tmp_path):
    target = tmp_path / "out"
    train = Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[-100, 2]]})
    cache.save_prepared(target, train, None, {"num_rows": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    loaded_train, loaded_eval, report = cache.load_prepared(target)
    assert loaded_train["labels"] == [[-100, 2]] and loaded_eval is None and report == {"num_rows": 1}
    cache.save_prepared(target, train, train, {"num_rows": 2})  # overwrite
    assert cache.load_prepared(target)[1] is not None
