"""One request check for every front-end: check_request against the method and a synthesizer's capabilities."""
import pytest

from SynBTLib import slicer_worker as sw
from SynBTLib.capabilities import DEFAULT_STEPS, Synthesizer
from SynBTLib.errors import SynBTError
from SynBTLib.export import ExportSettings
from SynBTLib.handcrafted import HandcraftedSynthesizer
from SynBTLib.synthesizers import check_request

from test_pipeline import make_case, pipeline, tumor  # noqa: F401  (pipeline is a fixture: no curve types, no cores)


def test_both_methods_implement_the_synthesizer_protocol(pipeline):
    assert isinstance(HandcraftedSynthesizer(), Synthesizer) and isinstance(pipeline, Synthesizer)
    assert pipeline.capabilities.steps and not HandcraftedSynthesizer.capabilities.steps


def test_defaults_are_filled_in_once():
    assert check_request("diffusion").steps == DEFAULT_STEPS
    assert check_request("diffusion", steps=7).steps == 7
    assert check_request("handcrafted").steps is None
    assert check_request("diffusion", necrosis="yes").necrosis is True
    assert check_request("diffusion", necrosis=False).necrosis is False
    assert check_request("diffusion", kinetics="washout", necrosis="no").options == {"kinetics": "washout", "necrosis": False}
    assert check_request("diffusion").options == {}


@pytest.mark.parametrize("option, request_", [
    ("steps", dict(steps=5)), ("bundle", dict(bundle="b")), ("kinetics", dict(kinetics="washout")),
    ("necrosis", dict(necrosis=True)), ("necrosis", dict(necrosis="no")),
])
def test_the_handcrafted_method_refuses_every_diffusion_option(option, request_):
    with pytest.raises(SynBTError, match=f"--{option}"):
        check_request("handcrafted", **request_)


@pytest.mark.parametrize("request_, option", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(kinetics="fast"), "kinetics"),
    (dict(kinetics="source"), "kinetics"), (dict(necrosis="maybe"), "necrosis"), (dict(necrosis=1), "necrosis"),
])
def test_bad_values_are_refused_before_anything_is_loaded(request_, option):
    with pytest.raises(SynBTError, match=option):
        check_request("diffusion", **request_)


def test_source_kinetics_is_an_export_choice():
    assert check_request("diffusion", kinetics="source", source_kinetics=True).kinetics == "source"


def test_unknown_method_is_refused():
    with pytest.raises(SynBTError, match="method"):
        check_request("gan")


def test_a_synthesizer_declares_what_its_bundle_takes(pipeline):
    """The tiny pipeline's denoiser has no curve types and no cores: "any" and "no" are what it does anyway."""
    assert check_request("diffusion", kinetics="any", necrosis=False, synthesizer=pipeline).kinetics == "any"
    for request_, option in ((dict(kinetics="washout"), "kinetics"), (dict(kinetics="source"), "kinetics"),
                             (dict(necrosis=True), "necrosis")):
        with pytest.raises(SynBTError, match=option):
            check_request("diffusion", synthesizer=pipeline, source_kinetics=True, **request_)


def test_every_front_end_gives_the_same_refusal(pipeline, tmp_path):
    """A curve type for the handcrafted method: the export settings, the Slicer worker's two command
    lines and the request check refuse it alike, and the pipeline itself refuses what its bundle cannot do."""
    inputs = sw.WorkerInputs([tmp_path / "phase_0.nii.gz"], tmp_path / "m.nii.gz")
    front_ends = {
        "check_request": lambda: check_request("handcrafted", kinetics="washout"),
        "export": lambda: ExportSettings(num_cases=1, method="handcrafted", kinetics="washout"),
        "slicer synthesize": lambda: sw.build_synthesize_command(
            "py", inputs, "o", sw.SynthesisRequest(method="handcrafted", kinetics="washout")),
        "slicer export": lambda: sw.build_export_command(
            "py", sw.ExportRequest(str(tmp_path), str(tmp_path / "o"), method="handcrafted", kinetics="washout")),
    }
    messages = {}
    for name, call in front_ends.items():
        with pytest.raises(SynBTError, match="kinetics") as error:
            call()
        messages[name] = str(error.value)
    assert len(set(messages.values())) == 1, messages
    case = make_case()
    mask = tumor(case.shape, (10, 20, 20))
    with pytest.raises(SynBTError, match="curve type"):
        pipeline(case, mask, steps=2, kinetics="washout")
    with pytest.raises(SynBTError, match="necrotic cores"):
        pipeline(case, mask, steps=2, necrosis=True)
