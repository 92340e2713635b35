import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from clipkit.cli.errors import one_line
from clipkit.config.compose import CONF_DIR, compose_config
from clipkit.config.validate import check_config
from clipkit.data.shards import resolve_sources
from clipkit.errors import ConfigError
from clipkit.models.towers import TOWERS


def error_line(overrides):
    with pytest.raises((ConfigError, HydraException, OmegaConfBaseException)) as info:
        check_config(compose_config(overrides))
    return one_line(info.value)


def test_default_config_composes_with_contract_keys():
    checked = check_config(compose_config([]))
    cfg = checked.cfg
    assert cfg.name == "demo"
    assert set(checked.towers) == {"image", "text", "audio"}
    assert cfg.model.pairs == ["image_text", "audio_text", "image_audio"]
    assert checked.towers["image"].name == "vit" and checked.towers["image"].image_size == 64
    assert cfg.loss.contrastive.weight == 1.0 and cfg.data.batch_size > 0
    for key in ("max_steps", "epochs", "precision", "ckpt_every_n_steps", "resume"):
        assert hasattr(cfg.trainer, key)
    assert {"shapes", "scenes"} <= set(cfg.eval.datasets)


def test_misspelt_key_is_named_with_a_suggestion():
    line = error_line(["trainer.max_step=5"])
    assert line.startswith("trainer.max_step:") and "max_steps" in line and "\n" not in line


def test_wrong_type_is_named():
    assert error_line(["data.batch_size=many"]).startswith("data.batch_size:")


def test_impossible_values_are_named():
    assert error_line(["data.batch_size=-2"]).startswith("data.batch_size: must be > 0")
    assert error_line(["trainer.precision=fp8"]).startswith("trainer.precision:")
    assert error_line(["trainer.epochs=2"]).startswith("trainer.max_steps: set exactly one")
    assert error_line(["trainer.parallel=zero3"]).startswith("trainer.parallel: 'zero3' is not one of ddp, fsdp")
    assert error_line(["trainer.parallel=fsdp", "trainer.precision=fp16"]).startswith("trainer.precision: fp16")
    for unmet in (["trainer.precision=bf16"], ["trainer.parallel=fsdp"]):  # ddp, or fp32 weights
        assert error_line([*unmet, "trainer.fsdp.autocast=false"]).startswith("trainer.fsdp.autocast: false")
    check_config(compose_config(["trainer.parallel=fsdp", "trainer.precision=bf16", "trainer.fsdp.autocast=false"]))


def test_tower_fields_are_typed_by_their_registry_entry():
    assert error_line(["model.towers.image.name=nope"]).startswith("model.towers.image.name: unknown tower")
    assert "select it with model/towers/image=timm" in error_line(["model.towers.image.name=timm"])
    assert "Could not find 'model/towers/image/transformer'" in error_line(["model/towers/image=transformer"])
    assert error_line(["model.towers.image.width=wide"]).startswith("model.towers.image.width:")
    assert error_line(["model.towers.image.widht=3"]) == (
        "model.towers.image.widht: Key 'widht' not in 'ViTConfig' (did you mean 'width'?)"
    )
    assert error_line(["model.towers.image.image_size=-32"]) == "model.towers.image.image_size: must be > 0, got -32"
    assert error_line(["model.towers.audio.channels=[8,0]"]).startswith("model.towers.audio.channels[1]: must be > 0")
    check_config(compose_config(["model.towers.audio.num_masks=0"]))  # counts may be 0
    for rate in ("1.0", "-0.1"):  # open_clip asserts 0 <= patch_dropout < 1 deep in the model build
        assert error_line([f"model.towers.image.patch_dropout={rate}"]) == (
            f"model.towers.image.patch_dropout: must lie in [0, 1) (0: off), got {float(rate)}"
        )
    check_config(compose_config(["model.towers.image.patch_dropout=0.5"]))
    # widths that attention cannot split over its heads are named before the build asserts
    assert error_line(["model.towers.text.width=130"]) == (
        "model.towers.text.width: 130 does not split evenly into 4 attention heads (model.towers.text.heads)"
    )
    assert error_line(["model.towers.image.width=100"]).startswith(
        "model.towers.image.width: 100 does not split evenly into 3 attention heads (model.towers.image.width // "
    )
    assert error_line(["model/towers/audio=ast", "model.towers.audio.heads=5"]).startswith(
        "model.towers.audio.width: 768"
    )
    assert error_line(["experiment=demo_coca", "model.caption.heads=3"]).startswith(
        "model.caption.heads: the text tower's width 128, which the decoder shares, does not split evenly"
    )
    assert error_line(["experiment=demo_coca", "model.towers.image.attn_pooler_heads=3"]) == (
        "model.embed_dim: 128 does not split evenly into 3 attention heads (model.towers.image.attn_pooler_heads)"
    )


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["model.towers.image.pool_type=bad"], "model.towers.image.pool_type: 'bad' is not one of tok, avg"),
        (["model.towers.text.pool_type=bad"], "model.towers.text.pool_type: 'bad' is not one of argmax, first, last"),
        (["model.towers.audio.norm=bad"], "model.towers.audio.norm: 'bad' is not one of instance, fixed"),  # was: fixed
        (
            ["model/towers/audio=ast", "model.towers.audio.pool=bad"],
            "model.towers.audio.pool: 'bad' is not one of token, avg",
        ),
        (
            ["model/towers/image=timm", "model.towers.image.model_name=resnet18", "model.towers.image.proj=bad"],
            "model.towers.image.proj: 'bad' is not one of linear, mlp, none",
        ),
    ],
)
def test_a_towers_named_choices_are_checked(overrides, line):
    """Choices that open_clip or timm assert when the tower is built, or that the audio front end
    took silently for another (norm=bad normalised as 'fixed')."""
    assert error_line(overrides) == line


def test_every_tower_field_can_be_overridden_and_presets_switch_towers():
    checked = check_config(compose_config(["model.towers.text.lock=true", "model.towers.image.weights=/w.pt"]))
    assert checked.towers["text"].lock and checked.towers["image"].weights == "/w.pt"
    timm = check_config(compose_config(["experiment=demo_image_text", "model=timm_resnet50"])).towers["image"]
    assert timm.name == "timm" and timm.model_name == "resnet50"


MODEL_PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "open_clip")


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_a_presets_tower_can_be_switched_to_every_other_tower_of_its_modality(preset):
    """``model/towers/<m>=<name>`` on top of any preset (the README's override): the preset's
    values of that tower type go with it, the values every tower of the modality has stay."""
    towers = compose_config([f"model={preset}"]).model.towers
    for modality in set(towers) & {"image", "audio"}:
        for name in [n for n in TOWERS.names() if TOWERS.get(n).config_class.MODALITY == modality]:
            switched = compose_config([f"model={preset}", f"model/towers/{modality}={name}"]).model.towers[modality]
            assert switched.name == name
            shared = "image_size" if modality == "image" else "sample_rate"
            assert switched[shared] == towers[modality][shared]


def test_pairs_must_name_configured_towers():
    assert "needs a 'audio' tower" in error_line(["model=tiny", "eval=demo_image_text", "model.pairs=[audio_text]"])
    assert "not a pair of model.pairs" in error_line(["+loss.contrastive.pair_weights.audio_image=2"])
    # the demo weighs a pair that an image-text model lacks: the error names the override removing it
    assert error_line(["model=tiny"]) == (
        "loss.contrastive.pair_weights.image_audio: not a pair of model.pairs ['image_text']; "
        "remove the weight (~loss.contrastive.pair_weights.image_audio) or add the pair"
    )
    check_config(
        compose_config(["model=tiny", *(f"~loss.{key}.image_audio" for key in ("contrastive.pair_weights", "anchors"))])
    )


def test_missing_and_empty_shards_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"shard not found: .*x-000000.tar \(and 1 more of 2\)"):
        resolve_sources(str(tmp_path / "x-{000000..000001}.tar"))
    with pytest.raises(ConfigError, match="empty shard pattern"):
        resolve_sources("")
    with pytest.raises(
        ConfigError, match=r"data.train.shards: unbalanced braces in the shard pattern '.*x-\{0..3.tar'"
    ):
        resolve_sources(str(tmp_path / "x-{0..3.tar"))


def test_a_folder_or_a_glob_names_its_shards_in_sorted_order(tmp_path):
    for name in ("s-2.tar", "s-10.tar", "s-1.tar", "sizes.json"):
        (tmp_path / name).write_bytes(b"")
    in_order = [str(tmp_path / n) for n in ("s-1.tar", "s-10.tar", "s-2.tar")]
    assert resolve_sources(str(tmp_path))[0].urls == in_order
    assert resolve_sources(str(tmp_path / "s-*.tar"))[0].urls == in_order
    assert resolve_sources(f"{tmp_path}/s-1.tar::{tmp_path}/s-1?.tar")[0].urls == in_order[:2]
    with pytest.raises(ConfigError, match=r"data.train.shards: no shard matches .*/t-\*.tar"):
        resolve_sources(str(tmp_path / "t-*.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.train.shards: .*/empty is a folder without .tar shards"):
        resolve_sources(str(tmp_path / "empty"))


def test_weighted_sources(tmp_path):
    for name in ("a-0.tar", "a-1.tar", "b-0.tar"):
        (tmp_path / name).write_bytes(b"")
    sources = resolve_sources(
        [{"shards": str(tmp_path / "a-{0..1}.tar"), "weight": 3}, {"shards": str(tmp_path / "b-0.tar")}]
    )
    assert [len(s.urls) for s in sources] == [2, 1] and [s.weight for s in sources] == [3.0, 1.0]
    with pytest.raises(ConfigError, match=r"\[0\].weight: must be a positive number"):
        resolve_sources([{"shards": str(tmp_path / "b-0.tar"), "weight": 0}])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["loss.caption.weight=1"], "loss.caption.weight"),  # no decoder to train
        (["model.caption.sources=[image]"], "model.caption.sources"),  # a decoder without a loss
        (["model.caption.sources=[text]", "loss=coca"], "model.caption.sources"),
        (["loss=siglip", "loss.sigmoid.weight=0"], "loss"),  # nothing left to train
        (["+loss.sigmoid.pair_weights.image_speech=1"], "loss.sigmoid.pair_weights.image_speech"),
        (["loss=clip_unif_align", "loss.uniformity.t=0"], "loss.uniformity.t"),
        (["loss.contrastive.scale_warmup_start=0"], "loss.contrastive.scale_warmup_start"),
        (["loss.contrastive.scale_warmup_steps=-5"], "loss.contrastive.scale_warmup_steps"),
        (["eval.generation.strategy=nucleus"], "eval.generation.strategy"),
        (["+eval.datasets.caps.root=/x", "+eval.datasets.caps.task=captioning"], "eval.datasets.caps.task"),
        (["experiment=demo_image_text", "+loss.anchors.image_audio=image"], "loss.anchors.image_audio"),
        (["+loss.anchors.image_text=audio"], "loss.anchors.image_text"),  # not in the pair
        (["experiment=demo_image_text", "+loss.anchors.image_text=text"], "loss.anchors"),  # no gradient
        (["data.text_pad_multiple=8", "model.towers.text.pool_type=last"], "data.text_pad_multiple"),
        (["data.text_pad_multiple=8", "model.towers.text.no_causal_mask=true"], "data.text_pad_multiple"),
        (["data.text_pad_multiple=0"], "data.text_pad_multiple"),
        (["eval.text_pad_multiple=0"], "eval.text_pad_multiple"),
        (["data.text_pad_multiple=8", "data.batch_size=64", "data.bucket_pool=1000"], "data.bucket_pool"),
        (["data.batch_size=64", "data.bucket_pool=1024"], "data.bucket_pool"),  # nothing to cut
    ],
)
def test_objective_and_captioning_settings_are_checked(overrides, key):
    assert error_line(overrides).startswith(f"{key}:")


def test_objective_presets_compose():
    assert check_config(compose_config(["loss=siglip"])).cfg.loss.contrastive.weight == 0
    xunif = check_config(compose_config(["loss=clip_unif_align_xunif"])).cfg.loss
    assert (xunif.uniformity.weight, xunif.alignment.weight, xunif.cross_uniformity.weight) == (1, 1, 1)
    coca = check_config(compose_config(["experiment=demo_coca"])).cfg
    assert coca.model.caption.sources == ["image", "audio"] and coca.loss.caption.weight == 2
    assert {"scene_captioning", "sound_captioning"} <= set(coca.eval.datasets)


def test_an_eval_set_can_be_added_from_the_command_line():
    cfg = check_config(
        compose_config(["+eval.datasets.mine.root=/data/mine", "+eval.datasets.mine.task=retrieval"])
    ).cfg
    mine = cfg.eval.datasets["mine"]
    assert (mine.root, mine.task, mine.modality, mine.split) == ("/data/mine", "retrieval", "image", "test")
    assert error_line(["+eval.datasets.mine.rot=/x"]).startswith("eval.datasets.mine.rot:")


def test_switching_to_own_data_names_the_demo_paths_left_behind():
    """data=webdataset on the demo experiment: its shards and eval sets lie under data.demo_root,
    which only data=demo sets; the error says so instead of looking under 'None/'."""
    from clipkit.train.prepare import precheck

    def line(overrides):
        with pytest.raises(ConfigError) as info:
            precheck(compose_config(overrides))
        return one_line(info.value)

    assert line(["data=webdataset"]).startswith("data.train.shards: these are the demo's shards")
    own = ["data=webdataset", 'data.train.shards="/data/s-{000000..000009}.tar"']
    assert line(own).startswith("eval.datasets.shapes.root: a demo eval set")
    assert line([*own, "eval=none"]) == "data.train.shards: shard not found: /data/s-000000.tar (and 9 more of 10)"


def test_the_demo_recipe_kept_on_own_data_is_named_in_a_warning(caplog):
    """data=webdataset alone keeps the default experiment=demo (Hydra cannot drop it by the data
    choice): clipkit-train warns, with the two ways out, from Hydra's own record of the choices."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from clipkit.cli.train import warn_demo_recipe_on_own_data
    from clipkit.config.compose import HYDRA_VERSION_BASE, register_schema

    def warnings(overrides):
        register_schema()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=HYDRA_VERSION_BASE):
            choices = compose("config", overrides=overrides, return_hydra_config=True).hydra.runtime.choices
        caplog.clear()
        warn_demo_recipe_on_own_data(choices)
        return [r.getMessage() for r in caplog.records]

    [warning] = warnings(["data=webdataset"])
    assert warning.startswith("experiment=demo (the default) applies the demo's recipe")
    assert "experiment=NAME" in warning and "~experiment" in warning
    assert warnings([]) == []
    assert warnings(["data=webdataset", "experiment=demo_image_text"]) == []
    assert warnings(["data=webdataset", "~experiment"]) == []


def test_clipkit_eval_takes_an_eval_preset_by_name(tmp_path):
    """``clipkit-eval checkpoint=RUN eval=demo``: a shipped eval preset in place of the saved eval
    config; under a run of one's own data (no data.demo_root) the demo sets need their folder."""
    from omegaconf import OmegaConf

    from clipkit.saved import load_config

    own = ["data=webdataset", 'data.train.shards="/data/s-{000000..000009}.tar"', "eval=none"]
    saved = check_config(compose_config(own)).cfg
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(saved)))  # as the trainer saves it

    def line(overrides):
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path, overrides)
        return one_line(info.value)

    assert line(["eval=demo"]).startswith("eval.datasets.shapes.root: a demo eval set (under ${data.demo_root})")
    assert (
        line(["eval=dmeo"])
        == "eval: 'dmeo' is not one of demo, demo_coca, demo_image_text, none (did you mean 'demo'?)"
    )
    datasets = load_config(tmp_path, ["eval=demo_image_text", "data.demo_root=/demo"]).cfg.eval.datasets
    assert {name: d.root for name, d in datasets.items()} == {
        name: f"/demo/eval/{name}" for name in ("shapes", "scenes", "compositions")
    }
    assert load_config(tmp_path, []).cfg.eval.datasets == {}  # without the choice: the saved eval config
    # Hydra's other override forms, as clipkit-train takes them: + adds a set, ~ removes one
    added = load_config(tmp_path, ["+eval.datasets.mine.root=/m", "++eval.datasets.mine.task=retrieval"])
    assert (added.cfg.eval.datasets["mine"].root, added.cfg.eval.datasets["mine"].task) == ("/m", "retrieval")
    demo = ["eval=demo_image_text", "data.demo_root=/demo"]
    assert set(load_config(tmp_path, [*demo, "~eval.datasets.scenes"]).cfg.eval.datasets) == {"shapes", "compositions"}
    assert line(["~eval.datasets.nope"]) == "eval.datasets.nope: not in the checkpoint's config; nothing to remove"
