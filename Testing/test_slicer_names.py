"""Every Slicer / Qt / CTK / VTK name that SynBTSlicer/ uses is in SynBTSlicer/slicer_names.txt, which
tools/verify_slicer_names.py wrote after finding each one in Slicer's source at the tag the file names.
A new name fails here until it has been verified (the module cannot be executed on these machines)."""
from slicer_names import collect, committed, NAMES_FILE


def test_every_name_the_slicer_files_use_was_verified_against_slicer_source():
    unverified = sorted(collect() - set(committed()))
    assert not unverified, (f"not verified against Slicer's source: {unverified}; run "
                            f"tools/verify_slicer_names.py <Slicer.git> <tag> --write")


def test_the_verified_list_names_its_tag_and_where_each_name_was_found():
    header = NAMES_FILE.read_text().splitlines()[:3]
    assert any(line.startswith("# tag: v") for line in header)
    assert all(where for where in committed().values())


def test_the_collector_sees_the_calls_that_once_broke_the_effect():
    """The effect once called the C++ scriptedEffect.xyToRas with a tuple; it must use the Python helper."""
    names = collect()
    assert "AbstractScriptedSegmentEditorEffect.xyToRas" in names
    assert "qSlicerSegmentEditorScriptedEffect.xyToRas" not in names
    assert "slicer.util.tryWithErrorDisplay" in names and "signal currentNodeChanged(vtkMRMLNode*)" in names
