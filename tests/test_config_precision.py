"""The precision policy as a table: every kind of machine, new / resumed / re-tested runs, without argparse."""

import pytest
import torch

from project.config.precision import (
    CHOICES,
    Hardware,
    PrecisionChoice,
    choose_precision,
    int8_blocker,
    native_precision,
)

AMX = Hardware("cpu", native_bf16=True, amx=True, x86=True)  # Intel Xeon since Sapphire Rapids
AVX512_BF16 = Hardware("cpu", native_bf16=True, x86=True)  # AMD Zen 4, Intel Cooper Lake: no AMX
AVX2 = Hardware("cpu", native_bf16=False, x86=True)  # bf16 would be emulated
ARM = Hardware("cpu", native_bf16=False)  # int8 features unmeasured there
ARM_BF16 = Hardware("cpu", native_bf16=True)
GPU_BF16 = Hardware("cuda", native_bf16=True)
GPU_FP16 = Hardware("cuda", native_bf16=False)  # before Ampere

YES, NO = (lambda: True), (lambda: False)

# (hardware, requested, run, trained features, processes, feature cache, int8 installed) -> (training, features)
TABLE = [
    # a new run with --precision auto
    (AMX, "auto", "new", None, 1, True, YES, "bf16-mixed", "bf16-mixed"),
    (AVX512_BF16, "auto", "new", None, 1, True, YES, "bf16-mixed", "int8"),
    (AVX512_BF16, "auto", "new", None, 1, True, NO, "bf16-mixed", "bf16-mixed"),
    (AVX512_BF16, "auto", "new", None, 2, True, YES, "bf16-mixed", "bf16-mixed"),  # DDP: int8 is one process
    (AVX512_BF16, "auto", "new", None, 1, False, YES, "bf16-mixed", "bf16-mixed"),  # no feature cache
    (AVX2, "auto", "new", None, 1, True, YES, "32-true", "int8"),
    (AVX2, "auto", "new", None, 1, True, NO, "32-true", "32-true"),
    (ARM, "auto", "new", None, 1, True, YES, "32-true", "32-true"),
    (ARM_BF16, "auto", "new", None, 1, True, YES, "bf16-mixed", "bf16-mixed"),
    (GPU_BF16, "auto", "new", None, 1, True, YES, "bf16-mixed", "bf16-mixed"),
    (GPU_FP16, "auto", "new", None, 4, True, YES, "16-mixed", "16-mixed"),
    # what is asked for is what runs (int8: the heads in the native precision)
    (AVX2, "bf16", "new", None, 1, True, YES, "bf16-mixed", "bf16-mixed"),
    (AMX, "32", "new", None, 1, True, YES, "32-true", "32-true"),
    (AMX, "int8", "new", None, 1, True, YES, "bf16-mixed", "int8"),
    (AVX2, "int8", "new", None, 1, True, YES, "32-true", "int8"),
    (GPU_BF16, "16", "new", None, 1, True, YES, "16-mixed", "16-mixed"),
    (GPU_BF16, "int8", "new", None, 1, True, YES, "bf16-mixed", "int8"),  # refused later by int8_blocker
    # a resumed run keeps its features, even where int8 cannot run (then int8_blocker refuses it)
    (AVX512_BF16, "auto", "resume", "int8", 1, True, YES, "bf16-mixed", "int8"),
    (AMX, "auto", "resume", "int8", 1, True, YES, "bf16-mixed", "int8"),
    (GPU_BF16, "auto", "resume", "int8", 1, True, YES, "bf16-mixed", "int8"),
    (AVX512_BF16, "auto", "resume", None, 1, True, YES, "bf16-mixed", "bf16-mixed"),  # resumed: no new int8
    (AVX2, "32", "resume", "int8", 1, True, YES, "32-true", "32-true"),
    # a re-tested int8 run: int8 where it runs, else the native features
    (AVX512_BF16, "auto", "retest", "int8", 1, True, YES, "bf16-mixed", "int8"),
    (AMX, "auto", "retest", "int8", 1, True, YES, "bf16-mixed", "int8"),
    (AVX2, "auto", "retest", "int8", 1, True, NO, "32-true", "32-true"),
    (AVX2, "auto", "retest", "int8", 1, False, YES, "32-true", "32-true"),
    (GPU_BF16, "auto", "retest", "int8", 1, True, YES, "bf16-mixed", "bf16-mixed"),
    (AVX512_BF16, "auto", "retest", None, 1, True, YES, "bf16-mixed", "bf16-mixed"),
    (AVX512_BF16, "auto", "retest", "32-true", 1, True, YES, "bf16-mixed", "bf16-mixed"),  # not features-only
]


@pytest.mark.parametrize("hardware, requested, run, trained, processes, cache, int8, training, features", TABLE)
def test_the_policy(hardware, requested, run, trained, processes, cache, int8, training, features):
    choice = choose_precision(requested, hardware, run=run, trained_features=trained, processes=processes,
                              feature_cache=cache, int8_available=int8)
    assert isinstance(choice, PrecisionChoice) and choice.reason
    assert (choice.training, choice.features) == (training, features)


def test_the_user_hears_of_int8_where_it_would_help():
    missing = choose_precision("auto", AVX512_BF16, int8_available=NO)
    assert missing.notice == "Features in bf16: int8 features, much faster on this CPU (no AMX), need the onnx " \
                             "extra: pip install -e .[onnx]"
    assert "Features in fp32" in choose_precision("auto", AVX2, int8_available=NO).notice
    assert choose_precision("auto", AVX2, int8_available=YES).notice is None
    assert choose_precision("auto", AMX, int8_available=NO).notice is None  # AMX: bf16 is as good
    retest = choose_precision("auto", GPU_BF16, run="retest", trained_features="int8", int8_available=YES)
    assert retest.notice.startswith("This run was trained on int8 features; testing it on bf16-mixed features")


def test_int8_is_only_asked_about_when_int8_is_in_question():
    def never():
        raise AssertionError("importing onnxruntime was not needed")
    for hardware in (AMX, ARM, GPU_BF16):
        choose_precision("auto", hardware, int8_available=never)
    for requested in ("bf16", "32", "int8"):
        choose_precision(requested, AVX2, int8_available=never)
    choose_precision("auto", AVX2, run="resume", trained_features="int8", int8_available=never)


@pytest.mark.parametrize("device_type, processes, cache, words", [
    ("cuda", 1, True, "computed on the CPU"),
    ("cpu", 2, True, "one process"),
    ("cpu", 1, False, "drop --no_feature_cache"),
    ("cpu", 1, True, None),
])
def test_why_int8_cannot_run(device_type, processes, cache, words):
    blocker = int8_blocker(device_type, processes, cache)
    assert blocker is None if words is None else words in blocker


def test_unknown_values_are_refused():
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        choose_precision("int4", AVX2)
    with pytest.raises(ValueError, match="unknown run kind"):
        choose_precision("auto", AVX2, run="continue")
    assert "auto" in CHOICES and "int8" in CHOICES


def test_this_machine_is_described_by_torch():
    cpu = Hardware.of("cpu")
    assert cpu.device_type == "cpu" and cpu.native_precision == native_precision("cpu")
    assert cpu.native_bf16 == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
