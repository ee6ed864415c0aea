"""The one registry helper (cfqa_core.registry) and the codec, metric, policy and model registries built on it."""
from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

from cfqa_core.errors import CfqaError, CodecError, MetricError, ModelError, PolicyError
from cfqa_core.registry import Registry

# ---- the generic registry ------------------------------------------------------------------


class Widget:
    name: ClassVar[str]

    def __init__(self, size: int = 1, colour: str = "red") -> None:
        self.size = size
        self.colour = colour


def make_registry() -> Registry:
    reg: Registry = Registry("widget", CodecError)
    reg.register("small")(Widget)
    reg.register("large", size=10)(Widget)

    @reg.register()
    def gadget(colour: str = "blue") -> Widget:
        return Widget(2, colour)

    return reg


def test_register_sets_the_name_on_the_class_and_returns_it_unchanged():
    reg: Registry = Registry("thing")

    @reg.register("thing-a")
    class A:
        name = "placeholder"

    class Plain:  # no name attribute: left alone
        pass

    assert reg.register("plain")(Plain) is Plain
    assert A.name == "thing-a" and not hasattr(Plain, "name")
    assert reg.get("thing-a") is A and isinstance(reg.create("thing-a"), A)
    # An annotated but unset name counts as a name attribute.
    reg2: Registry = Registry("widget")
    reg2.register("w")(Widget)
    assert Widget.name == "w"


def test_keyword_arguments_reach_the_constructor():
    reg = make_registry()
    w = reg.create("small", size=3, colour="green")
    assert (w.size, w.colour) == (3, "green")
    # Bound keyword arguments: defaults of the name, overridable, the class is left as it is.
    assert reg.create("large").size == 10
    assert reg.create("large", size=11, colour="grey").size == 11
    assert Widget.name == "small"
    # A factory function registered under its own __name__.
    assert "gadget" in reg and reg.create("gadget", colour="black").colour == "black"


def test_names_sorted_and_filtered_like_list_models():
    reg = make_registry()
    assert reg.names() == ["gadget", "large", "small"] == list(reg)
    assert reg.names("*a*") == ["gadget", "large", "small"]
    assert reg.names("s*") == ["small"]
    assert reg.names("[gl]*") == ["gadget", "large"]
    assert reg.names("S*") == []  # case-sensitive, on every platform
    assert reg.names("nothing*") == []
    assert len(reg) == 3 and "small" in reg and "tiny" not in reg and ["unhashable"] not in reg


def test_unknown_name_is_one_line_of_the_registry_error_class():
    reg = make_registry()
    for call in (lambda: reg.get("tiny"), lambda: reg.create("tiny", size=2), lambda: reg.get(["x"])):
        with pytest.raises(CodecError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and message.startswith("unknown widget '")
        assert message.endswith("(known: gadget, large, small)")
    assert str(Registry("gizmo").unknown("x")) == "unknown gizmo 'x' (known: none)"
    assert isinstance(Registry("gizmo").unknown("x"), CfqaError)


def test_a_keyword_the_constructor_does_not_take_is_a_one_line_error():
    reg = make_registry()
    with pytest.raises(CodecError, match=r"^widget 'small': .*'weight' \(takes: size, colour\)$"):
        reg.create("small", weight=3)


def test_duplicate_registration_is_refused():
    reg = make_registry()

    class Other(Widget):
        pass

    with pytest.raises(ValueError, match="widget 'small' registered twice"):
        reg.register("small")(Other)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("large", size=11)(Widget)
    # A class told its name once cannot take a second name without bound arguments.
    with pytest.raises(ValueError, match="already registered as 'small'"):
        reg.register("medium")(Widget)
    assert "medium" not in reg and Widget.name == "small"
    # The very same registration again is harmless (a module imported twice).
    reg.register("small")(Widget)
    reg.register("large", size=10)(Widget)
    assert reg.names() == ["gadget", "large", "small"]


def test_the_registry_imports_no_torch():
    code = "import sys, cfqa_core.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- codecs ------------------------------------------------------------------------------


def test_codec_kwargs_reach_the_constructor():
    from cfqa_core.codecs import CODECS, get_codec

    vvc = get_codec("vvc", preset="slow", threads=2)
    assert vvc.preset == "slow" and vvc.threads == 2 and vvc.settings()["preset"] == "slow"
    cmd = vvc.command("in.yuv", "out.vvc", 16, 16, 30)
    assert cmd[cmd.index("-preset") + 1] == "slow" and cmd[cmd.index("-threads") + 1] == "2"
    assert get_codec("vvc").preset == "fast"  # the default is untouched
    assert get_codec("hevc", preset="veryfast").settings() == {"encoder": "x265", "preset": "veryfast"}
    assert get_codec("hevc-x265", threads=None, timeout=5.0).timeout == 5.0
    assert get_codec("av1", cpu_used=4).settings()["cpu_used"] == 4
    learned = get_codec("hyperprior-cls", backend="torch", threads=3)
    assert (learned.backend_name, learned.threads, learned.name) == ("torch", 3, "hyperprior-cls")
    assert CODECS.create("hm", timeout=9.0).timeout == 9.0


def test_codec_option_errors_are_one_line_codec_errors():
    from cfqa_core.codecs import get_codec

    with pytest.raises(CodecError, match=r"^unknown vvenc preset 'warp'"):
        get_codec("vvc", preset="warp")
    with pytest.raises(CodecError, match=r"^unknown x265 preset 'warp'"):
        get_codec("hevc", preset="warp")
    with pytest.raises(CodecError, match=r"^codec 'hevc': .*'cpu_used' \(takes: preset, picture_hash, threads\)$"):
        get_codec("hevc", cpu_used=3)
    with pytest.raises(CodecError, match=r"^unknown codec 'h266' \(known: av1, hevc, .*, vvc\)$"):
        get_codec("h266")


def test_codec_names_given_once_and_listed():
    from cfqa_core.codecs import CODECS, get_codec, registered_names
    from cfqa_core.codecs.learned import SHIPPED, LearnedCodec

    assert registered_names() == [
        "av1", "hevc", "hevc-lossless", "hevc-x265", "hm", "hyperprior-cls", "hyperprior-dpt",
        "hyperprior-multi", "hyperprior-seg", "mshyperprior-multi", "vtm", "vvc",
    ]
    assert registered_names("hevc*") == ["hevc", "hevc-lossless", "hevc-x265"]
    assert registered_names("*hyperprior-multi") == ["hyperprior-multi", "mshyperprior-multi"]
    for name in registered_names():
        cls = CODECS.get(name)
        assert cls.name == name and get_codec(name).name == name
    # The shipped learned codecs: explicit classes, one per name, with the task they were trained for.
    assert set(registered_names("*hyperprior-*")) == set(SHIPPED)
    for name, (_, task) in SHIPPED.items():
        cls = CODECS.get(name)
        assert issubclass(cls, LearnedCodec) and cls.__module__ == "cfqa_core.codecs.learned"
        assert cls.tasks == (None if task == "multi" else (task,))
        assert cls.__name__ != "LearnedCodec"
        assert ("all three tasks" if task == "multi" else f"{task} features") in cls.__doc__


def test_codec_list_command_prints_every_registered_name(capsys):
    from cfqa_core.cli import main
    from cfqa_core.codecs import registered_names

    assert main(["codec", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == registered_names()


# ---- metrics -----------------------------------------------------------------------------


def test_metrics_registered_with_keywords():
    from cfqa_core.metrics import METRICS, REGISTRY, get_metric, metric_names

    assert list(METRICS) == ["mse", "psnr", "cosine", "cosine_flat", "cka", "cka_seed", "learned", "proxy",
                             "proxy_risk"]
    assert metric_names() == sorted(METRICS) and metric_names("cka*") == ["cka", "cka_seed"]
    psnr = get_metric("psnr")
    assert psnr.higher_is_better and psnr.range is None and psnr.kwargs == ("value_range",)
    assert psnr.doc.startswith("PSNR") and "better" in psnr.doc
    assert get_metric("cosine").range == (-1.0, 1.0) and get_metric("cosine").min_ndim == 2
    assert get_metric("proxy").kwargs == ("task", "split") and not get_metric("proxy").higher_is_better
    assert REGISTRY.get("mse") is METRICS["mse"]
    with pytest.raises(MetricError, match=r"^unknown metric 'ssim' \(known: cka, cka_seed, .*, psnr\)$"):
        get_metric("ssim")


def test_register_metric_by_keywords_and_refuse_a_taken_name():
    from cfqa_core.metrics import METRICS, MetricSpec, compute_metric, register_metric

    def l1(f, fhat):
        """Mean absolute error. Lower is better."""
        return float(np.abs(f - fhat).mean())

    spec = register_metric("_test_l1_kw", l1, higher_is_better=False, range=(0.0, float("inf")))
    try:
        doc = "Mean absolute error. Lower is better."
        assert spec == MetricSpec("_test_l1_kw", l1, False, (0.0, float("inf")), doc)
        assert compute_metric("_test_l1_kw", np.zeros((2, 3)), np.full((2, 3), 2.0)) == 2.0
        with pytest.raises(ValueError, match="metric '_test_l1_kw' registered twice"):
            register_metric("_test_l1_kw", l1, higher_is_better=True)
    finally:
        METRICS.pop("_test_l1_kw")
    with pytest.raises(TypeError, match="higher_is_better"):
        register_metric("_test_l2", l1)
    assert "_test_l2" not in METRICS


# ---- policies ----------------------------------------------------------------------------


def test_policies_use_the_registry():
    from cfqa_edge.policies.registry import POLICIES, REGISTRY, get_policy, policy_names

    assert POLICIES is REGISTRY.entries
    assert {"fixed", "cfqa-target", "bandwidth", "hybrid"} <= set(policy_names())
    assert policy_names("cfqa-*") == ["cfqa-target"]
    for name in policy_names():
        assert POLICIES[name].name == name
    fixed = get_policy("fixed", rate_point=2)
    assert fixed.name == "fixed" and fixed.params.rate_point == 2
    with pytest.raises(PolicyError, match=r"^unknown policy 'teleport' \(known: .*fixed.*\)$"):
        get_policy("teleport")
    with pytest.raises(PolicyError, match=r"^policy 'fixed': unknown parameter 'speed' \(known: "):
        get_policy("fixed", speed=3)


def test_register_policy_sets_the_name_and_refuses_a_second_class():
    from cfqa_edge.policies.fixed import FixedPolicy
    from cfqa_edge.policies.registry import POLICIES, get_policy, register_policy

    class Still(FixedPolicy):
        """The fixed policy under a second name."""

    class Again(Still):
        """A different class for the same name."""

    try:
        assert register_policy("_test-still")(Still) is Still
        assert Still.name == "_test-still" and FixedPolicy.name == "fixed"
        policy = get_policy("_test-still", rate_point="4")
        assert isinstance(policy, Still) and policy.params.rate_point == 4
        with pytest.raises(ValueError, match="policy '_test-still' registered twice"):
            register_policy("_test-still")(Again)
    finally:
        POLICIES.pop("_test-still", None)


# ---- models ------------------------------------------------------------------------------


def test_models_by_name_and_by_path(tmp_path):
    pytest.importorskip("torch")
    from cfqa_core.models.zoo import MODELS, load_model, model_names

    assert model_names() == ["embedded"] and model_names("emb*") == ["embedded"] and model_names("vit*") == []
    model = MODELS.create("embedded")
    assert model.meta.name == "embedded" and not model.training
    with pytest.raises(ModelError, match=r"^model 'embedded': .*'pretrained'"):
        MODELS.create("embedded", pretrained=True)
    with pytest.raises(ModelError, match=r"^unknown model 'vitg14': no such file or folder, .*\(known: embedded\)$"):
        load_model("vitg14")
    from cfqa_core.models.zoo import save_model

    folder = save_model(model, tmp_path / "copy")
    copy = load_model(folder)
    assert not copy.training and copy.meta.name == model.meta.name
