from pathlib import Path

import pytest

from weightcodec.errors import EncodeError
from weightcodec.recipe import (
    DEFAULT_CLUSTERS,
    METHODS,
    as_recipe,
    load_entry_point,
    load_hook,
    load_recipe,
    parse_recipe,
    recipe_from_options,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def rule(**keys):
    return {"rule": [{"match": "*", "method": "deep", **keys}]}


def test_every_key_is_read_back():
    recipe = parse_recipe(
        {
            "rule": [
                {"match": "a*", "method": "deep", "sparsity": 0.5, "clusters": 8, "init": "density",
                 "index_bits": 5, "entropy": "huffman"},
                {"match": "b*", "method": "weightless", "sparsity": 0.9, "clusters": 4, "init": "random",
                 "t": 6, "filter": "ribbon"},
                {"match": "c*", "method": "raw"},
            ],
            "training": {"hook": "pkg.mod:fn"},
        }
    )
    deep, weightless, raw = recipe.rules
    assert (deep.match, deep.method, deep.sparsity, deep.clusters, deep.init) == ("a*", "deep", 0.5, 8, "density")
    assert deep.codec_params == {"index_bits": 5, "entropy": "huffman"}
    assert (weightless.sparsity, weightless.clusters, weightless.init) == (0.9, 4, "random")
    assert weightless.codec_params == {"t": 6, "filter": "ribbon"}
    assert raw.method == "raw" and not raw.simplifies and raw.codec_params == {}
    assert recipe.hook == "pkg.mod:fn"


def test_defaults():
    (only,) = parse_recipe(rule()).rules
    assert (only.sparsity, only.clusters, only.init, only.codec_params) == (0.0, DEFAULT_CLUSTERS, "linear", {})
    assert as_recipe(None).rules[0].method == "deep"


def test_first_matching_rule_wins_and_unmatched_names_are_left_out():
    recipe = parse_recipe({"rule": [{"match": "fc1.*", "method": "raw"}, {"match": "fc*", "method": "deep"}]})
    assigned = recipe.assign(["fc1.weight", "fc2.weight", "conv.weight"])
    assert {name: r.method for name, r in assigned.items()} == {"fc1.weight": "raw", "fc2.weight": "deep"}


def test_rule_matching_no_parameter_is_an_error_naming_it():
    recipe = parse_recipe({"rule": [{"match": "fc*", "method": "deep"}, {"match": "cnv*", "method": "deep"}]})
    with pytest.raises(EncodeError) as info:
        recipe.assign(["fc1.weight", "conv1.weight"])
    assert str(info.value) == (
        "recipe rule 2 (match 'cnv*') matches no compressible parameter; "
        "compressible parameters: [fc1.weight, conv1.weight]"
    )


def test_unknown_key_lists_valid_keys():
    with pytest.raises(EncodeError) as info:
        parse_recipe(rule(clusterz=4))
    assert str(info.value) == (
        "rule 1: unknown key 'clusterz'; valid keys: "
        "['match', 'method', 'sparsity', 'clusters', 'init', 'index_bits', 'entropy']"
    )


def test_key_of_another_method_is_named_as_such():
    with pytest.raises(EncodeError, match="rule 1: key 't' does not apply to method 'deep'"):
        parse_recipe(rule(t=8))
    with pytest.raises(EncodeError, match="key 'sparsity' does not apply to method 'raw'"):
        parse_recipe({"rule": [{"match": "*", "method": "raw", "sparsity": 0.5}]})


def test_auto_table_is_read_and_its_mistakes_listed_at_once():
    recipe = parse_recipe({**rule(), "auto": {"target_error": 2, "evaluate": "m:valid", "n_valid": 500, "bits": [2, 4]}})
    assert (recipe.auto.target_error, recipe.auto.evaluate, recipe.auto.n_valid) == (2, "m:valid", 500)
    assert recipe.auto.bits == (2, 4) and recipe.auto.sparsities == (0.5, 0.75, 0.9, 0.95)  # the default levels
    assert parse_recipe(rule()).auto is None
    with pytest.raises(EncodeError) as info:
        parse_recipe({**rule(), "auto": {"evaluate": "nocolon", "n_valid": 0, "sparsities": [0.9, 0.5], "bits": [9], "k": 1}})
    message = str(info.value)
    assert "[auto]: unknown key 'k'; valid keys: ['target_error', 'evaluate', 'n_valid', 'sparsities', 'bits']" in message
    assert "[auto] evaluate must be 'module:function', got 'nocolon'" in message
    assert "[auto] n_valid must be an integer >= 1, got 0" in message
    assert "[auto] sparsities must be a non-empty increasing list of numbers in [0, 1), got [0.9, 0.5]" in message
    assert "[auto] bits must be a non-empty list of integers in [1, 8], got [9]" in message


def test_unknown_method_and_top_level_keys_list_the_valid_ones():
    with pytest.raises(EncodeError, match=r"method must be one of \['raw', 'deep', 'weightless'\], got 'dep'"):
        parse_recipe({"rule": [{"match": "*", "method": "dep"}]})
    with pytest.raises(EncodeError, match=r"recipe: unknown key 'rules'; valid keys: \['rule', 'training', 'auto'\]"):
        parse_recipe({"rules": []})
    with pytest.raises(EncodeError, match=r"\[training\]: unknown key 'hooks'; valid keys: \['hook'\]"):
        parse_recipe({**rule(), "training": {"hooks": "a:b"}})


def test_all_problems_are_reported_at_once():
    with pytest.raises(EncodeError) as info:
        parse_recipe({"rule": [{"match": "", "method": "deep", "sparsity": 1.5}, {"method": "weightless"}]})
    message = str(info.value)
    for part in ["rule 1: match must be a non-empty glob string", "rule 1: sparsity must be a number in [0, 1), got 1.5",
                 "rule 2: method 'weightless' needs key 'match'", "rule 2: method 'weightless' needs key 't'"]:
        assert part in message


@pytest.mark.parametrize(
    "keys, problem",
    [
        ({"sparsity": "0.5"}, "sparsity must be a number in [0, 1), got '0.5'"),
        ({"sparsity": True}, "sparsity must be a number in [0, 1), got True"),
        ({"clusters": 0}, "clusters must be an integer >= 1, got 0"),
        ({"clusters": 2.0}, "clusters must be an integer >= 1, got 2.0"),
        ({"index_bits": "five"}, "index_bits must be 'auto' or an integer >= 1, got 'five'"),
        ({"init": ""}, "init must be one of ['density', 'linear', 'random'], got ''"),
        ({"init": "kmeans++"}, "init must be one of ['density', 'linear', 'random'], got 'kmeans++'"),
        ({"clusters": 300}, "clusters=300 is more than the deep codec stores (256)"),
    ],
)
def test_bad_values(keys, problem):
    with pytest.raises(EncodeError) as info:
        parse_recipe(rule(**keys))
    assert problem in str(info.value)


def test_t_too_small_for_k():
    with pytest.raises(EncodeError) as info:
        parse_recipe({"rule": [{"match": "*", "method": "weightless", "clusters": 16, "t": 3}]})
    assert str(info.value) == "rule 1: t=3 is too small for clusters=16: 8 cell values, need t >= 4"
    assert parse_recipe({"rule": [{"match": "*", "method": "weightless", "clusters": 16, "t": 4}]})


def test_no_rules():
    with pytest.raises(EncodeError, match="at least one"):
        parse_recipe({})


def test_bad_hook_spec():
    with pytest.raises(EncodeError, match="hook must be 'module:function', got 'nocolon'"):
        parse_recipe({**rule(), "training": {"hook": "nocolon"}})


def test_load_recipe_errors_start_with_the_path(tmp_path):
    with pytest.raises(EncodeError, match="recipe .*missing.toml: no such file"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]\n")
    with pytest.raises(EncodeError, match="bad.toml: not valid TOML"):
        load_recipe(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[rule]]\nmatch = "*"\nmethod = "deep"\nclusters = -1\n')
    with pytest.raises(EncodeError, match="wrong.toml: rule 1: clusters must be an integer >= 1, got -1"):
        load_recipe(wrong)


def test_example_recipe_loads_with_its_hook():
    recipe = load_recipe(EXAMPLES / "recipe.toml")
    assert [r.method for r in recipe.rules] == ["raw", "deep", "weightless"]
    assert recipe.folder == EXAMPLES
    assert load_hook(recipe).__name__ == "retrain"


def test_entry_point_errors(tmp_path):
    (tmp_path / "my_hooks.py").write_text("value = 3\ndef fn(model, stage):\n    pass\n")
    assert load_entry_point("my_hooks:fn", search=[tmp_path]).__name__ == "fn"
    assert str(tmp_path) not in __import__("sys").path
    with pytest.raises(EncodeError, match="cannot import 'no_such_module_xyz'"):
        load_entry_point("no_such_module_xyz:fn")
    with pytest.raises(EncodeError, match="module 'my_hooks' has no function 'value'"):
        load_entry_point("my_hooks:value", search=[tmp_path])
    with pytest.raises(EncodeError, match="expected 'module:function'"):
        load_entry_point("a:b:c")


def test_recipe_from_options_leaves_none_at_defaults():
    (only,) = recipe_from_options("weightless", clusters=4, t=5, sparsity=None, filter=None).rules
    assert (only.match, only.clusters, only.sparsity, only.codec_params) == ("*", 4, 0.0, {"t": 5})


def test_to_json_is_deterministic_and_complete():
    recipe = parse_recipe({"rule": [{"match": "*", "method": "weightless", "t": 6, "clusters": 4}]})
    assert recipe.to_json() == parse_recipe({"rule": [{"clusters": 4, "t": 6, "method": "weightless", "match": "*"}]}).to_json()
    assert '"t":6' in recipe.to_json() and '"hook":null' in recipe.to_json()


def test_methods_cover_the_codec_keys():
    assert set(METHODS) == {"raw", "deep", "weightless"}
