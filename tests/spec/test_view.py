"""Read-only section views: the recipe reads a spec's sections through the schema, so a default
is written once (in the schema) and a mistyped key is an error, not a silent literal."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from raytune_opt.spec import schema
from raytune_opt.spec.view import SectionView, UnknownSetting, view


def test_a_view_reads_the_dict_and_the_schemas_defaults_for_what_it_lacks():
    train = view(("train",), {"epochs": 3, "augment": {"hflip": 0.5}, "optimizer": {"args": {"x": 1}}})
    assert train.epochs == 3 and train["epochs"] == 3 and train.get("epochs") == 3
    assert train.batch_size == schema.lookup(("train", "batch_size")).default  # not given: the schema's default
    assert isinstance(train.augment, SectionView) and train.augment.hflip == 0.5
    assert train.augment.mix_prob == schema.lookup(("train", "augment", "mix_prob")).default
    assert train.optimizer.args == {"x": 1} and view(("model",), {}).args == {}  # open sections: the dict
    assert list(train.augment) == list(schema.lookup(("train", "augment")).fields)  # every key, schema order
    assert "hflip" in train.augment and "hflp" not in train.augment
    assert view(("data",), None).to_dict() == schema.defaults(schema.lookup(("data",)))
    assert view(("data",), train) is train  # already a view


def test_an_unknown_key_is_an_error_naming_it_and_never_a_silent_default():
    aug = view(("train", "augment"), {})
    for read in (lambda: aug.hflp, lambda: aug["hflp"], lambda: aug.get("hflp", 0.0)):
        with pytest.raises(UnknownSetting, match=r"train.augment.hflp is not a setting; did you mean 'hflip'\?"):
            read()
    with pytest.raises(ValueError, match="not a section"):
        view(("train", "epochs"), {})
    with pytest.raises(ValueError, match="open section"):
        view(("model", "args"), {})


def test_a_view_is_read_only_and_pickles():
    aug = view(("train", "augment"), {"hflip": 0.5})
    with pytest.raises(AttributeError, match="read-only"):
        aug.hflip = 1.0
    assert pickle.loads(pickle.dumps(aug)).hflip == 0.5


def test_the_recipe_takes_a_default_from_the_schema_not_from_a_second_copy(monkeypatch):
    from raytune_opt.recipe.augment import Augmenter
    from raytune_opt.recipe.losses import build_loss
    from raytune_opt.recipe.losses import FocalLoss

    def default(path: tuple, value) -> None:
        section = schema.lookup(path[:-1])
        monkeypatch.setitem(section.fields, path[-1], dataclasses.replace(section.fields[path[-1]], default=value))

    default(("train", "augment", "mix_prob"), 0.25)
    default(("train", "loss", "name"), "focal")
    assert Augmenter({}, num_classes=10, in_channels=1).mix_prob == 0.25
    assert isinstance(build_loss({}, None, 10, "classification"), FocalLoss)
