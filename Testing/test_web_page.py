"""The SynBT page's Generate path in this process (real trame server state, real trame-slicer scene,
real worker processes; no browser): values outside slicer_panel.PARAMETERS are refused before anything
starts, and a run that fails on the way leaves the page usable and the scene as it was."""
import asyncio
import os
import signal

import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'synbt[web]')")

from SynBTLib import slicer_panel as panel  # noqa: E402


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from trame.app import get_server

    from SynBTLib.web.app import SynBTWeb

    web = SynBTWeb(get_server("synbt_test_web_page", client_type="vue3"), tmp_path_factory.mktemp("data"))
    web.load_phantom()
    return web


def _nodes(page) -> set:
    return {node.GetID() for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode")
            for node in page.scene.GetNodesByClass(cls)}


def _set(page, **values):
    defaults = {f"p_{name}": spec.default for name, spec in panel.PARAMETERS.items()
                if spec.kind not in ("volume", "segmentation") and name != "segmentId"}
    page.state.update({**defaults, "p_method": "handcrafted", "tumor_mode": "segment",
                       **{f"p_{k}": v for k, v in values.items()}})
    page._refresh()  # what the state's change callbacks do once a browser is connected


def _generate(page, meanwhile=None) -> None:
    """Press Generate and wait for the run's end, as the page's event loop would; `meanwhile(run)` is
    called once the worker has started."""
    async def press():
        page.generate()
        if page.run is not None:
            if meanwhile is not None:
                meanwhile(page.run)
            await page.poll_task

    asyncio.run(press())


@pytest.mark.parametrize("values, name, allowed", [
    ({"seed": -1}, "seed", "2147483647"),
    ({"seed": "7.5"}, "seed", "2147483647"),
    ({"seed": ""}, "seed", "2147483647"),
    ({"method": "diffusion", "steps": 0}, "steps", "1000"),
    ({"method": "diffusion", "steps": "5000"}, "steps", "1000"),
    ({"method": "diffusion", "kinetics": "fast"}, "kinetics", "washout"),
    ({"method": "diffusion", "necrosis": "maybe"}, "necrosis", "yes"),
    ({"method": "gan"}, "method", "handcrafted"),
    ({"useAutoTumor": True, "autoSizeMm": 100}, "autoSizeMm", "60"),
    ({"useAutoTumor": True, "autoSizeMm": "nan"}, "autoSizeMm", "60"),
])
def test_values_outside_parameters_are_refused_and_nothing_starts(page, values, name, allowed):
    tumor_mode = "auto" if values.pop("useAutoTumor", False) else "segment"
    _set(page, **values)
    page.state.tumor_mode = tumor_mode
    page._refresh()
    assert name in page.state.missing  # shown before Generate is pressed (the button is disabled)
    before = _nodes(page)
    _generate(page)
    error = page.state.error
    assert name in error and allowed in error and "\n" not in error
    assert page.run is None and not page.state.running and _nodes(page) == before


def test_place_refuses_a_diameter_outside_its_range(page):
    _set(page, autoSizeMm=2)
    before = _nodes(page)
    page.place_tumor((0.0, 0.0, 0.0))
    assert "autoSizeMm" in page.state.error and _nodes(page) == before


def test_a_run_that_fails_leaves_the_page_usable_and_the_scene_unchanged(page, monkeypatch):
    _set(page, seed=3)
    page.state.p_segmentationNode = next(iter(page.scene.GetNodesByClass("vtkMRMLSegmentationNode"))).GetID()
    page.state.p_segmentId = page.parameters.segmentationNode.GetSegmentation().GetNthSegmentID(0)
    page._refresh()
    assert page.state.missing == ""
    _generate(page)  # a real run: the reference the failures below must not disturb
    assert page.state.error == "" and page.state.has_result
    first, after_first = page.result, _nodes(page)

    # the polling fails (the worker keeps running): the error, the worker stopped, nothing added
    runs = []

    def failing_poll():
        raise RuntimeError("lost the worker's output pipe")

    _generate(page, lambda run: (runs.append(run), monkeypatch.setattr(run.job, "poll", failing_poll)))
    assert "lost the worker's output pipe" in page.state.error
    assert not page.state.running and page.run is None and page.state.enabled["inputsCollapsibleButton"]
    assert runs[0].job.worker.process.poll() is not None and not runs[0].job.work_dir.exists()
    assert _nodes(page) == after_first and page.result is first and page.state.has_result

    # the worker dies (killed from outside): its end reported, nothing added
    _generate(page, lambda run: os.kill(run.job.worker.process.pid, signal.SIGKILL))
    assert page.state.error and not page.state.running and page.run is None
    assert _nodes(page) == after_first and page.result is first

    _generate(page)  # and Generate works again
    assert page.state.error == "" and page.result is not first and len(_nodes(page)) > len(after_first)


def test_a_token_beginning_with_a_dash_reaches_trame(page):
    from SynBTLib.web.app import trame_argv

    token = "-2zS6CmWJA2oGIrQj3q2mMWwCCdqgxFG"  # token_urlsafe gives one in 64 starts (a server once refused to start)
    options, _ = page.server.cli.parse_known_args(trame_argv("127.0.0.1", 8080, token))
    assert options.authKey == token and options.port == 8080


def test_an_export_whose_progress_fails_ends_with_its_error_and_its_worker_stopped(page, tmp_path):
    import sys

    from SynBTLib.slicer_worker import CommandJob

    def unreadable(out):  # the progress measure is what the page polls: it fails while the command runs
        raise OSError(f"cannot list {out}")

    job = CommandJob("export", [sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "out", unreadable)
    page.export_job = job
    page.state.update(export_running=True, export_progress=0, export_message="starting")
    asyncio.run(page._poll_export())
    assert not page.state.export_running and page.export_job is None
    assert page.state.export_message.startswith("Export failed") and "cannot list" in page.state.export_message
    assert not job.running and job.returncode is not None  # the worker was stopped, not left behind
