"""The one model-registry class behind the CIFAR and ImageNet zoos, and the facts registered
with each architecture (RepDistiller's learning-rate rule, CRD's FT init-stage lr)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from engine.config import check_architecture
from engine.model_io import _form_hint
from engine.options import recorded_architecture_in
from helper.errors import UserError
from models import (CIFAR_ZOO, IMAGENET_ZOO, ModelFacts, ModelRegistry, ModelZoo, imagenet_model_dict,
                    model_dict, zoo_named, zoo_of)
from models.imagenet import check_imagenet_model_name, imagenet_rep_model_names
from models.registry import check_model_name, rep_model_names
from models.rep_blocks import BLOCK_TYPES, make_conv_bn, reparameterize_model, state_dict_forms

#: ``engine/options.py``'s ``LOW_LR_MODELS`` (RepDistiller: lr 0.01 instead of 0.05).
LOW_LR_MODELS = {"MobileNetV2", "ShuffleV1", "ShuffleV2", "repmobilenetv2", "repshufflev1"}
#: the former ``FTMethod.LOW_INIT_LR_STUDENTS`` (CRD's ``helper/pretrain.py``: init stage at lr 0.01).
LOW_INIT_LR_STUDENTS = {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                        "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1",
                        "wrn_40_2"}


def test_both_zoos_are_one_class_with_plain_dicts():
    assert ModelZoo is ModelRegistry
    assert isinstance(CIFAR_ZOO, ModelRegistry) and isinstance(IMAGENET_ZOO, ModelRegistry)
    assert CIFAR_ZOO.models is model_dict and IMAGENET_ZOO.models is imagenet_model_dict
    assert type(model_dict) is dict and type(imagenet_model_dict) is dict
    assert zoo_named("cifar") is CIFAR_ZOO and zoo_named("imagenet") is IMAGENET_ZOO
    from engine.config import dataset_zoo  # a data set's zoo is its spec's (dataset.registry)

    assert dataset_zoo("cifar100") is CIFAR_ZOO and dataset_zoo("digits") is CIFAR_ZOO
    assert dataset_zoo("imagenet") is IMAGENET_ZOO
    assert zoo_of("resnet18") is IMAGENET_ZOO and zoo_of("MobileNetV2") is CIFAR_ZOO
    with pytest.raises(ValueError, match="known zoos: cifar, imagenet"):
        zoo_named("svhn")


def test_facts_reproduce_the_learning_rate_sets():
    for zoo in (CIFAR_ZOO, IMAGENET_ZOO):
        for name in zoo.models:
            facts = zoo.facts(name)
            assert facts.default_lr in (0.05, 0.01)
            assert facts.rep == zoo.is_rep(name)
    low_lr = {name for name in model_dict if CIFAR_ZOO.facts(name).default_lr == 0.01}
    assert low_lr == LOW_LR_MODELS
    assert all(CIFAR_ZOO.facts(name).default_lr == 0.05 for name in set(model_dict) - low_lr)
    assert {name for name in model_dict if CIFAR_ZOO.facts(name).low_init_lr} == \
        LOW_INIT_LR_STUDENTS
    assert not any(IMAGENET_ZOO.facts(name).low_init_lr for name in imagenet_model_dict)
    assert {n for n in model_dict if CIFAR_ZOO.facts(n).rep} == rep_model_names
    assert {n for n in imagenet_model_dict if IMAGENET_ZOO.facts(n).rep} == \
        imagenet_rep_model_names == {"represnet18"}


def test_facts_are_frozen_and_unknown_names_are_user_errors():
    facts = CIFAR_ZOO.facts("repmobilenetv2")
    assert facts == ModelFacts(rep=True, default_lr=0.01, low_init_lr=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.rep = False  # type: ignore[misc]
    with pytest.raises(UserError, match="unknown model 'resnet9'"):
        CIFAR_ZOO.facts("resnet9")


def test_name_checks_keep_their_one_line_messages():
    with pytest.raises(UserError) as err:
        check_model_name("resnet9", "--model_s")
    assert str(err.value) == ("unknown model 'resnet9' given to --model_s; known models: "
                              + ", ".join(sorted(model_dict)))
    with pytest.raises(UserError) as err:
        check_imagenet_model_name("resnet181")
    assert str(err.value) == ("unknown ImageNet model 'resnet181' given to --model; known "
                              "ImageNet models: " + ", ".join(sorted(imagenet_model_dict)))
    # a name of the other zoo: which --dataset selects it comes from the data-set registry
    # (dataset.zoo_dataset), since a zoo names no data set
    with pytest.raises(UserError) as err:
        check_architecture(CIFAR_ZOO, "resnet18", "--model_t")
    assert str(err.value) == ("--model_t resnet18 is an ImageNet model; pass --dataset imagenet, "
                              "or one of: " + ", ".join(sorted(model_dict)))
    with pytest.raises(UserError) as err:
        check_architecture(IMAGENET_ZOO, "wrn_40_2", "--model")
    assert str(err.value) == ("--model wrn_40_2 is a CIFAR model; pass --dataset cifar100, "
                              "or one of: " + ", ".join(sorted(imagenet_model_dict)))
    assert "\n" not in str(err.value)
    assert check_architecture(IMAGENET_ZOO, "resnet18", "--model") == "resnet18"
    with pytest.raises(UserError, match="^unknown model 'resnet9' given to -a; known models: "):
        check_architecture(CIFAR_ZOO, "resnet9", "-a")


def test_a_new_registry_registers_builds_and_refuses_duplicates():
    zoo = ModelRegistry("toy", "a toy", default_classes=3, label="toy ")

    @zoo.register(rep=True, lr_group="low", low_init_lr=True)
    def tiny(num_classes: int, blocktype: str = "AMBB", deploy: bool = False) -> torch.nn.Module:
        return torch.nn.Linear(2, num_classes)

    assert zoo.build("tiny").out_features == 3 and zoo.build("tiny", 5).out_features == 5
    assert zoo.facts("tiny") == ModelFacts(rep=True, default_lr=0.01, low_init_lr=True)
    with pytest.raises(ValueError, match="toy model 'tiny' registered twice"):
        zoo.register("tiny")(tiny)
    with pytest.raises(ValueError, match="learning-rate group"):
        zoo.register("other", lr_group="fast")
    assert models.build_model("resnet8", num_classes=7).fc.out_features == 7


@pytest.mark.parametrize("blocktype", sorted(set(BLOCK_TYPES) - {"base"}))
def test_blocks_tell_their_state_dict_form(blocktype):
    block = make_conv_bn(4, 4, 3, blocktype=blocktype)
    train = {f"layer1.0.conv1.{k}": v for k, v in block.state_dict().items()}
    deploy = {f"layer1.0.conv1.{k}": v
              for k, v in reparameterize_model(block).state_dict().items()}
    assert state_dict_forms(train) == {"train"} and state_dict_forms(deploy) == {"deploy"}
    assert _form_hint(True, train).startswith(" (the file holds train-form weights")
    assert _form_hint(False, deploy) == " (the file holds deploy-form weights: pass --deploy_flag True)"
    assert _form_hint(False, train) == "" and _form_hint(True, deploy) == ""


def test_plain_conv_bn_keys_tell_no_form():
    plain = model_dict["resnet8"](num_classes=10).state_dict()
    assert state_dict_forms(plain) == set() and _form_hint(True, plain) == ""
    base = make_conv_bn(4, 4, 1).state_dict()
    assert state_dict_forms(base) == set()


def test_a_file_recording_another_zoos_architecture_names_its_data_set():
    with pytest.raises(UserError) as err:
        recorded_architecture_in(CIFAR_ZOO, "resnet18", "x.pth", "-a", from_record=True)
    assert str(err.value) == "x.pth holds an ImageNet model (resnet18); pass --dataset imagenet"
    with pytest.raises(UserError) as err:
        recorded_architecture_in(IMAGENET_ZOO, "wrn_40_2", "x.pth", "-a", from_record=True)
    assert str(err.value) == "x.pth holds a CIFAR model (wrn_40_2); pass --dataset cifar100"
    with pytest.raises(UserError, match="records the architecture nosuchnet, which this code does not have"):
        recorded_architecture_in(CIFAR_ZOO, "nosuchnet", "x.pth", "-a", from_record=True)
